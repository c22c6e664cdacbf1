package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// Snapshots: serving the Snapshot objects that name the instance, one at a time, and
// acknowledging them in status.snapshotRequest for the Snapshot controller. It is apart
// because a Snapshot, like a Migration, is an object of its own, not a field of the spec.

// serveSnapshot starts the oldest Snapshot of the instance that waits, once the instance is
// idle, and acknowledges it in status.snapshotRequest, where the Snapshot controller reads what
// became of it; a Snapshot the state machine refuses is acknowledged as Refused, which fails
// it. One Snapshot is served at a time, and the next only once the Snapshot controller has read
// the outcome of the last (its Snapshot is finished or gone). It says whether it started a task.
func (r *InstanceReconciler) serveSnapshot(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	if inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return false, nil
	}
	var list v1.SnapshotList
	if err := r.List(ctx, &list, client.InNamespace(inst.Namespace), client.MatchingFields{indexSnapshotInstance: inst.Name}); err != nil {
		return false, err
	}
	last := inst.Status.SnapshotRequest
	var next *v1.Snapshot
	for i := range list.Items {
		snap := &list.Items[i]
		if last != nil && last.UID == string(snap.UID) {
			if !snapshotFinal(snap) {
				return false, nil // its outcome is not read yet
			}
			continue
		}
		if snapshotFinal(snap) || snap.Status.ImageUID == "" || !snap.DeletionTimestamp.IsZero() {
			continue
		}
		if next == nil || snap.CreationTimestamp.Before(&next.CreationTimestamp) ||
			(snap.CreationTimestamp.Equal(&next.CreationTimestamp) && snap.Name < next.Name) {
			next = snap
		}
	}
	if next == nil {
		return false, nil
	}
	ack := &v1.ObjectRequestStatus{Name: next.Name, UID: string(next.UID)}
	refusal := r.check(inst, v1.ActionSnapshot)
	if refusal == nil && inst.Spec.Locked && !next.Spec.OverrideLock {
		// A Snapshot is not a change of the instance's spec, so the lock policy never saw it;
		// an administrator's Snapshot says so with spec.overrideLock, which only they may set.
		refusal = &lifecycle.Refusal{Action: v1.ActionSnapshot, Reason: v1.ReasonLocked,
			Message: "cannot snapshot: the instance is locked; unlock it first, or have an administrator snapshot it with spec.overrideLock"}
	}
	switch {
	case refusal == nil:
		r.startTask(st, inst, v1.ActionSnapshot)
		inst.Status.Task.Snapshot = &v1.SnapshotTask{Name: next.Name, ImageUID: next.Status.ImageUID}
		ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
		inst.Status.SnapshotRequest = ack
		return true, nil
	case refusal.Reason == v1.ReasonTaskInProgress:
		return false, nil
	default:
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.SnapshotRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(v1.ActionSnapshot), "snapshot %s: %s", next.Name, refusal.Message)
		return false, nil
	}
}
