package controllers

import (
	"context"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/test/gitops"
)

var _ = Describe("Migration controller", Ordered, func() {
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
		inst = createOnNodeA(ctx, "migration")
		waitForVMState(ctx, inst, v1.VMStateActive)
	})

	migration := func(name string, spec v1.MigrationSpec) *v1.Migration {
		return &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: name}, Spec: spec}
	}

	// expectFailed waits until the migration failed with reason, and checks how it says so.
	expectFailed := func(ctx context.Context, mig *v1.Migration, reason string) *v1.Migration {
		got := &v1.Migration{}
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(mig), got)).To(Succeed())
			g.Expect(got.Status.Phase).To(Equal(v1.MigrationFailed))
		}).WithContext(ctx).Should(Succeed())
		Expect(got.Status.Reason).To(Equal(reason), got.Status.Message)
		Expect(got.Status.Message).NotTo(BeEmpty())
		Expect(got.Status.CompletionTime).NotTo(BeNil())
		stalled := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionStalled)
		Expect(stalled).NotTo(BeNil())
		Expect(stalled.Status).To(Equal(metav1.ConditionTrue))
		Expect(stalled.Reason).To(Equal(reason))
		Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeFalse())
		expectGitOpsHealth(got, gitops.Degraded, status.FailedStatus)
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(mig), got)).To(Succeed())
			g.Expect(got.Finalizers).To(BeEmpty())
		}).WithContext(ctx).Should(Succeed(), "a finished migration holds nothing back")
		return got
	}

	// expectUnmoved checks that the instance rests where it was, as it was.
	expectUnmoved := func(ctx context.Context) {
		Consistently(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(got.Status.TaskState).To(BeEmpty())
			g.Expect(got.Status.NodeName).To(Equal("node-a"))
		}).WithContext(ctx).WithTimeout(500 * time.Millisecond).Should(Succeed())
	}

	It("refuses a migration of an instance that does not exist", func(ctx SpecContext) {
		mig := migration("ghost", v1.MigrationSpec{InstanceName: "no-such", Type: v1.MigrationLive})
		Expect(k8s.Create(ctx, mig)).To(Succeed())
		expectFailed(ctx, mig, ReasonInstanceNotFound)
	})

	It("refuses a move to the node the instance is on", func(ctx SpecContext) {
		mig := migration("stay", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationLive, TargetNode: "node-a"})
		Expect(k8s.Create(ctx, mig)).To(Succeed())
		expectFailed(ctx, mig, ReasonInvalidTarget)
		expectUnmoved(ctx)
	})

	It("refuses a second migration of the instance while the first is not over, and fails one that no node fits", func(ctx SpecContext) {
		// The instance is busy with a soft reboot its guest ignores, so the first migration waits
		// (Pending) for it: the second then meets a first that is surely not over. (Without it
		// the first could fail before the controller saw the second, which would then be
		// served in its turn.)
		fakeDriver.SetIgnoreACPI(true)
		DeferCleanup(func() { fakeDriver.SetIgnoreACPI(false) })
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootSoft, RequestedAt: microNow()}
		})
		Eventually(func() (v1.TaskState, error) {
			cur, err := get(ctx, inst)()
			return cur.Status.TaskState, err
		}).WithContext(ctx).Should(Equal(v1.TaskStateRebooting))
		first := migration("first", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationLive})
		second := migration("second", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationLive})
		Expect(k8s.Create(ctx, first)).To(Succeed())
		Eventually(func(g Gomega) {
			got := &v1.Migration{}
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(first), got)).To(Succeed())
			g.Expect(got.Status.Phase).To(Equal(v1.MigrationPending))
		}).WithContext(ctx).Should(Succeed())
		Expect(k8s.Create(ctx, second)).To(Succeed())
		expectFailed(ctx, second, ReasonMigrationInProgress)
		// A hard reboot ends the soft one; then the first is served.
		fakeDriver.SetIgnoreACPI(false)
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: microNow()}
		})
		// Only node-a matches the instance's node selector: nowhere else to go, as Nova says.
		got := expectFailed(ctx, first, v1.ReasonNoValidHost)
		Expect(got.Status.Message).To(ContainSubstring("no valid host"))
		expectUnmoved(ctx)
		cur := current(ctx, inst)
		Expect(cur.Status.MigrationRequest).NotTo(BeNil())
		Expect(cur.Status.MigrationRequest.Name).To(Equal("first"))
		Expect(cur.Status.MigrationRequest.Result).To(Equal(v1.RequestRefused))
	})

	It("refuses a migration of a locked instance unless an administrator overrides the lock", func(ctx SpecContext) {
		patchInstance(ctx, inst, `{"spec":{"locked":true}}`)
		mig := migration("locked", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationLive})
		Expect(k8s.Create(ctx, mig)).To(Succeed())
		expectFailed(ctx, mig, v1.ReasonLocked)
		override := migration("override", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationLive, OverrideLock: true})
		Expect(k8s.Create(ctx, override)).To(Succeed())
		// Past the lock, the scheduler has its say.
		expectFailed(ctx, override, v1.ReasonNoValidHost)
		patchInstance(ctx, inst, `{"spec":{"locked":false}}`)
	})

	It("refuses a cold migration that no other node has room for, the instance left where it runs", func(ctx SpecContext) {
		mig := migration("cold", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationCold})
		Expect(k8s.Create(ctx, mig)).To(Succeed())
		got := expectFailed(ctx, mig, v1.ReasonNoValidHost)
		Expect(got.Status.Message).To(ContainSubstring("ExcludedHostFilter rejected 1"), "never the node it is on")
		expectUnmoved(ctx)
	})

	It("refuses to evacuate an instance whose node is not fenced", func(ctx SpecContext) {
		mig := migration("evacuate", v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationEvacuate})
		Expect(k8s.Create(ctx, mig)).To(Succeed())
		got := expectFailed(ctx, mig, ReasonNotFenced)
		Expect(got.Status.Message).To(ContainSubstring("node-a is not fenced"))
		expectUnmoved(ctx)
	})

	It("lets a finished migration be deleted", func(ctx SpecContext) {
		mig := migration("stay", v1.MigrationSpec{})
		Expect(k8s.Delete(ctx, mig)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(mig), &v1.Migration{}))
		}).WithContext(ctx).Should(BeTrue())
	})
})

