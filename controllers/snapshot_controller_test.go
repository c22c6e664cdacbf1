package controllers

import (
	"context"
	"errors"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/test/gitops"
)

var _ = Describe("Snapshot controller", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	It("saves an instance as an Image that boots another instance, and keeps the Image when the Snapshot goes", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "snapshot")
		waitForVMState(ctx, inst, v1.VMStateActive)
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "web-backup"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name}}
		Expect(k8s.Create(ctx, snap)).To(Succeed())
		snap = expectSnapshotPhase(ctx, snap, v1.SnapshotSucceeded)
		Expect(snap.Status.ImageName).To(Equal("web-backup"))
		Expect(snap.Status.StartTime).NotTo(BeNil())
		Expect(snap.Status.CompletionTime).NotTo(BeNil())
		Expect(snap.Status.SizeBytes).To(BeNumerically(">", 0))
		Expect(meta.IsStatusConditionTrue(snap.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		expectGitOpsHealth(snap, gitops.Healthy, status.CurrentStatus)

		img := expectImage(ctx, inst.Namespace, "web-backup", func(Gomega, *v1.Image) {})
		Expect(img.Spec.Source.Snapshot).To(Equal("web-backup"))
		Expect(string(img.UID)).To(Equal(snap.Status.ImageUID))
		Expect(img.Status.Phase).To(Equal(v1.ImageAvailable))
		Expect(img.Status.SHA256).To(MatchRegexp("^[0-9a-f]{64}$"))
		Expect(img.Status.SizeBytes).To(Equal(snap.Status.SizeBytes))
		Expect(img.Spec.MinDiskGiB).To(Equal(int32(1)), "the copy is as large as the flavor's root disk")
		info, err := imagestore.Inspect(ctx, imageStore.Root+"/images/"+string(img.UID))
		Expect(err).NotTo(HaveOccurred())
		Expect(imagestore.CheckStandalone(info, v1.DiskFormatQCOW2)).To(Succeed(), "the snapshot has no backing chain")

		got := current(ctx, inst)
		Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
		Expect(got.Status.TaskState).To(BeEmpty())
		Expect(got.Status.SnapshotRequest.Name).To(Equal("web-backup"))
		Expect(got.Status.SnapshotRequest.Result).To(Equal(v1.RequestSucceeded))

		restored := newInstance(inst.Namespace, "restored", "small", "web-backup")
		restored.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, restored)).To(Succeed())
		waitForVMState(ctx, restored, v1.VMStateActive)

		Expect(k8s.Delete(ctx, snap)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(snap), &v1.Snapshot{}))
		}).WithContext(ctx).Should(BeTrue())
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(img), &v1.Image{})).To(Succeed(), "the Image outlives its Snapshot by default")
	})

	It("serves two snapshots of one instance one after the other, and deletes an image with its snapshot when asked", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "two-snapshots")
		waitForVMState(ctx, inst, v1.VMStateActive)
		first := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "first"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name, DeleteImageWithSnapshot: true}}
		second := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "second"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name, ImageName: "second-image"}}
		Expect(k8s.Create(ctx, first)).To(Succeed())
		Expect(k8s.Create(ctx, second)).To(Succeed())
		expectSnapshotPhase(ctx, first, v1.SnapshotSucceeded)
		expectSnapshotPhase(ctx, second, v1.SnapshotSucceeded)
		expectImage(ctx, inst.Namespace, "second-image", func(g Gomega, img *v1.Image) {
			g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable))
		})

		Expect(k8s.Delete(ctx, first)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: "first"}, &v1.Image{}))
		}).WithContext(ctx).Should(BeTrue(), "deleteImageWithSnapshot deletes the image")
	})

	It("fails, saying why, a snapshot whose upload fails on every try, and the instance goes on running", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "upload-fails")
		waitForVMState(ctx, inst, v1.VMStateActive)
		agentImages.failPuts(errors.New("no space left on the image store"))
		DeferCleanup(func() { agentImages.failPuts(nil) })
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "doomed"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name}}
		Expect(k8s.Create(ctx, snap)).To(Succeed())
		// The agent tries three times, 2 s and 4 s apart, then reports the task failed.
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(snap), snap)).To(Succeed())
			g.Expect(snap.Status.Phase).To(Equal(v1.SnapshotFailed))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		Expect(snap.Status.Message).To(ContainSubstring("no space left on the image store"))
		Expect(agentImages.failedPuts()).To(Equal(3), "tried three times, not more")
		got := current(ctx, inst)
		Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
		Expect(got.Status.TaskState).To(BeEmpty())
		Expect(got.Status.SnapshotRequest.Result).To(Equal(v1.RequestFailed))
		copyFile, err := agentStore.SnapshotFile(string(inst.UID))
		Expect(err).NotTo(HaveOccurred())
		Expect(copyFile).NotTo(BeAnExistingFile(), "the failed task's copy is removed")
	})

	It("fails a snapshot whose disk copy hangs once each attempt's deadline has passed three times, and the instance goes on", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "copy-hangs")
		waitForVMState(ctx, inst, v1.VMStateActive)
		fakeDriver.SetHang("BackupDisk", true)
		DeferCleanup(func() { fakeDriver.SetHang("BackupDisk", false) })
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "stuck"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name}}
		start := time.Now()
		Expect(k8s.Create(ctx, snap)).To(Succeed())
		// Three attempts of 5 s, 2 s and 4 s apart.
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(snap), snap)).To(Succeed())
			g.Expect(snap.Status.Phase).To(Equal(v1.SnapshotFailed))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		Expect(time.Since(start)).To(BeNumerically(">=", 3*taskAttemptTimeout), "each attempt waited for its deadline")
		Expect(snap.Status.Message).To(ContainSubstring("did not finish within 5s (--task-attempt-timeout)"))
		got := current(ctx, inst)
		Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
		Expect(got.Status.TaskState).To(BeEmpty())
		Expect(got.Status.PowerState).To(Equal(v1.PowerStateRunning))
	})

	It("fails, saying why, a snapshot of a missing or locked instance (unless an administrator overrides the lock), or onto an image it did not make", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "refused-snapshots")
		waitForVMState(ctx, inst, v1.VMStateActive)
		makeImage(ctx, inst.Namespace, "taken")

		missing := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "of-nothing"},
			Spec: v1.SnapshotSpec{InstanceName: "nothing"}}
		clash := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "clash"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name, ImageName: "taken"}}
		for _, s := range []*v1.Snapshot{missing, clash} {
			Expect(k8s.Create(ctx, s)).To(Succeed())
		}
		expectSnapshotFailure(ctx, missing, ReasonInstanceNotFound, "instance nothing does not exist")
		expectSnapshotFailure(ctx, clash, ReasonImageExists, "image taken exists already")
		taken := expectImage(ctx, inst.Namespace, "taken", func(Gomega, *v1.Image) {})
		Expect(taken.Spec.Source.File).To(Equal(imageFile), "the existing image is left alone")

		got := current(ctx, inst)
		got.Spec.Locked = true
		Expect(k8s.Update(ctx, got)).To(Succeed())
		locked := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "of-locked"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name}}
		Expect(k8s.Create(ctx, locked)).To(Succeed())
		expectSnapshotFailure(ctx, locked, v1.ReasonLocked, "the instance is locked")
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: "of-locked"}, &v1.Image{}))
		}).WithContext(ctx).Should(BeTrue(), "a failed snapshot's empty image goes")
		overridden := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: "by-admin"},
			Spec: v1.SnapshotSpec{InstanceName: inst.Name, OverrideLock: true}}
		Expect(k8s.Create(ctx, overridden)).To(Succeed())
		expectSnapshotPhase(ctx, overridden, v1.SnapshotSucceeded)
		got = current(ctx, inst)
		got.Spec.Locked = false
		Expect(k8s.Update(ctx, got)).To(Succeed())
	})
})

func expectSnapshotPhase(ctx context.Context, snap *v1.Snapshot, phase v1.SnapshotPhase) *v1.Snapshot {
	got := &v1.Snapshot{}
	Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(snap), got)).To(Succeed())
		g.Expect(got.Status.Phase).To(Equal(phase), "%s: %s", got.Name, got.Status.Message)
	}).WithContext(ctx).Should(Succeed())
	return got
}

func expectSnapshotFailure(ctx context.Context, snap *v1.Snapshot, reason, says string) {
	got := expectSnapshotPhase(ctx, snap, v1.SnapshotFailed)
	stalled := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionStalled)
	Expect(stalled).NotTo(BeNil())
	Expect(stalled.Status).To(Equal(metav1.ConditionTrue))
	Expect(stalled.Reason).To(Equal(reason))
	Expect(stalled.Message).To(ContainSubstring(says))
	Expect(got.Status.Message).To(ContainSubstring(says))
	expectGitOpsHealth(got, gitops.Degraded, status.FailedStatus)
}
