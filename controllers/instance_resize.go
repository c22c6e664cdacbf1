package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// A resize (a new spec.flavor) and a cold migration (a Migration of type Cold) are one move,
// as in Nova: the source powers the guest off and sets its disk aside (uploading a copy to the
// image store when the target does not share its storage), then the target builds the disk
// anew from that copy, sized for the new flavor, and boots it. The instance then waits in
// Resized, its context in status.resize, until a confirmation deletes the source's copy or a
// revert boots the source's copy again with the old flavor. See docs/design.md.

// Reasons of resizes.
const (
	// ReasonResizeReverted: spec.flavor names a flavor whose resize was reverted.
	ReasonResizeReverted = "ResizeReverted"
	// ReasonResized: the instance waits in Resized for a confirmation or a revert.
	ReasonResized = "Resized"
	// ReasonConfirmed: a resize or cold migration was confirmed.
	ReasonConfirmed = "Confirmed"
	// ReasonReverted: a resize or cold migration was reverted.
	ReasonReverted = "Reverted"
	// ReasonRollingBack: a resize that failed halfway goes back to its source.
	ReasonRollingBack = "RollingBack"
)

// startSpecResize starts the resize spec.flavor asks for, once the flavor exists and fits the
// instance; otherwise it records why not (the instance stays as it is). It says whether it
// started the task.
func (r *InstanceReconciler) startSpecResize(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	flavor := &v1.Flavor{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Spec.Flavor}, flavor); apierrors.IsNotFound(err) {
		st.waiting = &lifecycle.Refusal{Action: v1.ActionResize, Reason: v1.ReasonFlavorNotFound,
			Message: fmt.Sprintf("flavor %q does not exist; create it or change spec.flavor back to %s", inst.Spec.Flavor, inst.Status.Flavor.Name)}
		return false, nil
	} else if err != nil {
		return false, err
	}
	if msg := r.resizeMisfit(ctx, inst, flavor); msg != "" {
		st.refusal = &lifecycle.Refusal{Action: v1.ActionResize, Reason: v1.ReasonFlavorTooSmall, Message: msg}
		return false, nil
	}
	if exceeded, err := r.resizeQuotaExceeded(ctx, inst, flavor.Spec); err != nil || exceeded != nil {
		st.waiting = exceeded // a quota's change wakes it
		return false, err
	}
	applied := v1.AppliedFlavor{Name: flavor.Name, FlavorSpec: flavor.Spec}
	plan, refusal, err := r.planResize(ctx, inst, v1.ActionResize, applied, "")
	if err != nil {
		return false, err
	}
	if refusal != nil {
		if refusal.Reason == v1.ReasonNoValidHost {
			st.waiting = refusal // room may free up: the instance waits, as a launch does
		} else {
			st.refusal = refusal
		}
		return false, nil
	}
	r.beginResize(inst, st, v1.ActionResize, plan)
	return true, nil
}

// resizeMisfit says why an instance cannot take a flavor, or "": Nova refuses a smaller root
// disk (FlavorDiskSmallerThanCurrent), and a flavor too small for the instance's image.
func (r *InstanceReconciler) resizeMisfit(ctx context.Context, inst *v1.Instance, flavor *v1.Flavor) string {
	if cur := inst.Status.Flavor; cur != nil && flavor.Spec.DiskGiB < cur.DiskGiB {
		return fmt.Sprintf("flavor %s has a %d GiB root disk, smaller than the %d GiB of flavor %s: a root disk cannot shrink", flavor.Name, flavor.Spec.DiskGiB, cur.DiskGiB, cur.Name)
	}
	if applied := inst.Status.Image; applied != nil {
		// An image that is gone no longer constrains the flavor: the disk exists.
		if img, notReady, err := r.availableImage(ctx, inst.Namespace, applied.ImageReference); err == nil && notReady == nil {
			return flavorTooSmall(flavor, img)
		}
	}
	return ""
}

