package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Unit tests of single reconcile steps, without an API server.

// TestRescueImagePrecedence: spec.rescue.image, else the manager's default ClusterImage, else
// the instance's own image (Nova's default).
func TestRescueImagePrecedence(t *testing.T) {
	own := &v1.AppliedImage{ImageReference: v1.ImageReference{Kind: v1.KindImage, Name: "own"}}
	named := &v1.ImageReference{Kind: v1.KindImage, Name: "tools"}
	for _, c := range []struct {
		name     string
		rescue   *v1.RescueSpec
		fallback string
		want     v1.ImageReference
	}{
		{"spec names one", &v1.RescueSpec{Image: named}, "cluster-rescue", *named},
		{"the cluster default", &v1.RescueSpec{}, "cluster-rescue", v1.ImageReference{Kind: v1.KindClusterImage, Name: "cluster-rescue"}},
		{"the instance's own", &v1.RescueSpec{}, "", own.ImageReference},
	} {
		r := &InstanceReconciler{DefaultRescueImage: c.fallback}
		inst := &v1.Instance{Spec: v1.InstanceSpec{Rescue: c.rescue}, Status: v1.InstanceStatus{Image: own}}
		if got := r.rescueImage(inst); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestOffloadWaitsForTheShelvedOffloadTime: an instance shelved ten minutes ago, with an
// offload time of an hour, is looked at again in fifty minutes; a negative time never offloads.
func TestOffloadWaitsForTheShelvedOffloadTime(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	shelvedAt := metav1.NewTime(now.Add(-10 * time.Minute))
	inst := &v1.Instance{Spec: v1.InstanceSpec{PowerState: v1.DesiredShelved},
		Status: v1.InstanceStatus{VMState: v1.VMStateShelved, ShelvedAt: &shelvedAt,
			ShelvedImage: &v1.ImageReference{Kind: v1.KindImage, Name: "web-shelved"}}}
	r := &InstanceReconciler{ShelvedOffloadTime: time.Hour, Now: func() time.Time { return now }}
	res, started, err := r.serveOffload(context.Background(), inst, &reconcileState{})
	if err != nil || started || res == nil || res.RequeueAfter != 50*time.Minute {
		t.Fatalf("serveOffload = %+v, %v, %v; want a look again in 50m", res, started, err)
	}
	r.ShelvedOffloadTime = -1
	if res, started, err := r.serveOffload(context.Background(), inst, &reconcileState{}); res != nil || started || err != nil {
		t.Fatalf("a negative offload time: %+v, %v, %v; want nothing", res, started, err)
	}
}
