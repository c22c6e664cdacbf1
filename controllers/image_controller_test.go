package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http/httptest"
	"os"
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

var _ = Describe("Image service", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	It("imports an image into the store, verified, and removes its bytes when it is deleted", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "import")
		makeImage(ctx, ns, "img")
		img := expectImage(ctx, ns, "img", func(g Gomega, img *v1.Image) {
			g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable))
		})
		st := mustStat(imageFile)
		Expect(img.Status.SHA256).To(Equal(imageSum))
		Expect(img.Status.SizeBytes).To(Equal(st.Size()))
		Expect(img.Status.VirtualSizeBytes).To(Equal(int64(64 << 20)))
		Expect(img.Status.Format).To(Equal("qcow2"))
		Expect(img.Status.Location).To(Equal(string(img.UID)))
		Expect(img.Status.ImportedAt).NotTo(BeNil())
		Expect(img.Status.ObservedGeneration).To(Equal(img.Generation))
		Expect(meta.IsStatusConditionTrue(img.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		Expect(meta.IsStatusConditionFalse(img.Status.Conditions, v1.ConditionReconciling)).To(BeTrue())
		Expect(meta.IsStatusConditionFalse(img.Status.Conditions, v1.ConditionStalled)).To(BeTrue())
		Expect(img.Finalizers).To(ContainElement(v1.FinalizerImage))
		expectGitOpsHealth(img, gitops.Healthy, status.CurrentStatus)
		_, err := imageStore.Stat(ctx, string(img.UID))
		Expect(err).NotTo(HaveOccurred())

		By("importing again when the store lost the bytes")
		Expect(imageStore.Delete(ctx, string(img.UID))).To(Succeed())
		touch(ctx, img) // nothing watches the store: any change of the image brings it back
		Eventually(func() error { _, err := imageStore.Stat(ctx, string(img.UID)); return err }).WithContext(ctx).Should(Succeed())

		By("deleting")
		Expect(k8s.Delete(ctx, img)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(img), &v1.Image{}))
		}).WithContext(ctx).Should(BeTrue())
		_, err = imageStore.Stat(ctx, string(img.UID))
		Expect(errors.Is(err, imagestore.ErrNotFound)).To(BeTrue(), "the store still holds a deleted image's bytes")
	})

	It("takes a store whose directory is empty (not mounted yet) for unavailable, not empty: nothing is lost, nothing lands there, and all goes on once it is back", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "unmounted")
		makeImage(ctx, ns, "img")
		img := expectImage(ctx, ns, "img", func(g Gomega, img *v1.Image) { g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable)) })
		running := newInstance(ns, "running", "small", "img")
		running.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, running)).To(Succeed())
		waitForVMState(ctx, running, v1.VMStateActive)

		By("unmounting the store: its directory is an empty one")
		mounted := imageStore.Root + ".mounted"
		Expect(os.Rename(imageStore.Root, mounted)).To(Succeed())
		Expect(os.Mkdir(imageStore.Root, 0o755)).To(Succeed())
		remounted := false
		remount := func() {
			Expect(os.Remove(imageStore.Root)).To(Succeed(), "nothing was written into the unmounted directory")
			Expect(os.Rename(mounted, imageStore.Root)).To(Succeed())
			remounted = true
		}
		DeferCleanup(func() {
			if !remounted {
				_ = os.RemoveAll(imageStore.Root)
				Expect(os.Rename(mounted, imageStore.Root)).To(Succeed())
			}
		})

		touch(ctx, img)
		fresh := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fresh"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: imageFile}, SHA256: imageSum, DiskFormat: v1.DiskFormatQCOW2}}
		Expect(k8s.Create(ctx, fresh)).To(Succeed())
		launched := newInstance(ns, "launched", "small", "fresh")
		launched.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, launched)).To(Succeed())
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "while-unmounted"},
			Spec: v1.SnapshotSpec{InstanceName: running.Name}}
		Expect(k8s.Create(ctx, snap)).To(Succeed())

		expectImage(ctx, ns, "fresh", func(g Gomega, img *v1.Image) {
			g.Expect(img.Status.Phase).To(Equal(v1.ImagePending))
			ready := meta.FindStatusCondition(img.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(ReasonStoreUnavailable))
			g.Expect(ready.Message).To(ContainSubstring("is it mounted?"))
		})
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(snap), snap)).To(Succeed())
			g.Expect(snap.Status.Phase).To(BeElementOf(v1.SnapshotSnapshotting, v1.SnapshotUploading))
		}).WithContext(ctx).Should(Succeed())
		// Long enough for the agent's three quick attempts (2 s and 4 s apart) to have failed
		// the snapshot, had it counted the store's absence as failures.
		Consistently(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
			g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable), "an image whose bytes nobody can see is not lost")
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(snap), snap)).To(Succeed())
			g.Expect(snap.Status.Phase).To(BeElementOf(v1.SnapshotSnapshotting, v1.SnapshotUploading), snap.Status.Message)
			g.Expect(current(ctx, launched).Status.VMState).To(Equal(v1.VMStateBuilding))
		}).WithContext(ctx).WithTimeout(8 * time.Second).Should(Succeed())
		Expect(os.ReadDir(imageStore.Root)).To(BeEmpty(), "no import or upload went into the unmounted directory")

		By("mounting it again")
		remount()
		expectImage(ctx, ns, "fresh", func(g Gomega, img *v1.Image) { g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable)) })
		// The agent looks again every 10 s.
		Eventually(func() v1.VMState { return current(ctx, launched).Status.VMState }).
			WithContext(ctx).WithTimeout(30 * time.Second).Should(Equal(v1.VMStateActive))
		expectSnapshotPhase(ctx, snap, v1.SnapshotSucceeded)
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(img), img)).To(Succeed())
		Expect(img.Status.Phase).To(Equal(v1.ImageAvailable))
	})

	It("keeps an instance waiting, Stalled and unplaced, on an image that failed, and launches once spec.image names a good one", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "bad-image")
		Expect(k8s.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tampered"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: imageFile}, SHA256: digestOf("something else")}})).To(Succeed())
		img := expectImage(ctx, ns, "tampered", func(g Gomega, img *v1.Image) {
			g.Expect(img.Status.Phase).To(Equal(v1.ImageError))
		})
		stalled := meta.FindStatusCondition(img.Status.Conditions, v1.ConditionStalled)
		Expect(stalled).NotTo(BeNil())
		Expect(stalled.Status).To(Equal(metav1.ConditionTrue))
		Expect(stalled.Reason).To(Equal(imagestore.ReasonChecksumMismatch))
		Expect(stalled.Message).To(ContainSubstring("has sha256 " + imageSum))
		expectGitOpsHealth(img, gitops.Degraded, status.FailedStatus)

		inst := newInstance(ns, "web", "small", "tampered")
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonImageError, "image tampered failed its import", "has sha256")
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionStalled)).To(BeTrue())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateBuilding), "an instance waits for its image; it does not fail with it")
			g.Expect(got.Status.NodeName).To(BeEmpty())
		}).WithContext(ctx).Should(Succeed())

		makeImage(ctx, ns, "good")
		got, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		got.Spec.Image.Name = "good"
		Expect(k8s.Update(ctx, got)).To(Succeed())
		waitForVMState(ctx, inst, v1.VMStateActive)
		got = current(ctx, inst)
		Expect(got.Status.Image.Name).To(Equal("good"))
		good := expectImage(ctx, ns, "good", func(Gomega, *v1.Image) {})
		Expect(got.Status.Image.UID).To(Equal(string(good.UID)))
		Expect(got.Status.Image.SHA256).To(Equal(imageSum))
	})

	// Knowing a digest must never grant an image: an Image whose source answers nothing, named
	// after the digest of an image a node has cached for another Image, launches nothing.
	It("never launches from a cached digest that the image service did not verify from the image's own source", func(ctx SpecContext) {
		owner := createOnNodeA(ctx, "digest-owner")
		waitForVMState(ctx, owner, v1.VMStateActive)
		_, err := os.Stat(agentStore.BaseImage(imageSum))
		Expect(err).NotTo(HaveOccurred(), "node-a caches the digest")

		dead := httptest.NewServer(nil)
		dead.Close()
		ns := makeNamespace(ctx, "digest-thief")
		Expect(k8s.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "borrowed"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{URL: dead.URL + "/private.qcow2"}, SHA256: imageSum}})).To(Succeed())
		thief := newInstance(ns, "thief", "small", "borrowed")
		thief.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, thief)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, thief)()
			g.Expect(err).NotTo(HaveOccurred())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonImageError, "connection refused", "trying again")
		}).WithContext(ctx).Should(Succeed())
		// The image service keeps trying (the source may come back), and the instance stays unplaced.
		Consistently(func(g Gomega) {
			got, err := get(ctx, thief)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.NodeName).To(BeEmpty())
			g.Expect(got.Status.Image).To(BeNil())
			g.Expect(fakeDriver.Has(string(got.UID))).To(BeFalse())
		}).WithContext(ctx).WithTimeout(3 * time.Second).Should(Succeed())
	})

	It("boots instances of any namespace from a ClusterImage, and never from another namespace's Image", func(ctx SpecContext) {
		name := unique("shared")
		Expect(k8s.Create(ctx, &v1.ClusterImage{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: imageFile}, SHA256: imageSum}})).To(Succeed())
		Eventually(func() (v1.ImagePhase, error) {
			ci := &v1.ClusterImage{}
			err := k8s.Get(ctx, types.NamespacedName{Name: name}, ci)
			return ci.Status.Phase, err
		}).WithContext(ctx).Should(Equal(v1.ImageAvailable))

		ns := makeNamespace(ctx, "tenant")
		inst := newInstance(ns, "web", "small", name)
		inst.Spec.Image.Kind = v1.KindClusterImage
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		waitForVMState(ctx, inst, v1.VMStateActive)
		got := current(ctx, inst)
		Expect(got.Status.Image.Kind).To(Equal(v1.KindClusterImage))

		other := makeNamespace(ctx, "other-tenant")
		makeImage(ctx, other, "private")
		intruder := newInstance(ns, "intruder", "small", "private")
		intruder.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, intruder)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, intruder)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := expectReadyReason(g, got.Status.Conditions, v1.ReasonImageNotFound)
			g.Expect(ready.Message).To(Equal("image private does not exist in namespace " + ns))
		}).WithContext(ctx).Should(Succeed())
	})
})

// expectImage waits until check passes on the Image and returns it.
func expectImage(ctx context.Context, ns, name string, check func(Gomega, *v1.Image)) *v1.Image {
	img := &v1.Image{}
	Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, img)).To(Succeed())
		check(g, img)
	}).WithContext(ctx).Should(Succeed())
	return img
}

// touch changes an object's labels, which makes its controller look at it again.
func touch(ctx context.Context, obj client.Object) {
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels["touched"] = time.Now().Format("150405.000000")
	obj.SetLabels(labels)
	Expect(k8s.Patch(ctx, obj, patch)).To(Succeed())
}

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