// planResize chooses the target of a resize or cold migration and how its disk gets there. A
// resize stays on its node when the manager allows it (Nova's allow_resize_to_same_host) and the
// node has room for both flavors at once, as Nova's placement needs; otherwise the scheduler
// chooses among the other nodes (for a cold migration, or the Migration's target node). The
// target's room is claimed; the caller starts the task or releases the claim.
func (r *InstanceReconciler) planResize(ctx context.Context, inst *v1.Instance, action v1.Action, flavor v1.AppliedFlavor, host string) (*v1.ResizeStatus, *lifecycle.Refusal, error) {
	refuse := func(reason, format string, args ...any) (*v1.ResizeStatus, *lifecycle.Refusal, error) {
		return nil, &lifecycle.Refusal{Action: action, Reason: reason, Message: fmt.Sprintf(format, args...)}, nil
	}
	if inst.Status.Resize != nil {
		return refuse(v1.ReasonInvalidState, "a %s of the instance is not over yet (status.resize)", inst.Status.Resize.Action)
	}
	sourceNode := inst.Status.NodeName
	source := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: sourceNode}, source); apierrors.IsNotFound(err) {
		return refuse(v1.ReasonNodeDown, "the instance's node %s has no Hypervisor", sourceNode)
	} else if err != nil {
		return nil, nil, err
	}
	if source.Status.State != v1.HypervisorUp {
		return refuse(v1.ReasonNodeDown, "node %s is down: the move needs its agent to power the guest off and hand over its disk", sourceNode)
	}
	request := scheduler.Request{
		Resources:        scheduler.FlavorResources(flavor.FlavorSpec),
		NodeSelector:     inst.Spec.NodeSelector,
		AvailabilityZone: inst.Spec.AvailabilityZone,
		Networks:         scheduler.NetworksOf(inst),
	}
	target := ""
	var placeErr error
	if action == v1.ActionResize && r.AllowResizeToSameHost {
		// The node's own use counts the old flavor: both must fit, as in Nova.
		sameNode := request
		sameNode.Host = sourceNode
		target, placeErr = r.place(ctx, inst, sameNode)
	}
	if target == "" {
		request.Exclude, request.Host = []string{sourceNode}, host
		target, placeErr = r.place(ctx, inst, request)
	}
	if placeErr != nil {
		var nvh *scheduler.NoValidHost
		if errors.As(placeErr, &nvh) {
			metrics.CountNoValidHost(nvh.Blamed())
			return refuse(v1.ReasonNoValidHost, "%s", nvh.Error())
		}
		return nil, nil, placeErr
	}
	plan := &v1.ResizeStatus{Action: action, SourceNode: sourceNode, TargetNode: target, OldFlavor: *inst.Status.Flavor.DeepCopy(),
		Flavor: flavor, PreviousVMState: inst.Status.VMState, DiskTransfer: v1.TransferSameNode, StartedAt: metav1.NewTime(r.now())}
	if target == sourceNode {
		return plan, nil, nil
	}
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: target}, hv); err != nil {
		r.Placement.Release(inst.UID)
		return nil, nil, err
	}
	s, t := source.Status, hv.Status
	plan.DiskTransfer = v1.TransferImageStore
	if s.StorageID != "" && s.StorageID == t.StorageID && s.StorageShared && t.StorageShared {
		plan.DiskTransfer = v1.TransferSharedStorage
	}
	// Anything else goes through the image store: the target makes a disk of its own from
	// the copy, which is safe even between nodes that share storage without saying so (the
	// source's disk is set aside under its own name first).
	return plan, nil, nil
}

// beginResize gives the instance its Resize or Migrate task with the plan as status.resize:
// the source's agent acts first (task state ResizeMigrating).
func (r *InstanceReconciler) beginResize(inst *v1.Instance, st *reconcileState, action v1.Action, plan *v1.ResizeStatus) {
	r.startTask(st, inst, action)
	inst.Status.TaskState = v1.TaskStateResizeMigrating
	plan.TaskID = inst.Status.Task.ID
	inst.Status.Resize = plan
	where := "on the same node"
	if plan.TargetNode != plan.SourceNode {
		where = fmt.Sprintf("from %s to %s, the disk through %s", plan.SourceNode, plan.TargetNode, plan.DiskTransfer)
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, string(action), "%s from flavor %s to %s %s",
		action, plan.OldFlavor.Name, plan.Flavor.Name, where)
}

