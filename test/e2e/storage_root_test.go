package e2e

import (
	"os"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
)

// A node's storage root is a mount in production (a disk, an iSCSI LUN, NFS). An agent that
// starts before the mount sees an empty directory: it must refuse it, not take it for a root
// whose disks are all gone.
var _ = Describe("A storage root that is not mounted", Ordered, disruptive, func() {
	inNamespace("unmounted-root")

	It("is refused: tasks wait, nothing is placed there, and all goes on once it is back", func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		h := host("host-3") // storage of its own
		Expect(h.SharedStorage).To(BeFalse())
		kept := launchPinned(ctx, "kept", h.Name)

		By("restarting the node's agent over an empty storage root, as before a mount")
		Expect(cluster.StopAgent(h)).To(Succeed())
		mounted := h.StorageRoot + ".mounted"
		Expect(os.Rename(h.StorageRoot, mounted)).To(Succeed())
		Expect(os.Mkdir(h.StorageRoot, 0o755)).To(Succeed())
		remounted := false
		remount := func() {
			Expect(cluster.StopAgent(h)).To(Succeed())
			entries, err := os.ReadDir(h.StorageRoot)
			Expect(err).NotTo(HaveOccurred())
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			// _agents holds the agent's own console certificate, made at its start; no
			// instance file, no image, no ID.
			Expect(names).To(ConsistOf("_agents"), "the agent wrote into a storage root it refused")
			Expect(os.RemoveAll(h.StorageRoot)).To(Succeed())
			Expect(os.Rename(mounted, h.StorageRoot)).To(Succeed())
			remounted = true
			Expect(cluster.StartAgent(h)).To(Succeed())
		}
		DeferCleanup(func() {
			if remounted {
				return
			}
			_ = cluster.StopAgent(h) // stopped already if the spec failed in remount
			Expect(os.RemoveAll(h.StorageRoot)).To(Succeed())
			Expect(os.Rename(mounted, h.StorageRoot)).To(Succeed())
			Expect(cluster.StartAgent(h)).To(Succeed())
		})
		Expect(cluster.StartAgent(h)).To(Succeed())
		hv := &v1.Hypervisor{}
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: h.Name}, hv)).To(Succeed())
			g.Expect(hv.Status.StorageUnavailable).To(ContainSubstring("is it mounted?"))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		Expect(hv.Status.StorageID).NotTo(BeEmpty(), "the record stays")
		Eventually(func() ([]string, error) { return hypervisorEvents(ctx, h.Name, agent.ReasonStorageUnavailable) }).
			WithContext(ctx).WithTimeout(30 * time.Second).Should(ContainElement(ContainSubstring("is it mounted?")))

		By("a stop waits: the guest is not touched")
		out, err := kubectlNova(ctx, "stop", kept.Name)
		Expect(err).NotTo(HaveOccurred(), out)
		By("a launch onto the node finds no valid host")
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: waiting", 1)
		manifest = strings.Replace(manifest, "spec:\n", "spec:\n  nodeSelector:\n    kubernetes.io/hostname: "+h.Name+"\n", 1)
		out, err = kubectl(ctx, "apply", "-f", writeManifest("waiting.yaml", manifest))
		Expect(err).NotTo(HaveOccurred(), out)
		DeferCleanup(func(ctx SpecContext) {
			out, err := kubectl(ctx, "delete", "instance", "waiting", "--ignore-not-found", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}, NodeTimeout(2*time.Minute))
		expectInstance(ctx, "waiting", func(g Gomega, inst *v1.Instance) {
			ready := findCondition(inst, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Message).To(ContainSubstring("StorageFilter"))
		})
		// The guest obeys the power button within seconds (the stop specs show it): had the
		// agent pressed it, the guest would be off.
		Consistently(func(g Gomega) {
			state, err := h.Virsh(ctx, "domstate", kept.Status.AgentReport.DomainName)
			g.Expect(err).NotTo(HaveOccurred(), state)
			g.Expect(strings.TrimSpace(state)).To(Equal("running"))
			inst, err := instance(ctx, kept.Name)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(inst.Status.TaskState).To(Equal(v1.TaskStatePoweringOff))
		}).WithContext(ctx).WithTimeout(10 * time.Second).WithPolling(500 * time.Millisecond).Should(Succeed())

		By("mounting the root again")
		remount()
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: h.Name}, hv)).To(Succeed())
			g.Expect(hv.Status.StorageUnavailable).To(BeEmpty())
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		stopped := expectInstance(ctx, kept.Name, settled(v1.VMStateStopped))
		state, err := h.Virsh(ctx, "domstate", stopped.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), state)
		Expect(strings.TrimSpace(state)).To(Equal("shut off"))
		launched := expectInstance(ctx, "waiting", settled(v1.VMStateActive))
		Expect(launched.Status.NodeName).To(Equal(h.Name))
		expectConsole(ctx, launched, func(c console) bool { return c.Last(bootCount) == 1 }, "first boot on the root mounted again")
	}, NodeTimeout(6*time.Minute))
})
