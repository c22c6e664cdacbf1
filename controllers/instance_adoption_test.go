package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
)

// An instance waits for its quarantined disk for a while, then says it is stuck; a disk
// reported at any time is taken, the newest of its namespace and name.
func TestChooseAdoptedDisk(t *testing.T) {
	created := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "web", CreationTimestamp: metav1.NewTime(created)},
		Spec: v1.InstanceSpec{AdoptQuarantinedDisk: true}}
	other := v1.QuarantinedInstance{UID: "00000000-0000-4000-8000-000000000001", Namespace: "team-b", Name: "web", Since: metav1.NewTime(created)}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(
		&v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: v1.HypervisorStatus{Quarantined: []v1.QuarantinedInstance{other}}}).Build()
	now := created.Add(time.Minute)
	r := &InstanceReconciler{Client: c, Now: func() time.Time { return now }}

	st := &reconcileState{}
	if ok, err := r.chooseAdoptedDisk(context.Background(), inst, st); err != nil || ok {
		t.Fatalf("no disk of team-a/web: ok %v, err %v", ok, err)
	}
	if st.waiting == nil || st.waiting.Reason != v1.ReasonQuarantinedDiskNotFound || st.refusal != nil {
		t.Errorf("within the wait: waiting %+v, refusal %+v", st.waiting, st.refusal)
	}
	now = created.Add(adoptionWait + time.Second)
	st = &reconcileState{}
	if ok, _ := r.chooseAdoptedDisk(context.Background(), inst, st); ok || st.refusal == nil || st.refusal.Reason != v1.ReasonQuarantinedDiskNotFound {
		t.Errorf("past the wait: ok %v, refusal %+v", ok, st.refusal)
	}

	older := v1.QuarantinedInstance{UID: "00000000-0000-4000-8000-000000000002", Namespace: "team-a", Name: "web", Since: metav1.NewTime(created.Add(-time.Hour))}
	newer := v1.QuarantinedInstance{UID: "00000000-0000-4000-8000-000000000003", Namespace: "team-a", Name: "web", Since: metav1.NewTime(created.Add(-time.Minute))}
	hvs := []v1.Hypervisor{{Status: v1.HypervisorStatus{Quarantined: []v1.QuarantinedInstance{other, older}}},
		{Status: v1.HypervisorStatus{Quarantined: []v1.QuarantinedInstance{newer}}}}
	if got := newestQuarantined(hvs, "team-a", "web"); got == nil || got.UID != newer.UID {
		t.Errorf("newest of team-a/web: %+v", got)
	}
	if got := newestQuarantined(hvs, "team-c", "web"); got != nil {
		t.Errorf("another namespace's disk was offered: %+v", got)
	}
}