// collectResize reads the agents' answers to the parts of a resize, a confirmation and a
// revert that are not the last: the source that handed over its disk, the target that removed
// its copy for a revert; status.nodeName then moves to the node that acts next. A confirmation
// on two nodes is answered by the source, in status.peerReport. It says whether it ended the
// task's step itself (the generic collection must not look then).
func (r *InstanceReconciler) collectResize(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	task, rs := inst.Status.Task, inst.Status.Resize
	if task == nil || rs == nil {
		return false, nil
	}
	rep := inst.Status.AgentReport
	stepDone := func(node, step string) bool {
		return rep != nil && rep.NodeName == node && rep.StepTaskID == task.ID && rep.Step == step && rep.TaskID != task.ID
	}
	switch task.Action {
	case v1.ActionResize, v1.ActionMigrate:
		if inst.Status.TaskState == v1.TaskStateResizeFinish || !stepDone(rs.SourceNode, v1.StepDiskSent) {
			return false, nil
		}
		if rs.DiskTransfer == v1.TransferImageStore {
			// The key is the manager's to say: an agent must not point the target (or the
			// cleanup) at another object of the image store.
			if key := v1.ResizeTransferKey(inst.UID, rs.TaskID); rep.Transfer == nil || rep.Transfer.UID != key || rep.Transfer.SHA256 == "" {
				r.finishTask(ctx, inst, st, false, rs.SourceNode, "the source reported no copy of the disk under "+key)
				return true, nil
			}
			rs.Transfer = &v1.AppliedImage{ImageReference: v1.ImageReference{Name: rep.Transfer.UID}, UID: rep.Transfer.UID,
				SHA256: rep.Transfer.SHA256, DiskFormat: v1.DiskFormatQCOW2}
		}
		inst.Status.NodeName, inst.Status.Flavor = rs.TargetNode, rs.Flavor.DeepCopy()
		inst.Status.TaskState = v1.TaskStateResizeFinish
		r.event(st, inst, corev1.EventTypeNormal, ReasonMigrating, string(task.Action), "node %s powered the guest off and handed its disk over; %s boots it with flavor %s",
			rs.SourceNode, rs.TargetNode, rs.Flavor.Name)
		return true, nil
	case v1.ActionConfirmResize:
		if rs.SourceNode == rs.TargetNode {
			return false, nil
		}
		if pr := inst.Status.PeerReport; pr != nil && pr.NodeName == rs.SourceNode && pr.TaskID == task.ID {
			r.finishTask(ctx, inst, st, pr.TaskResult == v1.TaskSucceeded, rs.SourceNode, pr.Message)
			return true, nil
		}
		if fenced, down, err := r.fencedAndDown(ctx, rs.SourceNode); err != nil || !fenced || !down {
			return true, err
		}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNodeDown, string(task.Action), "node %s is fenced and down: its copy of the disk stays there", rs.SourceNode)
		r.finishTask(ctx, inst, st, true, rs.SourceNode, "")
		return true, nil
	case v1.ActionRevertResize:
		if inst.Status.NodeName != rs.TargetNode || rs.SourceNode == rs.TargetNode {
			return false, nil
		}
		if !stepDone(rs.TargetNode, v1.StepRemoved) {
			fenced, down, err := r.fencedAndDown(ctx, rs.TargetNode)
			if err != nil || !fenced || !down {
				return false, err
			}
			// The target cannot run the guest any more: the source boots its own copy, as an
			// evacuation would.
			r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNodeDown, string(task.Action), "node %s is fenced and down: its copy stays there", rs.TargetNode)
		}
		inst.Status.NodeName, inst.Status.Flavor = rs.SourceNode, rs.OldFlavor.DeepCopy()
		r.event(st, inst, corev1.EventTypeNormal, ReasonMigrating, string(task.Action), "node %s removed the resized instance; %s boots its own copy with flavor %s",
			rs.TargetNode, rs.SourceNode, rs.OldFlavor.Name)
		return true, nil
	}
	return false, nil
}

