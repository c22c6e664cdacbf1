package controllers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
	"github.com/kubenova/kubenova/test/gitops"
)

// Resizes in place on node-a, its agent's fake hypervisor on real disks: the disk is copied and
// grown, the old one set aside until a confirmation deletes it or a revert puts it back.
var _ = Describe("Resize", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
		makeFlavor(ctx, "wide", 2, 512, 2)
	})

	resized := func(ctx SpecContext, inst *v1.Instance) *v1.Instance {
		var got *v1.Instance
		Eventually(func(g Gomega) {
			var err error
			got, err = get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateResized), "%+v", got.Status.Conditions)
			g.Expect(got.Status.TaskState).To(BeEmpty())
		}).WithContext(ctx).Should(Succeed())
		return got
	}
	settledIn := func(ctx SpecContext, inst *v1.Instance, vm v1.VMState, readyReason string) *v1.Instance {
		var got *v1.Instance
		Eventually(func(g Gomega) {
			var err error
			got, err = get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(vm))
			g.Expect(got.Status.TaskState).To(BeEmpty())
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.ObservedGeneration).To(Equal(got.Generation))
			g.Expect(ready.Reason).To(Equal(readyReason), ready.Message)
		}).WithContext(ctx).Should(Succeed())
		return got
	}

	// activeWithDisk creates an Active instance on node-a, and returns its root disk's path and
	// the file there now.
	activeWithDisk := func(ctx SpecContext, prefix string) (*v1.Instance, string, os.FileInfo) {
		inst := createOnNodeA(ctx, prefix)
		waitForVMState(ctx, inst, v1.VMStateActive)
		got, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		disk, err := agentStore.RootDisk(string(got.UID))
		Expect(err).NotTo(HaveOccurred())
		file, err := os.Stat(disk)
		Expect(err).NotTo(HaveOccurred())
		return inst, disk, file
	}

	It("resizes in place, reverts to the old flavor and disk, holds the reverted flavor, and confirms a resize asked again", func(ctx SpecContext) {
		inst, disk, oldDisk := activeWithDisk(ctx, "resize")

		update(ctx, inst, func(i *v1.Instance) { i.Spec.Flavor = "wide" })
		got := resized(ctx, inst)
		rs := got.Status.Resize
		Expect(rs).NotTo(BeNil())
		Expect(rs.SourceNode).To(Equal("node-a"))
		Expect(rs.TargetNode).To(Equal("node-a"))
		Expect(rs.DiskTransfer).To(Equal(v1.TransferSameNode))
		Expect(rs.OldFlavor.Name).To(Equal("small"))
		Expect(rs.ResizedAt).NotTo(BeNil())
		Expect(got.Status.Flavor.Name).To(Equal("wide"))
		m, ok := fakeDriver.Machine(string(got.UID))
		Expect(ok).To(BeTrue())
		Expect(m.VCPUs).To(Equal(int32(2)))
		Expect(m.MemoryMiB).To(Equal(int32(512)))
		size, err := storage.DiskVirtualSize(disk)
		Expect(err).NotTo(HaveOccurred())
		Expect(size).To(Equal(int64(2<<30)), "grown to the new flavor's disk")
		asidePath := fmt.Sprintf("%s.resize-%d", disk, rs.TaskID)
		aside, err := os.Stat(asidePath)
		Expect(err).NotTo(HaveOccurred())
		Expect(os.SameFile(aside, oldDisk)).To(BeTrue(), "the old disk is set aside, untouched")
		ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
		Expect(ready.Reason).To(Equal(ReasonResized))
		expectGitOpsHealth(got, gitops.Suspended, status.InProgressStatus) // awaiting a confirm or a revert

		By("reverting: the old flavor and the very disk it had")
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.ResizeRequest = &v1.ResizeRequest{Decision: v1.ResizeRevert, RequestedAt: microNow()}
		})
		got = settledIn(ctx, inst, v1.VMStateActive, ReasonResizeReverted)
		Expect(got.Status.Flavor.Name).To(Equal("small"))
		Expect(got.Status.Resize).To(BeNil())
		Expect(got.Status.RevertedFlavor).To(Equal("wide"))
		Expect(got.Status.ResizeRequest.Result).To(Equal(v1.RequestSucceeded))
		m, _ = fakeDriver.Machine(string(got.UID))
		Expect(m.VCPUs).To(Equal(int32(1)))
		restored, err := os.Stat(disk)
		Expect(err).NotTo(HaveOccurred())
		Expect(os.SameFile(restored, oldDisk)).To(BeTrue(), "the disk set aside is the root disk again")
		Expect(asidePath).NotTo(BeAnExistingFile())

		By("asking again by way of the current flavor, then the new one: resized, then confirmed")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Flavor = "small" })
		settledIn(ctx, inst, v1.VMStateActive, v1.ReasonDesiredStateReached)
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Flavor = "wide" })
		resized(ctx, inst)
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.ResizeRequest = &v1.ResizeRequest{Decision: v1.ResizeConfirm, RequestedAt: microNow()}
		})
		got = settledIn(ctx, inst, v1.VMStateActive, v1.ReasonDesiredStateReached)
		Expect(got.Status.Flavor.Name).To(Equal("wide"))
		Expect(got.Status.Resize).To(BeNil())
		asides, err := filepath.Glob(disk + ".resize-*")
		Expect(err).NotTo(HaveOccurred())
		Expect(asides).To(BeEmpty(), "confirmed: the old disk is deleted")
		Expect(disk).To(BeAnExistingFile())

		By("a confirmation with nothing to confirm is refused, and changes nothing")
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.ResizeRequest = &v1.ResizeRequest{Decision: v1.ResizeConfirm, RequestedAt: microNow()}
		})
		Eventually(func() v1.RequestResult {
			cur := current(ctx, inst)
			if cur.Status.ResizeRequest == nil || !cur.Status.ResizeRequest.RequestedAt.Equal(&cur.Spec.ResizeRequest.RequestedAt) {
				return ""
			}
			return cur.Status.ResizeRequest.Result
		}).WithContext(ctx).Should(Equal(v1.RequestRefused))
		settledIn(ctx, inst, v1.VMStateActive, v1.ReasonDesiredStateReached)
	})

	It("rolls a resize that fails on its target back to the old flavor and disk, and keeps the fault", func(ctx SpecContext) {
		inst, disk, oldDisk := activeWithDisk(ctx, "resize-fails")

		fakeDriver.SetFail("Spawn", errors.New("no room for another QEMU"))
		DeferCleanup(func() { fakeDriver.SetFail("Spawn", nil) })
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Flavor = "wide" })
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.Task).NotTo(BeNil())
			g.Expect(got.Status.Task.Action).To(Equal(v1.ActionRevertResize), "the failed finish rolls back")
			g.Expect(got.Status.Resize.RollingBack).To(BeTrue())
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		fakeDriver.SetFail("Spawn", nil)

		got := settledIn(ctx, inst, v1.VMStateActive, v1.ReasonTaskFailed)
		Expect(got.Status.Flavor.Name).To(Equal("small"))
		Expect(got.Status.Resize).To(BeNil())
		Expect(got.Status.RevertedFlavor).To(BeEmpty(), "a rollback is not a person's revert")
		Expect(got.Status.Fault).NotTo(BeNil())
		Expect(got.Status.Fault.Action).To(Equal(v1.ActionResize))
		Expect(got.Status.Fault.Message).To(ContainSubstring("no room for another QEMU"))
		restored, err := os.Stat(disk)
		Expect(err).NotTo(HaveOccurred())
		Expect(os.SameFile(restored, oldDisk)).To(BeTrue(), "the disk it had before")
		m, _ := fakeDriver.Machine(string(got.UID))
		Expect(m.VCPUs).To(Equal(int32(1)))
	})
})

