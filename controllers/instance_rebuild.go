package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// Rebuild and rescue: the two actions that boot the instance from an image other than its own
// disk (spec.image after a change or a spec.rebuildRequest, and the rescue image). They are
// apart because each must first find its image Available before its task starts.

// serveRebuildRequest answers a new spec.rebuildRequest exactly once: it starts a rebuild onto
// spec.image, or waits for the task in flight (or for the image) to end, or acknowledges the
// request as refused or ignored. It says whether it started a task.
func (r *InstanceReconciler) serveRebuildRequest(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	req := inst.Spec.RebuildRequest
	if req == nil || acknowledged(inst.Status.RebuildRequest, req.RequestedAt) {
		return false, nil
	}
	ack := &v1.RequestStatus{RequestedAt: req.RequestedAt}
	if predates(inst, req.RequestedAt) {
		ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
		ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
		inst.Status.RebuildRequest = ack
		return false, nil
	}
	if inst.Status.VMState == v1.VMStateBuilding {
		return false, nil // served once the launch is done
	}
	refusal := r.check(inst, v1.ActionRebuild)
	switch {
	case refusal == nil:
		started, err := r.startRebuild(ctx, inst, st)
		if err != nil || !started {
			return false, err
		}
		ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
		inst.Status.RebuildRequest = ack
		return true, nil
	case refusal.Reason == v1.ReasonTaskInProgress:
		return false, nil
	default:
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.RebuildRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(v1.ActionRebuild), "%s", refusal.Message)
		return false, nil
	}
}

// startRebuild gives the instance a Rebuild task onto spec.image, once that image is Available
// and fits the flavor; otherwise it records why it waits. It says whether it started the task.
func (r *InstanceReconciler) startRebuild(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	image, notReady, err := r.availableImage(ctx, inst.Namespace, inst.Spec.Image)
	if err != nil {
		return false, err
	}
	if notReady != nil {
		notReady.Action = v1.ActionRebuild
		if notReady.Reason == v1.ReasonImageError {
			st.refusal = notReady
		} else {
			st.waiting = notReady
		}
		return false, nil
	}
	if f := inst.Status.Flavor; f != nil {
		flavor := &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: f.Name}, Spec: f.FlavorSpec}
		if msg := flavorTooSmall(flavor, image); msg != "" {
			st.refusal = &lifecycle.Refusal{Action: v1.ActionRebuild, Reason: v1.ReasonFlavorTooSmall, Message: msg}
			return false, nil
		}
	}
	// A rebuild makes the guest's config drive anew, from the spec as it is now.
	if missing, err := r.copyUserData(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return false, err
	}
	r.startTask(st, inst, v1.ActionRebuild)
	inst.Status.Task.Image = image.AppliedImage
	return true, nil
}

// startRescue gives the instance a Rescue task once its rescue image is Available: the one
// spec.rescue names, else the cluster's default rescue image, else the instance's own image
// (Nova's default). Otherwise it records why it waits.
func (r *InstanceReconciler) startRescue(ctx context.Context, inst *v1.Instance, st *reconcileState) error {
	ref := r.rescueImage(inst)
	image, notReady, err := r.availableImage(ctx, inst.Namespace, ref)
	if err != nil {
		return err
	}
	if notReady != nil {
		notReady.Action = v1.ActionRescue
		notReady.Message = "rescue image: " + notReady.Message
		if notReady.Reason == v1.ReasonImageError {
			st.refusal = notReady
		} else {
			st.waiting = notReady
		}
		return nil
	}
	r.startTask(st, inst, v1.ActionRescue)
	inst.Status.Task.Image = image.AppliedImage
	return nil
}

// rescueImage is the image a rescue of the instance boots.
func (r *InstanceReconciler) rescueImage(inst *v1.Instance) v1.ImageReference {
	switch {
	case inst.Spec.Rescue != nil && inst.Spec.Rescue.Image != nil:
		return *inst.Spec.Rescue.Image
	case r.DefaultRescueImage != "":
		return v1.ImageReference{Kind: v1.KindClusterImage, Name: r.DefaultRescueImage}
	case inst.Status.Image != nil:
		return inst.Status.Image.ImageReference
	}
	return inst.Spec.Image
}
