package controllers

import (
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("Rebuild", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	rebuildAck := func(ctx SpecContext, inst *v1.Instance) func() *v1.RequestStatus {
		return func() *v1.RequestStatus {
			cur, err := get(ctx, inst)()
			Expect(err).NotTo(HaveOccurred())
			return cur.Status.RebuildRequest
		}
	}

	It("rebuilds onto a new spec.image: same instance and node, a new disk, the old one gone", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "rebuild")
		waitForVMState(ctx, inst, v1.VMStateActive)
		makeImage(ctx, inst.Namespace, "other")
		before := current(ctx, inst)
		run := runID(before)
		disk, err := agentStore.RootDisk(string(before.UID))
		Expect(err).NotTo(HaveOccurred())
		oldDisk := mustStat(disk)

		update(ctx, inst, func(i *v1.Instance) { i.Spec.Image.Name = "other" })
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.Image.Name).To(Equal("other"), "%+v %+v %+v", got.Spec.Image, got.Status.Task, got.Status.Conditions)
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(got.Status.TaskState).To(BeEmpty())
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())
		after := current(ctx, inst)
		Expect(after.UID).To(Equal(before.UID))
		Expect(after.Status.NodeName).To(Equal(before.Status.NodeName))
		Expect(runID(after)).NotTo(Equal(run), "the domain booted anew")
		newDisk := mustStat(disk)
		Expect(os.SameFile(oldDisk, newDisk)).To(BeFalse(), "the root disk is a new file")
		leftovers, err := filepath.Glob(disk + ".*")
		Expect(err).NotTo(HaveOccurred())
		Expect(leftovers).To(BeEmpty(), "the old disk is gone once the new one booted")
	})

	It("rebuilds onto the same image on request, once, and keeps a stopped instance stopped", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "rebuild-request")
		waitForVMState(ctx, inst, v1.VMStateActive)
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredStopped })
		waitForVMState(ctx, inst, v1.VMStateStopped)
		before := current(ctx, inst)
		disk, err := agentStore.RootDisk(string(before.UID))
		Expect(err).NotTo(HaveOccurred())
		oldDisk := mustStat(disk)

		at := microNow()
		update(ctx, inst, func(i *v1.Instance) { i.Spec.RebuildRequest = &v1.RebuildRequest{RequestedAt: at} })
		Eventually(rebuildAck(ctx, inst)).WithContext(ctx).Should(And(Not(BeNil()),
			HaveField("Result", v1.RequestSucceeded), HaveField("RequestedAt", at)))
		got := current(ctx, inst)
		Expect(got.Status.VMState).To(Equal(v1.VMStateStopped), "a stopped instance stays stopped")
		Expect(got.Status.PowerState).To(Equal(v1.PowerStateShutdown))
		newDisk := mustStat(disk)
		Expect(os.SameFile(oldDisk, newDisk)).To(BeFalse(), "the root disk is a new file")
		Consistently(func() int64 { cur := current(ctx, inst); return cur.Status.LastTaskID }).
			WithContext(ctx).WithTimeout(2*time.Second).Should(Equal(got.Status.LastTaskID), "served once")
	})

	It("refuses a rebuild request of a paused instance, and waits for an image that is not available", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "rebuild-refused")
		waitForVMState(ctx, inst, v1.VMStateActive)
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredPaused })
		waitForVMState(ctx, inst, v1.VMStatePaused)
		at := microNow()
		update(ctx, inst, func(i *v1.Instance) { i.Spec.RebuildRequest = &v1.RebuildRequest{RequestedAt: at} })
		Eventually(rebuildAck(ctx, inst)).WithContext(ctx).Should(And(Not(BeNil()),
			HaveField("Result", v1.RequestRefused), HaveField("Reason", v1.ReasonInvalidState)))

		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.PowerState = v1.DesiredRunning
			i.Spec.Image.Name = "not-there-yet"
		})
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonImageNotFound)
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(got.Status.Image.Name).To(Equal("img"))
		}).WithContext(ctx).Should(Succeed())
		makeImage(ctx, inst.Namespace, "not-there-yet")
		Eventually(func() string { got := current(ctx, inst); return got.Status.Image.Name }).
			WithContext(ctx).Should(Equal("not-there-yet"))
	})
})
