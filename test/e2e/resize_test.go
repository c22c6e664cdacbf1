package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/storage"
)

// Resizes and cold migrations of one guest. Its boot counter lives on its disk: each boot on a
// copy of the disk counts one more, and a revert, which boots the disk as it was before the
// move, counts the same number as the copy did.
var _ = Describe("Resize and cold migration", Ordered, func() {
	inNamespace("resize")
	const name = "shapeshifter"

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		for _, f := range []*v1.Flavor{
			{ObjectMeta: metav1.ObjectMeta{Name: "r1.wide"}, Spec: v1.FlavorSpec{VCPUs: 2, MemoryMiB: 384, DiskGiB: 3}},
			{ObjectMeta: metav1.ObjectMeta{Name: "r1.tall"}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 512, DiskGiB: 3}},
			{ObjectMeta: metav1.ObjectMeta{Name: "r1.huge"}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 4 << 20, DiskGiB: 3}},
		} {
			Expect(client.IgnoreAlreadyExists(cluster.Client.Create(ctx, f))).To(Succeed())
		}
		launchPinned(ctx, name, "host-1")
	}, NodeTimeout(3*time.Minute))

	// resized waits until the instance waits in Resized on node, booted once more than before.
	resized := func(ctx context.Context, node string, bootsBefore int) *v1.Instance {
		inst := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.VMState).To(Equal(v1.VMStateResized))
			g.Expect(i.Status.TaskState).To(BeEmpty())
			g.Expect(i.Status.NodeName).To(Equal(node))
			g.Expect(i.Status.Resize).NotTo(BeNil())
			ready := findCondition(i, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal("Resized"), "waits for a confirmation or a revert")
		})
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == bootsBefore+1 && c.Last(aliveSeq) >= 1 },
			fmt.Sprintf("booted on its copy of the disk: boot %d", bootsBefore+1))
		return inst
	}

	It("resizes in place, the disk grown and the guest booted with the new flavor, and a confirmation deletes the old disk", func(ctx SpecContext) {
		before := expectInstance(ctx, name, settled(v1.VMStateActive))
		boots := bootsNow(before)
		start := time.Now()
		out, err := kubectlNova(ctx, "resize", name, "r1.wide", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		took := time.Since(start)
		inst := resized(ctx, "host-1", boots)
		rs := inst.Status.Resize
		Expect(rs.SourceNode).To(Equal("host-1"))
		Expect(rs.TargetNode).To(Equal("host-1"), "both flavors fit on host-1: the resize stays there")
		Expect(rs.DiskTransfer).To(Equal(v1.TransferSameNode))
		Expect(rs.OldFlavor.Name).To(Equal("m1.tiny"))
		Expect(rs.PreviousVMState).To(Equal(v1.VMStateActive))
		Expect(inst.Status.Flavor.Name).To(Equal("r1.wide"))
		info, err := host("host-1").Virsh(ctx, "dominfo", string(inst.UID))
		Expect(err).NotTo(HaveOccurred(), info)
		Expect(info).To(MatchRegexp(`CPU\(s\):\s+2\n`))
		Expect(info).To(MatchRegexp(`Max memory:\s+393216 KiB`))
		size, err := storage.DiskVirtualSize(diskOf("host-1", inst))
		Expect(err).NotTo(HaveOccurred())
		Expect(size).To(Equal(int64(3<<30)), "grown to the new flavor's disk")
		Expect(asidesOn("host-1", inst)).To(ConsistOf(fmt.Sprintf("%s.resize-%d", diskOf("host-1", inst), rs.TaskID)),
			"the old disk waits for the confirmation")
		GinkgoWriter.Printf("FIGURE resize in place: %s from kubectl to Resized\n", took.Round(10*time.Millisecond))

		start = time.Now()
		out, err = kubectlNova(ctx, "resize", name, "--confirm", "--wait", "--timeout=2m")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE resize confirmation: %s\n", time.Since(start).Round(10*time.Millisecond))
		after := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(after.Status.Resize).To(BeNil())
		Expect(after.Status.Flavor.Name).To(Equal("r1.wide"))
		Expect(after.Status.ResizeRequest.Result).To(Equal(v1.RequestSucceeded))
		Expect(asidesOn("host-1", inst)).To(BeEmpty())
		Expect(bootsNow(after)).To(Equal(boots+1), "a confirmation does not reboot the guest")
	}, NodeTimeout(5*time.Minute))

	It("leaves the instance unchanged for a flavor that fits nowhere or would shrink its disk", func(ctx SpecContext) {
		for flavor, reason := range map[string]string{"r1.huge": "NoValidHost", "m1.small": "FlavorTooSmall"} {
			patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"flavor":%q}}`, flavor))
			inst := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
				ready := findCondition(i, v1.ConditionReady)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.ObservedGeneration).To(Equal(i.Generation))
				g.Expect(ready.Reason).To(Equal(reason), ready.Message)
			})
			Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
			Expect(inst.Status.TaskState).To(BeEmpty())
			Expect(inst.Status.NodeName).To(Equal("host-1"))
			Expect(inst.Status.Flavor.Name).To(Equal("r1.wide"))
			Expect(inst.Status.Resize).To(BeNil())
			out, err := kubectl(ctx, "get", "instance", name)
			Expect(err).NotTo(HaveOccurred(), out)
			Expect(out).To(MatchRegexp(`\s+r1.wide\s+test-guest\s+`+flavor+`\s+test-guest\s`), "kubectl get shows the flavor it has beside the one asked for")
		}
		patchSpec(ctx, name, `{"spec":{"flavor":"r1.wide"}}`)
		expectInstance(ctx, name, settled(v1.VMStateActive))
	}, NodeTimeout(2*time.Minute))

	It("cold-migrates through the image store to a host with its own storage, and a revert boots the old disk as it was", func(ctx SpecContext) {
		before := expectInstance(ctx, name, settled(v1.VMStateActive))
		boots := bootsNow(before)
		start := time.Now()
		out, err := kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--node", "host-3", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		took := time.Since(start)
		Expect(out).To(ContainSubstring("runs on host-3"))
		migName := regexp.MustCompile(`migration\.compute\.kubenova\.io/(\S+) created`).FindStringSubmatch(out)[1]
		inst := resized(ctx, "host-3", boots)
		rs := inst.Status.Resize
		Expect(rs.Action).To(Equal(v1.ActionMigrate))
		Expect(rs.SourceNode).To(Equal("host-1"))
		Expect(rs.DiskTransfer).To(Equal(v1.TransferImageStore))
		Expect(rs.Transfer).NotTo(BeNil())
		Expect(filepath.Join(cluster.ImageStore, "images", rs.Transfer.UID)).To(BeAnExistingFile())
		Expect(asidesOn("host-1", inst)).To(HaveLen(1), "the source keeps its disk until confirmation")
		Expect(diskOf("host-3", inst)).To(BeAnExistingFile())
		out, err = host("host-1").Virsh(ctx, "list", "--all", "--uuid")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).NotTo(ContainSubstring(string(inst.UID)), "the source's domain is gone: the guest runs once")
		mig := &v1.Migration{}
		Expect(cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: migName}, mig)).To(Succeed())
		Expect(mig.Status.Phase).To(Equal(v1.MigrationFinalizing))
		Expect(mig.Status.Reason).To(Equal("Resized"))
		GinkgoWriter.Printf("FIGURE cold migration through the image store: %s from kubectl to Resized\n", took.Round(10*time.Millisecond))

		start = time.Now()
		out, err = kubectlNova(ctx, "resize", name, "--revert", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE revert of a cold migration: %s\n", time.Since(start).Round(10*time.Millisecond))
		after := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal("host-1"))
		Expect(after.Status.Resize).To(BeNil())
		Expect(after.Status.Flavor.Name).To(Equal("r1.wide"))
		// The disk as it was before the move: the copy's boot is not on it.
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == boots+1 && c.Last(aliveSeq) >= 1 },
			"the old disk booted again")
		Expect(asidesOn("host-1", after)).To(BeEmpty())
		Expect(filepath.Dir(diskOf("host-3", after))).NotTo(BeADirectory(), "the target's copy is gone")
		Expect(filepath.Join(cluster.ImageStore, "images", rs.Transfer.UID)).NotTo(BeAnExistingFile(), "the transfer's copy is deleted")
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: migName}, mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(v1.MigrationFailed))
			g.Expect(mig.Status.Reason).To(Equal("Reverted"))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
	}, NodeTimeout(6*time.Minute))

	It("keeps a stopped instance stopped through a resize, and a revert gives it back its old flavor and spec", func(ctx SpecContext) {
		out, err := kubectlNova(ctx, "stop", name, "--wait", "--timeout=2m")
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = kubectlNova(ctx, "resize", name, "r1.tall", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.VMState).To(Equal(v1.VMStateResized))
			g.Expect(i.Status.PowerState).To(Equal(v1.PowerStateShutdown), "defined, not booted")
		})
		Expect(inst.Status.Resize.PreviousVMState).To(Equal(v1.VMStateStopped))
		out, err = kubectlNova(ctx, "resize", name, "--revert", "--wait", "--timeout=2m")
		Expect(err).NotTo(HaveOccurred(), out)
		after := expectInstance(ctx, name, settled(v1.VMStateStopped))
		Expect(after.Spec.Flavor).To(Equal("r1.wide"), "kubectl nova resize --revert sets spec.flavor back")
		Expect(after.Status.Flavor.Name).To(Equal("r1.wide"))
		Expect(after.Status.PowerState).To(Equal(v1.PowerStateShutdown))
		boots := bootsNow(after)
		out, err = kubectlNova(ctx, "start", name, "--wait", "--timeout=2m")
		Expect(err).NotTo(HaveOccurred(), out)
		// Up and counting before the next move: a guest early in its boot misses the power button.
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == boots+1 && c.SinceLastBoot().Last(aliveSeq) >= 1 },
			"booted again")
	}, NodeTimeout(6*time.Minute))
})

// A resize's automatic confirmation needs the manager restarted with another flag: Serial.
var _ = Describe("Resize confirmed by the manager", Ordered, disruptive, func() {
	inNamespace("resize-confirm")
	const name = "self-confirmed"

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		launchPinned(ctx, name, "host-1")
	}, NodeTimeout(3*time.Minute))

	It("cold-migrates between hosts that share storage, confirmed by itself after --resize-confirm-window", func(ctx SpecContext) {
		Expect(cluster.StopManager()).To(Succeed())
		Expect(cluster.StartManager("--resize-confirm-window=5s")).To(Succeed())
		DeferCleanup(func() {
			_ = cluster.StopManager()
			Expect(cluster.StartManager()).To(Succeed())
		})
		before := expectInstance(ctx, name, settled(v1.VMStateActive))
		boots := bootsNow(before)
		start := time.Now()
		out, err := kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--node", "host-2", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		took := time.Since(start)
		migName := regexp.MustCompile(`migration\.compute\.kubenova\.io/(\S+) created`).FindStringSubmatch(out)[1]
		after := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			settled(v1.VMStateActive)(g, i)
			g.Expect(i.Status.NodeName).To(Equal("host-2"))
			g.Expect(i.Status.Resize).To(BeNil())
		})
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == boots+1 }, "booted on host-2")
		Expect(diskOf("host-2", after)).To(BeAnExistingFile())
		Expect(asidesOn("host-2", after)).To(BeEmpty(), "confirmed: the old disk is gone from the shared storage")
		Eventually(func() []string { return events(ctx, name, "Confirmed") }).WithContext(ctx).
			Should(ContainElement(ContainSubstring("--resize-confirm-window")))
		mig := &v1.Migration{}
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: migName}, mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(v1.MigrationSucceeded))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		GinkgoWriter.Printf("FIGURE cold migration on shared storage: %s from kubectl to Resized\n", took.Round(10*time.Millisecond))
	}, NodeTimeout(6*time.Minute))
})

// bootsNow is the guest's boot count as its node's console log shows it.
func bootsNow(inst *v1.Instance) int { return readConsole(inst).Last(bootCount) }

// diskOf is the instance's root disk on node.
func diskOf(node string, inst *v1.Instance) string {
	return filepath.Join(host(node).StorageRoot, "instances", string(inst.UID), "disk")
}

// asidesOn lists the disks set aside beside the root disk on node: a resize's, or any other
// leftover of a task (disk.<anything>).
func asidesOn(node string, inst *v1.Instance) []string {
	asides, err := filepath.Glob(diskOf(node, inst) + ".*")
	Expect(err).NotTo(HaveOccurred())
	return asides
}

// A confirmation deletes the source's copy of the disk: while the target, where the resized
// guest runs, is down, the source's is the only copy that answers, and it stays.
var _ = Describe("A resize whose target is down", Ordered, disruptive, func() {
	inNamespace("resize-target-down")
	const name = "two-copies"

	It("refuses a confirmation with NodeDown and keeps the source's disk; confirms once the target is back", func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		launchPinned(ctx, name, "host-1")
		out, err := kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--node", "host-3", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.VMState).To(Equal(v1.VMStateResized))
			g.Expect(i.Status.TaskState).To(BeEmpty())
			g.Expect(i.Status.NodeName).To(Equal("host-3"))
		})
		source := fmt.Sprintf("%s.resize-%d", diskOf("host-1", inst), inst.Status.Resize.TaskID)
		Expect(source).To(BeAnExistingFile(), "the source keeps its disk, set aside, until the confirmation")

		By("stopping the target's agent until the manager counts host-3 down")
		h := host("host-3")
		Expect(cluster.StopAgent(h)).To(Succeed())
		agentUp := false
		DeferCleanup(func() {
			if !agentUp {
				Expect(cluster.StartAgent(h)).To(Succeed())
			}
		})
		Eventually(func(g Gomega) {
			hv := &v1.Hypervisor{}
			g.Expect(cluster.Client.Get(ctx, client.ObjectKey{Name: h.Name}, hv)).To(Succeed())
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorDown))
			ready := apimeta.FindStatusCondition(hv.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(v1.ReasonHeartbeatLapsed))
		}).WithContext(ctx).WithTimeout(90 * time.Second).Should(Succeed())

		out, err = kubectlNova(ctx, "resize", name, "--confirm", "--wait", "--timeout=1m")
		Expect(err).To(HaveOccurred(), out)
		refused := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.ResizeRequest).NotTo(BeNil())
			g.Expect(i.Status.ResizeRequest.Result).To(Equal(v1.RequestRefused))
		})
		Expect(refused.Status.ResizeRequest.Reason).To(Equal(v1.ReasonNodeDown))
		Expect(refused.Status.ResizeRequest.Message).To(ContainSubstring("delete the copy of the disk on host-1"))
		Expect(refused.Status.VMState).To(Equal(v1.VMStateResized))
		Expect(source).To(BeAnExistingFile(), "the only copy that answers stays")

		By("starting the target's agent: the confirmation goes through")
		Expect(cluster.StartAgent(h)).To(Succeed())
		agentUp = true
		expectHypervisorsUp(ctx)
		out, err = kubectlNova(ctx, "resize", name, "--confirm", "--wait", "--timeout=2m")
		Expect(err).NotTo(HaveOccurred(), out)
		after := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal("host-3"))
		Eventually(source).WithTimeout(30*time.Second).ShouldNot(BeAnExistingFile(), "confirmed: the source's copy goes")
		dom, err := h.Virsh(ctx, "domstate", after.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), dom)
		Expect(strings.TrimSpace(dom)).To(Equal("running"))
	}, NodeTimeout(8*time.Minute))
})
