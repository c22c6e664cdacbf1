package controllers

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
)

// Deletion: terminating the instance on its node, or deleting it locally when the node is
// down, then releasing what it holds and its finalizer. It is apart because it runs instead of
// Reconcile's step list once the instance has a deletion timestamp.

// reconcileDelete terminates the instance on its node, then lets the object go. When the node
// is gone or down, it deletes locally as Nova does: the record goes at once and the returning
// agent removes the domain and disks of instances that no longer exist. As in Reconcile, its
// Events are sent once the write that goes with them has landed.
func (r *InstanceReconciler) reconcileDelete(ctx context.Context, inst *v1.Instance) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(inst, v1.FinalizerInstance) {
		return ctrl.Result{}, nil
	}
	st := &reconcileState{}
	if inst.Status.NodeName == "" {
		return ctrl.Result{}, r.releaseAndTell(ctx, inst, st)
	}
	if down, why, err := r.nodeDown(ctx, inst.Status.NodeName); err != nil {
		return ctrl.Result{}, err
	} else if down {
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNodeDown, "Terminate",
			"node %s is down (%s): deleted locally; when its agent returns it stops the guest and keeps the disks in quarantine", inst.Status.NodeName, why)
		return ctrl.Result{}, r.releaseAndTell(ctx, inst, st)
	}
	orig := inst.DeepCopy()
	task := inst.Status.Task
	if task == nil || task.Action != v1.ActionTerminate {
		r.startTask(st, inst, v1.ActionTerminate)
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTerminating, "Terminate", "terminating on node %s", inst.Status.NodeName)
		return kube.RetryIfStale(ctrl.Result{}, r.sendAfter(st, r.patchStatus(ctx, orig, inst)))
	}
	report := inst.Status.AgentReport
	if report == nil || report.TaskID != task.ID {
		// The agent is at it. Come back now and then in case its node goes down meanwhile.
		return ctrl.Result{RequeueAfter: 30 * time.Second}, nil
	}
	if report.TaskResult == v1.TaskFailed {
		// Keep the object so nothing is left behind unseen, and give the agent a new terminate
		// task (a new ID) once the retry interval has passed since the failed one started.
		retry := r.TerminateRetry
		if retry == 0 {
			retry = 30 * time.Second
		}
		if wait := task.StartedAt.Add(retry).Sub(r.now()); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonTaskFailed, "Terminate", "terminate failed on %s: %s; trying again", report.NodeName, report.Message)
		r.observeOperation(st, task, false)
		r.startTask(st, inst, v1.ActionTerminate)
		return kube.RetryIfStale(ctrl.Result{}, r.sendAfter(st, r.patchStatus(ctx, orig, inst)))
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTerminated, "Terminate", "domain and disks removed from node %s", report.NodeName)
	r.observeOperation(st, task, true)
	return ctrl.Result{}, r.releaseAndTell(ctx, inst, st)
}

// release drops the instance's claim, its shelved image (the garbage collector would too, as
// its owner goes), the copy of its disk a resize left in the image store, and its finalizer.
func (r *InstanceReconciler) release(ctx context.Context, inst *v1.Instance) error {
	if inst.Status.ShelvedImage != nil {
		if err := r.deleteShelvedImage(ctx, inst); err != nil {
			return err
		}
	}
	r.deleteTransfer(ctx, inst)
	if err := r.deleteUserDataCopy(ctx, inst); err != nil {
		return err
	}
	r.userDataChecked.Delete(inst.UID)
	r.Placement.Release(inst.UID)
	r.reservationWaits.Delete(inst.UID)
	r.attempts.forget(inst.UID)
	if controllerutil.RemoveFinalizer(inst, v1.FinalizerInstance) {
		if err := r.Update(ctx, inst); apierrors.IsNotFound(err) {
			return errAlreadyReleased
		} else if err != nil {
			return err
		}
	}
	return nil
}

// errAlreadyReleased: another reconcile, on fresher data, released the instance first.
var errAlreadyReleased = errors.New("the instance was released already")

// releaseAndTell releases the instance, and sends the reconcile's Events and metrics only if
// its own write removed the finalizer: a reconcile of a stale copy tells nothing twice.
func (r *InstanceReconciler) releaseAndTell(ctx context.Context, inst *v1.Instance, st *reconcileState) error {
	err := r.release(ctx, inst)
	if errors.Is(err, errAlreadyReleased) {
		return nil
	}
	return r.sendAfter(st, err)
}
