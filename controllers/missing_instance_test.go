package controllers

import (
	"context"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// A GitOps sync applies objects in any order: a Snapshot or Migration that comes before its
// instance waits for it (reason InstanceNotFound, not failed) and then goes on.
var _ = Describe("Objects that arrive before their instance", func() {
	// expectWaitingForInstance checks that obj says it waits for its instance, not failed.
	expectWaitingForInstance := func(ctx context.Context, obj client.Object, conditions func() []metav1.Condition, phase func() string) {
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
			ready := meta.FindStatusCondition(conditions(), v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(ReasonInstanceNotFound))
			g.Expect(ready.Message).To(ContainSubstring("waiting for it until"))
			g.Expect(meta.IsStatusConditionTrue(conditions(), v1.ConditionStalled)).To(BeFalse())
		}).WithContext(ctx).Should(Succeed())
		Expect(phase()).NotTo(HaveSuffix("Failed"))
	}

	It("takes a snapshot of an instance created after it", func(ctx SpecContext) {
		ensureNodeA(ctx)
		ns := makeNamespace(ctx, "early-snapshot")
		makeImage(ctx, ns, "img")
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "early"}, Spec: v1.SnapshotSpec{InstanceName: "web"}}
		Expect(k8s.Create(ctx, snap)).To(Succeed())
		expectWaitingForInstance(ctx, snap, func() []metav1.Condition { return snap.Status.Conditions },
			func() string { return string(snap.Status.Phase) })

		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		expectSnapshotPhase(ctx, snap, v1.SnapshotSucceeded)
	})

	It("serves a migration of an instance created after it", func(ctx SpecContext) {
		ensureNodeA(ctx)
		ns := makeNamespace(ctx, "early-migration")
		makeImage(ctx, ns, "img")
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "early"},
			Spec: v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive}}
		Expect(k8s.Create(ctx, mig)).To(Succeed())
		expectWaitingForInstance(ctx, mig, func() []metav1.Condition { return mig.Status.Conditions },
			func() string { return string(mig.Status.Phase) })

		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		// Served now: only node-a fits the instance, so the scheduler has the last word.
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(mig), mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(v1.MigrationFailed))
			g.Expect(mig.Status.Reason).To(Equal(v1.ReasonNoValidHost))
		}).WithContext(ctx).Should(Succeed())
	})

	It("fails a snapshot whose instance never comes, once the wait is over", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "never")
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "of-nothing"}, Spec: v1.SnapshotSpec{InstanceName: "nothing"}}
		Expect(k8s.Create(ctx, snap)).To(Succeed())
		expectWaitingForInstance(ctx, snap, func() []metav1.Condition { return snap.Status.Conditions },
			func() string { return string(snap.Status.Phase) })
		expectSnapshotFailure(ctx, snap, ReasonInstanceNotFound, "waited 4s for it")
	})
})
