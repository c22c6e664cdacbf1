package controllers

import (
	"context"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
)

// A lease that lapsed while the manager could not reach the API server is no evidence against
// its node: the node stays Up while contact is lost and for a lease duration and grace after it
// is back; past that, a lease still not renewed makes the node Down as before.
func TestALeaseThatLapsedWhileTheManagerWasCutOffIsNoEvidence(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	hv := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "sys", Name: v1.AgentLeaseName("node-a")},
		Spec: coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: now.Add(-time.Minute)}, LeaseDurationSeconds: ptr.To(int32(40))}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(hv, lease).WithStatusSubresource(&v1.Hypervisor{}).
		WithIndex(&v1.Instance{}, indexNode, func(o client.Object) []string { return []string{o.(*v1.Instance).Status.NodeName} }).Build()
	clock := func() time.Time { return now }
	contact := &APIContact{now: clock}
	r := &HypervisorReconciler{Client: c, LeaseNamespace: "sys", Grace: 10 * time.Second, Now: clock, Contact: contact}
	// The manager saw the renewal a minute ago, then lost the API server.
	r.renewals = map[string]renewal{"node-a": {renewTime: lease.Spec.RenewTime.Time, seenAt: now.Add(-time.Minute)}}
	state := func() v1.HypervisorState {
		t.Helper()
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: "node-a"}}); err != nil {
			t.Fatal(err)
		}
		got := &v1.Hypervisor{}
		if err := c.Get(ctx, client.ObjectKey{Name: "node-a"}, got); err != nil {
			t.Fatal(err)
		}
		return got.Status.State
	}

	contact.record(false)
	if s := state(); s != v1.HypervisorUp {
		t.Errorf("while the API server is out of reach: %s", s)
	}
	contact.record(true) // back now
	now = now.Add(30 * time.Second)
	if s := state(); s != v1.HypervisorUp {
		t.Errorf("30 s after contact came back (lease 40 s + grace 10 s): %s", s)
	}
	now = now.Add(21 * time.Second)
	if s := state(); s != v1.HypervisorDown {
		t.Errorf("a lease duration and grace after contact came back, still not renewed: %s", s)
	}

	// Without contact followed, the lease alone decides, as before.
	r.Contact = nil
	if _, ok := r.Contact.Since(); !ok {
		t.Error("an unfollowed contact counts as lost")
	}
}
