package e2e

import (
	"context"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("Snapshots", Ordered, func() {
	inNamespace("snapshots")
	const name = "snap-source"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	// The data: the test guest counts its boots in a file on its root disk. Two hard reboots
	// make the count 3 on this instance's disk, where the image has none.
	It("saves a running guest, which keeps running, into an image that boots with the guest's data", func(ctx SpecContext) {
		for boots := 2; boots <= 3; boots++ {
			patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":%q}}}`, stamp()))
			expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots }, "boot "+fmt.Sprint(boots))
		}
		seq := readConsole(inst).Last(aliveSeq)

		start := time.Now()
		out, err := kubectlNova(ctx, "snapshot", name, "snap-data", "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE snapshot of a running guest (kubectl nova snapshot --wait): %s\n", time.Since(start).Round(10*time.Millisecond))
		Expect(out).To(ContainSubstring("image snap-data is available"))

		snap := &v1.Snapshot{}
		Expect(cluster.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "snap-data"}, snap)).To(Succeed())
		Expect(snap.Status.Phase).To(Equal(v1.SnapshotSucceeded))
		img := expectImagePhase(ctx, ns, "snap-data", v1.ImageAvailable)
		GinkgoWriter.Printf("FIGURE snapshot image of the test guest: %d bytes, virtual %d\n", img.Status.SizeBytes, img.Status.VirtualSizeBytes)
		expectInstance(ctx, name, settled(v1.VMStateActive))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) > seq+1 }, "the guest going on")
		Expect(readConsole(inst).Last(bootCount)).To(Equal(3), "the guest ran on through the snapshot, not rebooted")

		restored := launchInstance(ctx, "snap-restored", "snap-data")
		Expect(restored.Status.Image.Name).To(Equal("snap-data"))
		expectConsole(ctx, restored, func(c console) bool { return c.Last(bootCount) == 4 }, "the restored guest counting on from the snapshot's 3 boots")
		out, err = kubectl(ctx, "delete", "instance", "snap-restored", "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(4*time.Minute))

	It("saves a paused instance, which stays paused, and a stopped one from its disk, each image booting with the guest's data", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount)
		patchSpec(ctx, name, `{"spec":{"powerState":"Paused"}}`)
		expectInstance(ctx, name, settled(v1.VMStatePaused))
		out, err := kubectlNova(ctx, "snapshot", name, "snap-paused", "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		expectImagePhase(ctx, ns, "snap-paused", v1.ImageAvailable)
		cur := expectInstance(ctx, name, settled(v1.VMStatePaused))
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStatePaused))
		domstate, err := host(cur.Status.NodeName).Virsh(ctx, "domstate", cur.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), domstate)
		Expect(strings.TrimSpace(domstate)).To(Equal("paused"), "the hypervisor kept it paused")
		patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`) // Nova stops only an Active instance
		expectInstance(ctx, name, settled(v1.VMStateActive))

		patchSpec(ctx, name, `{"spec":{"powerState":"Stopped"}}`)
		expectInstance(ctx, name, settled(v1.VMStateStopped))
		out, err = kubectlNova(ctx, "snapshot", name, "snap-stopped", "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		expectImagePhase(ctx, ns, "snap-stopped", v1.ImageAvailable)
		cur = expectInstance(ctx, name, settled(v1.VMStateStopped))
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStateShutdown))
		domstate, err = host(cur.Status.NodeName).Virsh(ctx, "domstate", cur.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), domstate)
		Expect(strings.TrimSpace(domstate)).To(Equal("shut off"), "the snapshot started nothing")

		By("booting both images: each holds the guest's boot count")
		for _, image := range []string{"snap-paused", "snap-stopped"} {
			restored := launchInstance(ctx, image+"-restored", image)
			expectConsole(ctx, restored, func(c console) bool { return c.Last(bootCount) == boots+1 },
				fmt.Sprintf("%s: the restored guest counting on from the %d boots saved", image, boots))
			out, err := kubectl(ctx, "delete", "instance", image+"-restored", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}
		patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`)
		expectInstance(ctx, name, settled(v1.VMStateActive))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots+1 }, "started again from its own disk")
	}, NodeTimeout(5*time.Minute))
})

// An agent killed in the middle of a snapshot: Serial, as every spec that kills a process.
var _ = Describe("Snapshots cut short", Ordered, disruptive, func() {
	inNamespace("snapshots-crash")
	const name = "snap-crash-source"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	It("finishes a snapshot cut short by SIGKILL of the agent, and loses nothing", func(ctx SpecContext) {
		expectConsole(ctx, inst, func(c console) bool { return c.SinceLastBoot().Last(aliveSeq) >= 1 }, "the guest up again")
		boots := readConsole(inst).Last(bootCount)
		h := host(inst.Status.NodeName)
		// The agent is stopped first, so that the task is surely in flight when it dies.
		Expect(cluster.KillAgent(h)).To(Succeed())
		Expect(cluster.Client.Create(ctx, &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "snap-crash"},
			Spec: v1.SnapshotSpec{InstanceName: name}})).To(Succeed())
		expectInstance(ctx, name, func(g Gomega, i *v1.Instance) { g.Expect(i.Status.TaskState).To(Equal(v1.TaskStateImageSnapshot)) })
		// Killed again as soon as it reports the copy made, in the middle of the upload.
		cutShortAt(ctx, name, v1.TaskStateImageUploading,
			func() { Expect(cluster.StartAgent(h)).To(Succeed()) },
			func() { Expect(cluster.KillAgent(h)).To(Succeed()) })
		Expect(cluster.StartAgent(h)).To(Succeed())
		expectSnapshotPhase(ctx, "snap-crash", v1.SnapshotSucceeded)
		expectImagePhase(ctx, ns, "snap-crash", v1.ImageAvailable)
		expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(readConsole(inst).Last(bootCount)).To(Equal(boots), "the guest was not rebooted")
		Expect(qemuCount(inst)).To(Equal(1))
		restored := launchInstance(ctx, "snap-crash-restored", "snap-crash")
		expectConsole(ctx, restored, func(c console) bool { return c.Last(bootCount) == boots+1 }, "the snapshot holds the guest's data")
		out, err := kubectl(ctx, "delete", "instance", "snap-crash-restored", "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(4*time.Minute))
})

func expectSnapshotPhase(ctx context.Context, name string, phase v1.SnapshotPhase) *v1.Snapshot {
	snap := &v1.Snapshot{}
	Eventually(func(g Gomega) {
		g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, snap)).To(Succeed())
		g.Expect(snap.Status.Phase).To(Equal(phase), snap.Status.Message)
	}).WithContext(ctx).WithTimeout(2 * time.Minute).WithPolling(100 * time.Millisecond).Should(Succeed())
	return snap
}