func TestAnInstanceInErrorWithAResizeAllowsOnlyARevert(t *testing.T) {
	r := &InstanceReconciler{}
	inst := &v1.Instance{Status: v1.InstanceStatus{VMState: v1.VMStateError,
		Resize: &v1.ResizeStatus{Action: v1.ActionMigrate, SourceNode: "a", TargetNode: "b"}}}
	for _, action := range []v1.Action{v1.ActionHardReboot, v1.ActionRebuild, v1.ActionEvacuate, v1.ActionStop, v1.ActionRescue} {
		if refusal := r.check(inst, action); refusal == nil || !strings.Contains(refusal.Message, "revert it") {
			t.Errorf("%s: %v", action, refusal)
		}
	}
	for _, action := range []v1.Action{v1.ActionRevertResize, v1.ActionTerminate} {
		if refusal := r.check(inst, action); refusal != nil {
			t.Errorf("%s refused: %s", action, refusal.Message)
		}
	}
	inst.Status.Resize = nil
	if refusal := r.check(inst, v1.ActionHardReboot); refusal != nil {
		t.Errorf("a hard reboot of an instance in Error without a resize: %s", refusal.Message)
	}
}

// A confirmation deletes the source's copy of the disk and a revert the target's: neither is
// started while the other side, the one that would be left, is down.
func TestAResizeIsNotEndedWhileTheCopyItKeepsIsOnANodeThatIsDown(t *testing.T) {
	ctx := context.Background()
	down := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "down"}, Status: v1.HypervisorStatus{State: v1.HypervisorDown,
		Conditions: []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1.ReasonHeartbeatLapsed}}}}
	up := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "up"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(down, up).Build()
	r := &InstanceReconciler{Client: c}
	for _, tc := range []struct {
		source, target string
		action         v1.Action
		refused        bool
	}{
		{"up", "down", v1.ActionConfirmResize, true},
		{"up", "down", v1.ActionRevertResize, false}, // the source boots its own copy
		{"down", "up", v1.ActionRevertResize, true},
		{"down", "up", v1.ActionConfirmResize, false}, // the down node's copy is the one given up
		{"up", "up", v1.ActionConfirmResize, false},
	} {
		rs := &v1.ResizeStatus{SourceNode: tc.source, TargetNode: tc.target}
		refusal, err := r.lastCopyAtRisk(ctx, rs, tc.action)
		if err != nil {
			t.Fatal(err)
		}
		if (refusal != nil) != tc.refused {
			t.Errorf("%s from %s to %s: refusal %+v, want refused %v", tc.action, tc.source, tc.target, refusal, tc.refused)
			continue
		}
		if refusal != nil && (refusal.Reason != v1.ReasonNodeDown || !strings.Contains(refusal.Message, "node down is down")) {
			t.Errorf("%s from %s to %s: %+v", tc.action, tc.source, tc.target, refusal)
		}
	}
}