// finishResizeTask records what a finished task of a resize changed. A resize that failed
// rolls back at once: a revert task boots the source's copy again.
func (r *InstanceReconciler) finishResizeTask(ctx context.Context, inst *v1.Instance, st *reconcileState, task *v1.Task, succeeded bool) {
	rs := inst.Status.Resize
	if rs == nil {
		return
	}
	now := metav1.NewTime(r.now())
	switch {
	case (task.Action == v1.ActionResize || task.Action == v1.ActionMigrate) && succeeded:
		rs.ResizedAt = &now
		inst.Status.Flavor = rs.Flavor.DeepCopy()
	case task.Action == v1.ActionResize || task.Action == v1.ActionMigrate:
		rs.RollingBack = true
		r.startRevert(st, inst)
		inst.Status.TaskState = v1.TaskStateResizeReverting
		r.event(st, inst, corev1.EventTypeWarning, ReasonRollingBack, string(task.Action), "%s failed: rolling back to node %s with flavor %s",
			task.Action, rs.SourceNode, rs.OldFlavor.Name)
	case task.Action == v1.ActionConfirmResize && succeeded:
		r.endResize(ctx, inst, ReasonConfirmed, fmt.Sprintf("confirmed: the instance stays on %s with flavor %s", rs.TargetNode, rs.Flavor.Name))
	case task.Action == v1.ActionRevertResize && succeeded:
		inst.Status.Flavor = rs.OldFlavor.DeepCopy()
		if rs.Action == v1.ActionResize && !rs.RollingBack {
			inst.Status.RevertedFlavor = rs.Flavor.Name
		}
		r.endResize(ctx, inst, ReasonReverted, fmt.Sprintf("reverted: the instance is back on %s with flavor %s", rs.SourceNode, rs.OldFlavor.Name))
	}
}

// endResize forgets a resize that was confirmed or reverted, tells its Migration, and deletes
// the copy of the disk it left in the image store.
func (r *InstanceReconciler) endResize(ctx context.Context, inst *v1.Instance, reason, message string) {
	rs := inst.Status.Resize
	if ack := inst.Status.MigrationRequest; ack != nil && rs.MigrationUID != "" && ack.UID == rs.MigrationUID && ack.Result == v1.RequestSucceeded {
		ack.Reason, ack.Message = reason, message
	}
	r.deleteTransfer(ctx, inst)
	inst.Status.Resize = nil
}

// deleteTransfer deletes the copy of the disk a resize through the image store uploaded (or
// may have uploaded: the key is known before the upload).
func (r *InstanceReconciler) deleteTransfer(ctx context.Context, inst *v1.Instance) {
	rs := inst.Status.Resize
	if rs == nil || rs.DiskTransfer != v1.TransferImageStore || r.Images == nil {
		return
	}
	key := v1.ResizeTransferKey(inst.UID, rs.TaskID)
	if err := r.Images.Delete(ctx, key); err != nil {
		// A leftover costs space only.
		log.FromContext(ctx).Error(err, "delete a resize's copy of the disk from the image store", "key", key)
	}
}

// startConfirm gives a Resized instance its ConfirmResize task: the source deletes its copy of
// the disk (the source's agent, as the task's peer, when the instance moved).
func (r *InstanceReconciler) startConfirm(st *reconcileState, inst *v1.Instance) {
	rs := inst.Status.Resize
	r.startTask(st, inst, v1.ActionConfirmResize)
	if rs.SourceNode != rs.TargetNode {
		inst.Status.Task.PeerNode = rs.SourceNode
	}
}

// startRevert gives the instance its RevertResize task: the target removes the resized
// instance, then the source boots its own copy with the old flavor. On one node, the one agent
// does both, with the old flavor at once.
func (r *InstanceReconciler) startRevert(st *reconcileState, inst *v1.Instance) {
	rs := inst.Status.Resize
	r.startTask(st, inst, v1.ActionRevertResize)
	if rs.SourceNode == rs.TargetNode || inst.Status.NodeName == rs.SourceNode {
		inst.Status.NodeName, inst.Status.Flavor = rs.SourceNode, rs.OldFlavor.DeepCopy()
	}
}

