package novacli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestSnapshotCreatesASnapshotNamedAfterTheImage(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	if err := h.run("snapshot", "web", "web-golden", "--delete-image-with-snapshot"); err != nil {
		t.Fatal(err)
	}
	c, _ := h.opts.newClient()
	snap := &v1.Snapshot{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: "web-golden"}, snap); err != nil {
		t.Fatal(err)
	}
	if snap.Spec.InstanceName != "web" || !snap.Spec.DeleteImageWithSnapshot {
		t.Errorf("created %+v", snap.Spec)
	}
	if !strings.Contains(h.out.String(), "snapshot.compute.kubenova.io/web-golden created (image web-golden)") {
		t.Errorf("printed %q", h.out)
	}

	if err := h.run("snapshot", "web"); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: "web-snapshot-20260314-150926"}, snap); err != nil {
		t.Errorf("no snapshot named after the instance and the time: %v", err)
	}
	if err := h.run("snapshot", "nothing"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("a snapshot of a missing instance: %v", err)
	}
}

func TestWaitForSnapshotFollowsThePhasesAndFailsWithTheReason(t *testing.T) {
	phases := []v1.SnapshotPhase{v1.SnapshotPending, v1.SnapshotSnapshotting, v1.SnapshotUploading, v1.SnapshotSucceeded}
	snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Name: "s"}}
	reads := 0
	get := func(context.Context) error {
		snap.Status.Phase = phases[min(reads, len(phases)-1)]
		reads++
		return nil
	}
	var out bytes.Buffer
	if err := waitForSnapshot(context.Background(), &out, snap, get, time.Millisecond, time.Minute); err != nil {
		t.Fatal(err)
	}
	if out.String() != "s: Pending\ns: Snapshotting\ns: Uploading\ns: Succeeded\n" {
		t.Errorf("printed %q", out.String())
	}
	failed := func(context.Context) error {
		snap.Status = v1.SnapshotStatus{Phase: v1.SnapshotFailed, Message: "cannot snapshot: the instance is locked; unlock it first",
			Conditions: []metav1.Condition{{Type: v1.ConditionStalled, Status: metav1.ConditionTrue, Reason: v1.ReasonLocked,
				Message: "cannot snapshot: the instance is locked; unlock it first"}}}
		return nil
	}
	err := waitForSnapshot(context.Background(), &out, snap, failed, time.Millisecond, time.Minute)
	if err == nil || err.Error() != "Locked: cannot snapshot: the instance is locked; unlock it first" {
		t.Fatalf("a failed snapshot: %v", err)
	}
}