// A Migration whose move the instance's node still carries out waits for the move to end when
// deleted; when that node is down nothing can end it, and the Migration goes (the instance
// keeps its task for the node to settle).
func TestAMigrationWhoseNodeIsDownCanBeDeleted(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		node string
		gone bool
	}{{"down", true}, {"up", false}} {
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "move", UID: "mig-uid",
			Finalizers: []string{v1.FinalizerMigration}, DeletionTimestamp: &metav1.Time{Time: time.Now()}},
			Spec: v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive}}
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}, Status: v1.InstanceStatus{NodeName: tc.node,
			Task: &v1.Task{ID: 3, Action: v1.ActionLiveMigrate, Migration: &v1.MigrationTask{UID: "mig-uid", TargetNode: "elsewhere"}}}}
		down := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "down"}, Status: v1.HypervisorStatus{State: v1.HypervisorDown,
			Conditions: []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1.ReasonHeartbeatLapsed}}}}
		up := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "up"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
		c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(mig, inst, down, up).Build()
		r := &MigrationReconciler{Client: c}
		if _, err := r.reconcileDelete(ctx, mig); err != nil {
			t.Fatal(err)
		}
		err := c.Get(ctx, client.ObjectKeyFromObject(mig), &v1.Migration{})
		if gone := apierrors.IsNotFound(err); gone != tc.gone {
			t.Errorf("instance on node %s: Migration gone %v (%v), want %v", tc.node, gone, err, tc.gone)
		}
	}
}
