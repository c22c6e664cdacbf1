package e2e

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Nova's server groups on real guests: the members of an anti-affinity group run on different
// hosts (virsh says where each domain runs), one member too many waits, and a live migration
// onto a member's host is refused, the guest running on where it was.
var _ = Describe("Server groups", Ordered, func() {
	inNamespace("server-groups")

	It("keeps an anti-affinity group's members on different hosts, at launch and at a live migration", func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		out, err := kubectlNova(ctx, "server-group-create", "ha", "anti-affinity")
		Expect(err).NotTo(HaveOccurred(), out)

		member := func(name string) {
			manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: "+name, 1)
			manifest = strings.Replace(manifest, "spec:\n", "spec:\n  serverGroup: ha\n", 1)
			out, err := kubectl(ctx, "apply", "-f", writeManifest(name+".yaml", manifest))
			Expect(err).NotTo(HaveOccurred(), out)
			DeferCleanup(func(ctx SpecContext) {
				out, err := kubectl(ctx, "delete", "instance", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
				Expect(err).NotTo(HaveOccurred(), out)
			}, NodeTimeout(2*time.Minute))
		}
		names := make([]string, hostCount)
		for i := range names {
			names[i] = fmt.Sprintf("ha-%d", i)
			member(names[i])
		}
		nodes := map[string]*v1.Instance{}
		for _, name := range names {
			inst := expectInstance(ctx, name, settled(v1.VMStateActive))
			Expect(nodes).NotTo(HaveKey(inst.Status.NodeName), "two members on %s", inst.Status.NodeName)
			nodes[inst.Status.NodeName] = inst
			state, err := host(inst.Status.NodeName).Virsh(ctx, "domstate", inst.Status.AgentReport.DomainName)
			Expect(err).NotTo(HaveOccurred(), state)
			Expect(strings.TrimSpace(state)).To(Equal("running"))
		}
		Expect(nodes).To(HaveLen(hostCount), "one member on each host")

		By("one member more than there are hosts waits, naming the group's filter")
		member("ha-extra")
		expectInstance(ctx, "ha-extra", func(g Gomega, inst *v1.Instance) {
			g.Expect(inst.Status.NodeName).To(BeEmpty())
			ready := findCondition(inst, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(v1.ReasonNoValidHost))
			g.Expect(ready.Message).To(ContainSubstring(fmt.Sprintf("ServerGroupAntiAffinityFilter rejected %d", hostCount)))
		})

		By("a live migration onto another member's host is refused; the guest runs on where it was")
		moving := nodes[host("host-1").Name]
		Expect(moving).NotTo(BeNil())
		out, err = kubectlNovaAsCloudAdmin(ctx, "migrate", moving.Name, "--live", "--node", "host-2", "--wait", "--timeout=2m")
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("ServerGroupAntiAffinityFilter"))
		stayed := expectInstance(ctx, moving.Name, settled(v1.VMStateActive))
		Expect(stayed.Status.NodeName).To(Equal("host-1"))
		state, err := host("host-1").Virsh(ctx, "domstate", stayed.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), state)
		Expect(strings.TrimSpace(state)).To(Equal("running"))

		out, err = kubectlNova(ctx, "server-group-list")
		Expect(err).NotTo(HaveOccurred(), out)
		for node, inst := range nodes {
			Expect(out).To(ContainSubstring(inst.Name + "@" + node))
		}
		Expect(out).To(ContainSubstring("ha-extra@-"))
	}, NodeTimeout(5*time.Minute))
})