// serveResize answers a new spec.resizeRequest exactly once (confirm or revert a Resized
// instance, else refused or ignored), and confirms by itself a resize that waited
// --resize-confirm-window (Nova's resize_confirm_window). It says whether it started a task,
// and when to look again for the automatic confirmation.
func (r *InstanceReconciler) serveResize(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, bool, error) {
	if req := inst.Spec.ResizeRequest; req != nil && !acknowledged(inst.Status.ResizeRequest, req.RequestedAt) {
		action := v1.ActionConfirmResize
		if req.Decision == v1.ResizeRevert {
			action = v1.ActionRevertResize
		}
		ack := &v1.RequestStatus{RequestedAt: req.RequestedAt}
		refusal := r.check(inst, action)
		if refusal == nil && inst.Status.Resize != nil {
			var err error
			if refusal, err = r.lastCopyAtRisk(ctx, inst.Status.Resize, action); err != nil {
				return nil, false, err
			}
		}
		switch {
		case predates(inst, req.RequestedAt):
			ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
			ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
		case refusal != nil && refusal.Reason == v1.ReasonTaskInProgress:
			return nil, false, nil // served when the task in flight ends
		case refusal == nil && inst.Status.Resize == nil:
			refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonInvalidState, Message: "the instance is Resized but has no resize context to go by"}
			fallthrough
		case refusal != nil:
			ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
			r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(action), "%s", refusal.Message)
		default:
			if action == v1.ActionConfirmResize {
				r.startConfirm(st, inst)
			} else {
				r.startRevert(st, inst)
			}
			ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
			inst.Status.ResizeRequest = ack
			return nil, true, nil
		}
		inst.Status.ResizeRequest = ack
	}
	rs := inst.Status.Resize
	if r.ResizeConfirmWindow <= 0 || inst.Status.VMState != v1.VMStateResized || inst.Status.Task != nil || rs == nil || rs.ResizedAt == nil {
		return nil, false, nil
	}
	if f := inst.Status.Fault; f != nil && f.Action == v1.ActionConfirmResize {
		return nil, false, nil // a confirmation failed: people decide
	}
	if wait := rs.ResizedAt.Add(r.ResizeConfirmWindow).Sub(r.now()); wait > 0 {
		return &ctrl.Result{RequeueAfter: wait}, false, nil
	}
	// The source's copy may be the only one left to revert to when the target is down.
	target := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: rs.TargetNode}, target); err != nil || target.Status.State != v1.HypervisorUp {
		return &ctrl.Result{RequeueAfter: time.Minute}, false, client.IgnoreNotFound(err)
	}
	r.startConfirm(st, inst)
	r.event(st, inst, corev1.EventTypeNormal, ReasonConfirmed, string(v1.ActionConfirmResize), "confirming the resize by itself: it waited %s (--resize-confirm-window)",
		r.ResizeConfirmWindow.Round(time.Second))
	return nil, true, nil
}

// lastCopyAtRisk refuses, with NodeDown, a confirmation while the target is down and a revert
// while the source is: a confirmation deletes the source's copy of the disk, a revert the
// target's, and either would leave only the copy on a node that does not answer.
func (r *InstanceReconciler) lastCopyAtRisk(ctx context.Context, rs *v1.ResizeStatus, action v1.Action) (*lifecycle.Refusal, error) {
	if rs.SourceNode == rs.TargetNode {
		return nil, nil
	}
	needed, deleted, then := rs.TargetNode, rs.SourceNode, "or revert now"
	if action == v1.ActionRevertResize {
		needed, deleted, then = rs.SourceNode, rs.TargetNode, "or confirm now"
	}
	down, why, err := r.nodeDown(ctx, needed)
	if err != nil || !down {
		return nil, err
	}
	return &lifecycle.Refusal{Action: action, Reason: v1.ReasonNodeDown,
		Message: fmt.Sprintf("node %s is down (%s): the %s would delete the copy of the disk on %s and leave only the one on %s; ask again once %s is back, %s",
			needed, why, action, deleted, needed, needed, then)}, nil
}

// resizedWaiting says what a Resized instance waits for.
func resizedWaiting(inst *v1.Instance) *lifecycle.Refusal {
	rs := inst.Status.Resize
	if rs == nil || inst.Status.VMState != v1.VMStateResized {
		return nil
	}
	return &lifecycle.Refusal{Action: rs.Action, Reason: ReasonResized,
		Message: fmt.Sprintf("resized to flavor %s on %s: confirm (kubectl nova resize %s --confirm) or revert (--revert) with spec.resizeRequest",
			rs.Flavor.Name, rs.TargetNode, inst.Name)}
}

// resizeHold refuses every action but a revert and a terminate while an instance in Error
// still holds a resize's context: its disk may be set aside on the source, and only a revert
// knows where.
func resizeHold(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	rs := inst.Status.Resize
	if rs == nil || inst.Status.VMState != v1.VMStateError || action == v1.ActionRevertResize || action == v1.ActionTerminate {
		return nil
	}
	return &lifecycle.Refusal{Action: action, Reason: v1.ReasonInvalidState,
		Message: fmt.Sprintf("the %s from %s to %s failed halfway: revert it (kubectl nova resize %s --revert) before anything else", rs.Action, rs.SourceNode, rs.TargetNode, inst.Name)}
}
