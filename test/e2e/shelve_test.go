package e2e

import (
	"fmt"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("Shelve", Ordered, func() {
	inNamespace("shelve")
	const name = "shelf"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	It("shelves to the image store, offloads (freeing the node), and unshelves onto the other node with its data", func(ctx SpecContext) {
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":%q}}}`, stamp()))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 2 }, "boot 2")
		from := inst.Status.NodeName
		shelveAndOffload(ctx, name, false)
		inst = unshelveOn(ctx, name, inst, otherHost(from), 3)
	}, NodeTimeout(4*time.Minute))
})

// An agent killed in the middle of a shelve: Serial, as every spec that kills a process; alone
// on the cluster, it can also check the node's count of instances.
var _ = Describe("Shelve cut short", Ordered, disruptive, func() {
	inNamespace("shelve-crash")
	const name = "shelf-crash"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	It("finishes a shelve cut short by SIGKILL of the agent, and loses nothing", func(ctx SpecContext) {
		expectConsole(ctx, inst, func(c console) bool { return c.Listening(1) }, "the guest listening to its power button")
		from := inst.Status.NodeName
		shelveAndOffload(ctx, name, true)
		unshelveOn(ctx, name, inst, otherHost(from), 2)
	}, NodeTimeout(4*time.Minute))
})

// otherHost is the other host of the shared storage.
func otherHost(node string) string {
	if node == "host-1" {
		return "host-2"
	}
	return "host-1"
}

// shelveAndOffload shelves the instance, waits until it is offloaded and checks that its node
// has nothing of it left. With crash, its agent is killed while it shelves, and the spec, being
// Serial, also checks the node's count of instances.
func shelveAndOffload(ctx SpecContext, name string, crash bool) {
	cur := expectInstance(ctx, name, settled(v1.VMStateActive))
	node := cur.Status.NodeName
	hv := &v1.Hypervisor{}
	Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: node}, hv)).To(Succeed())
	instances := hv.Status.Instances
	dir := filepath.Join(host(node).StorageRoot, "instances", string(cur.UID))
	Expect(dir).To(BeADirectory(), "the instance's files are on its node before the shelve")
	start := time.Now()
	shelve := func() { patchSpec(ctx, name, `{"spec":{"powerState":"Shelved"}}`) }
	if crash {
		cutShortAt(ctx, name, v1.TaskStateShelving, shelve, func() { Expect(cluster.KillAgent(host(node))).To(Succeed()) })
		Expect(cluster.StartAgent(host(node))).To(Succeed())
	} else {
		shelve()
	}
	// With an offload time of 0 the instance may rest in Shelved only for moments: an agent
	// that died after its upload finds it done, and the offload follows at once.
	expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
		g.Expect(i.Status.VMState).To(BeElementOf(v1.VMStateShelved, v1.VMStateShelvedOffloaded))
	})
	shelved := time.Since(start)
	off := expectInstance(ctx, name, settled(v1.VMStateShelvedOffloaded))
	GinkgoWriter.Printf("FIGURE shelve (apply to Shelved): %s; to ShelvedOffloaded: %s\n",
		shelved.Round(10*time.Millisecond), time.Since(start).Round(10*time.Millisecond))
	Expect(off.Status.NodeName).To(BeEmpty())
	img := expectImagePhase(ctx, ns, name+"-shelved", v1.ImageAvailable)
	GinkgoWriter.Printf("FIGURE shelved image of the test guest: %d bytes\n", img.Status.SizeBytes)
	out, err := host(node).Virsh(ctx, "list", "--all", "--uuid")
	Expect(err).NotTo(HaveOccurred(), out)
	Expect(out).NotTo(ContainSubstring(string(off.UID)), "the domain is gone from the node")
	Expect(qemuCount(cur)).To(Equal(0), "no QEMU runs it anywhere")
	Eventually(dir).WithContext(ctx).ShouldNot(BeADirectory(), "the instance's files are gone from the node")
	if crash {
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: node}, hv)).To(Succeed())
			g.Expect(hv.Status.Instances).To(Equal(instances-1), "the node is freed")
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
	}
}

// unshelveOn unshelves the instance onto node and checks that it boots its own disk there, the
// boots-th time; it returns the instance as it is then.
func unshelveOn(ctx SpecContext, name string, inst *v1.Instance, node string, boots int) *v1.Instance {
	patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"nodeSelector":{"kubernetes.io/hostname":%q}}}`, node))
	start := time.Now()
	out, err := kubectlNova(ctx, "unshelve", name, "--wait")
	Expect(err).NotTo(HaveOccurred(), out)
	GinkgoWriter.Printf("FIGURE unshelve of an offloaded instance (kubectl nova unshelve --wait): %s\n", time.Since(start).Round(10*time.Millisecond))
	cur := expectInstance(ctx, name, settled(v1.VMStateActive))
	Expect(cur.Status.NodeName).To(Equal(node))
	Expect(cur.UID).To(Equal(inst.UID))
	Expect(cur.Status.Image.Name).To(Equal("test-guest"))
	expectConsole(ctx, cur, func(c console) bool { return c.Last(bootCount) == boots }, "the guest's own disk, with its boot count")
	Eventually(func() bool {
		return apierrors.IsNotFound(cluster.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name + "-shelved"}, &v1.Image{}))
	}).WithContext(ctx).WithTimeout(30*time.Second).Should(BeTrue(), "the shelved image goes once the instance is Active")
	Expect(qemuCount(cur)).To(Equal(1))
	return cur
}
