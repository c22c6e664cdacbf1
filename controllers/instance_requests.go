package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// Requests: serveRequests, the last step of Reconcile, which answers the spec's one-shot
// requests and starts the action that closes the gap between the spec and the vm state, with
// the acknowledgement, state-machine and task helpers every operation shares. The operations
// with more to them than a task (rebuild, shelve, snapshot, migration, resize) have files of
// their own.

// supportedActions are the actions the node agent of this version carries out; the rest are
// refused with NotSupported rather than left waiting.
var supportedActions = map[v1.Action]bool{
	v1.ActionLaunch: true, v1.ActionTerminate: true,
	v1.ActionStart: true, v1.ActionStop: true, v1.ActionReboot: true, v1.ActionHardReboot: true,
	v1.ActionPause: true, v1.ActionUnpause: true, v1.ActionSuspend: true, v1.ActionResume: true,
	v1.ActionSnapshot: true, v1.ActionRebuild: true, v1.ActionRescue: true, v1.ActionUnrescue: true,
	v1.ActionShelve: true, v1.ActionShelveOffload: true, v1.ActionUnshelve: true,
	v1.ActionLiveMigrate: true, v1.ActionEvacuate: true,
	v1.ActionResize: true, v1.ActionMigrate: true, v1.ActionConfirmResize: true, v1.ActionRevertResize: true,
}

// serveRequests starts what the spec asks for: first a one-shot reboot request (which may
// interrupt a task, as the table says), then the action that closes the gap between the spec
// and the vm state, if the state machine allows it; otherwise it records why not.
func (r *InstanceReconciler) serveRequests(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if r.serveReboot(inst, st) {
		return nil, nil
	}
	r.serveStartRequest(inst)
	if started, err := r.serveRebuildRequest(ctx, inst, st); err != nil || started {
		return nil, err
	}
	if started, err := r.serveSnapshot(ctx, inst, st); err != nil || started {
		return nil, err
	}
	if started, err := r.serveMigration(ctx, inst, st); err != nil || started {
		return nil, err
	}
	confirmLater, started, err := r.serveResize(ctx, inst, st)
	if err != nil || started {
		return nil, err
	}
	if inst.Status.RevertedFlavor != "" && inst.Spec.Flavor != inst.Status.RevertedFlavor {
		inst.Status.RevertedFlavor = "" // the spec moved on
	}
	if inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return nil, nil
	}
	if res, started, err := r.serveOffload(ctx, inst, st); err != nil || started || res != nil {
		return res, err
	}
	// The spec may ask for several changes at once (a new image and Running, say). The first
	// the state machine allows now starts; when none is allowed, the first one's refusal says
	// why, so that a power change that would make a rebuild possible is not held up by it.
	var first *lifecycle.Refusal
	held := false
	for _, action := range specActions(inst) {
		if hold := powerHold(inst, action); hold != nil {
			if first == nil {
				// The PowerStateChanged Event said so when the hypervisor made the change.
				first, held = hold, true
			}
			continue
		}
		refusal := r.refusalOf(inst, action)
		if refusal == nil {
			var err error
			switch action {
			case v1.ActionRebuild:
				_, err = r.startRebuild(ctx, inst, st)
			case v1.ActionRescue:
				err = r.startRescue(ctx, inst, st)
			case v1.ActionShelve:
				return r.startShelve(ctx, inst, st)
			case v1.ActionUnshelve:
				err = r.startUnshelve(ctx, inst, st)
			case v1.ActionResize:
				var started bool
				if started, err = r.startSpecResize(ctx, inst, st); err == nil && !started && st.refusal != nil {
					// Refused for good (a disk too small, say): a power change may still go on.
					if first == nil {
						first = st.refusal
					}
					st.refusal = nil
					continue
				}
			default:
				r.startTask(st, inst, action)
				return nil, nil
			}
			if err == nil && st.waiting != nil {
				// Some waits (a user data Secret, the default rescue image) have no watch to end them.
				return &ctrl.Result{RequeueAfter: userDataRetry}, nil
			}
			return nil, err
		}
		if first == nil {
			first = refusal
		}
	}
	if first == nil {
		st.waiting = resizedWaiting(inst)
		return confirmLater, nil
	}
	st.refusal = first
	// One Event per refusal, not one per reconcile: the Ready condition already says it.
	if ready := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady); !held && (ready == nil ||
		ready.Reason != first.Reason || ready.Message != first.Message) {
		r.event(st, inst, corev1.EventTypeWarning, first.Reason, string(first.Action), "%s", first.Message)
	}
	return nil, nil
}

// refusalOf says why a spec action may not start now, or nil when it may.
func (r *InstanceReconciler) refusalOf(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	refusal := r.check(inst, action)
	if refusal == nil && !supportedActions[action] {
		refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonNotSupported,
			Message: fmt.Sprintf("%s is not supported by this version of kubenova yet", action)}
	}
	if f := inst.Status.Fault; refusal == nil && f != nil && f.Action == action && f.ObservedGeneration == inst.Generation {
		// The same task for the same spec would fail the same way; wait for someone to act.
		refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonTaskFailed,
			Message: f.Message + "; change the spec to try again"}
	}
	if refusal == nil && action == v1.ActionResize && inst.Spec.Flavor == inst.Status.RevertedFlavor {
		refusal = &lifecycle.Refusal{Action: action, Reason: ReasonResizeReverted,
			Message: fmt.Sprintf("the resize to flavor %s was reverted; the instance keeps flavor %s: set spec.flavor to %s, or to another flavor and back, to resize again",
				inst.Spec.Flavor, inst.Status.Flavor.Name, inst.Status.Flavor.Name)}
	}
	if refusal != nil && refusal.Action == "" {
		refusal.Action = action
	}
	return refusal
}

// serveReboot answers a new spec.rebootRequest exactly once: it starts the reboot, or waits for
// the task in flight to end, or acknowledges the request as refused or ignored so that it never
// hides a later request. It says whether the instance is busy with the reboot (started now or
// waiting its turn), in which case nothing else is started.
func (r *InstanceReconciler) serveReboot(inst *v1.Instance, st *reconcileState) bool {
	req := inst.Spec.RebootRequest
	if req == nil || acknowledged(inst.Status.RebootRequest, req.RequestedAt) {
		return false
	}
	action := v1.ActionReboot
	if req.Type == v1.RebootHard {
		action = v1.ActionHardReboot
	}
	ack := &v1.RequestStatus{RequestedAt: req.RequestedAt}
	if predates(inst, req.RequestedAt) {
		ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
		ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
		inst.Status.RebootRequest = ack
		r.event(st, inst, corev1.EventTypeNormal, ack.Reason, string(action), "%s", ack.Message)
		return false
	}
	refusal := r.check(inst, action)
	switch {
	case refusal == nil:
		if task := inst.Status.Task; task != nil {
			r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskInProgress, string(action), "%s interrupts task %s", action, inst.Status.TaskState)
		}
		r.startTask(st, inst, action)
		ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
		inst.Status.RebootRequest = ack
		return true
	case refusal.Reason == v1.ReasonTaskInProgress:
		return true // served when the task in flight ends
	default:
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.RebootRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(action), "%s", refusal.Message)
		return false
	}
}

// finishObjectRequest records the outcome of the task that serves an accepted Snapshot or
// Migration.
func finishObjectRequest(ack *v1.ObjectRequestStatus, taskID int64, succeeded bool, message string) {
	if ack == nil || ack.Result != v1.RequestAccepted || ack.TaskID != taskID {
		return
	}
	ack.Result, ack.Message = v1.RequestSucceeded, ""
	if !succeeded {
		ack.Result, ack.Message = v1.RequestFailed, message
	}
}

// followStep moves the task state on when the agent reports a step of a task of several: a
// snapshot whose copy is made is uploading (Nova's image_snapshot, then image_uploading).
func followStep(inst *v1.Instance) {
	task, report := inst.Status.Task, inst.Status.AgentReport
	if task == nil || report == nil || report.StepTaskID != task.ID || report.NodeName != inst.Status.NodeName {
		return
	}
	if report.Step == v1.StepUploading && inst.Status.TaskState == v1.TaskStateImageSnapshot {
		inst.Status.TaskState = v1.TaskStateImageUploading
	}
}

// serveStartRequest acknowledges a new spec.startRequest. The request itself needs no task: it
// lifts the hold on an instance that went down outside kubenova (see powerHold), and
// spec.powerState then decides.
func (r *InstanceReconciler) serveStartRequest(inst *v1.Instance) {
	req := inst.Spec.StartRequest
	if req == nil || acknowledged(inst.Status.StartRequest, req.RequestedAt) {
		return
	}
	ack := &v1.RequestStatus{RequestedAt: req.RequestedAt, Result: v1.RequestAccepted,
		Message: fmt.Sprintf("the instance moves toward spec.powerState %s again", lifecycle.Desired(&inst.Spec))}
	if predates(inst, req.RequestedAt) {
		ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
		ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
	} else {
		inst.Status.PowerChange = nil // the user asked again: no hold
	}
	inst.Status.StartRequest = ack
}

// acknowledged says whether status already answered the request stamped at.
func acknowledged(ack *v1.RequestStatus, at metav1.MicroTime) bool {
	return ack != nil && ack.RequestedAt.Equal(&at)
}

// predates says whether a request was stamped before the instance existed: an instance
// restored from Git (or copied from another cluster) must not act on old requests. The
// creation time has whole seconds, so a request from the second of creation counts as new.
func predates(inst *v1.Instance, at metav1.MicroTime) bool {
	return at.Time.Before(inst.CreationTimestamp.Time)
}

// finishRequest records the outcome of the task that serves an accepted request.
func finishRequest(ack *v1.RequestStatus, taskID int64, succeeded bool, message string) {
	if ack == nil || ack.Result != v1.RequestAccepted || ack.TaskID != taskID {
		return
	}
	ack.Result, ack.Message = v1.RequestSucceeded, ""
	if !succeeded {
		ack.Result, ack.Message = v1.RequestFailed, message
	}
}

// powerHold refuses a power action while a guest that went down outside kubenova (powered
// off, crashed, paused, suspended) rests there and neither spec.powerState nor a start request
// asked again since: Nova's policy, a guest that powered itself off stays off. A guest started
// behind kubenova's back is not held: the spec wins, as Nova force-stops an instance it finds
// running against its database.
func powerHold(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	pc := inst.Status.PowerChange
	if pc == nil || pc.PowerState == v1.PowerStateRunning || pc.SpecPowerState != lifecycle.Desired(&inst.Spec) {
		return nil
	}
	return &lifecycle.Refusal{Action: action, Reason: v1.ReasonPowerStateChanged,
		Message: fmt.Sprintf("the domain went %s (%s) outside kubenova at %s, leaving the instance %s; kubenova does not undo that by itself: "+
			"run kubectl nova start, or change spec.powerState, to have it %s again",
			pc.PowerState, pc.Reason, pc.Time.UTC().Format(time.RFC3339), inst.Status.VMState, lifecycle.Desired(&inst.Spec))}
}

// check asks the state machine whether action may start now. The lock is not its business
// here: the API server's lock policy (config/admission) already refused every change of a
// locked instance's spec but an administrator's, so whatever the spec asks was allowed, and an
// administrator's override is carried out as Nova's is.
func (r *InstanceReconciler) check(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	if hold := resizeHold(inst, action); hold != nil {
		return hold
	}
	return lifecycle.Check(action, lifecycle.Situation{VMState: inst.Status.VMState, TaskState: inst.Status.TaskState})
}

// specActions are the actions the lasting fields of the spec ask for now, most pressing first:
// rescue or unrescue, resize, rebuild, then the power state.
func specActions(inst *v1.Instance) []v1.Action {
	var actions []v1.Action
	switch {
	case inst.Spec.Rescue != nil && inst.Status.VMState != v1.VMStateRescued:
		actions = append(actions, v1.ActionRescue)
	case inst.Spec.Rescue == nil && inst.Status.VMState == v1.VMStateRescued:
		actions = append(actions, v1.ActionUnrescue)
	}
	if f := inst.Status.Flavor; f != nil && inst.Spec.Flavor != f.Name && inst.Status.VMState != v1.VMStateResized {
		actions = append(actions, v1.ActionResize)
	}
	if img := inst.Status.Image; img != nil && !inst.Spec.Image.SameImage(img.ImageReference) {
		actions = append(actions, v1.ActionRebuild)
	}
	if a, due := lifecycle.PowerAction(lifecycle.Desired(&inst.Spec), inst.Status.VMState); due {
		actions = append(actions, a)
	}
	return actions
}

// startTask gives the instance a new task with a fresh ID.
func (r *InstanceReconciler) startTask(st *reconcileState, inst *v1.Instance, action v1.Action) {
	tr, _ := lifecycle.Lookup(action)
	inst.Status.LastTaskID++
	inst.Status.Task = &v1.Task{ID: inst.Status.LastTaskID, Action: action, StartedAt: metav1.NewTime(r.now()),
		ObservedGeneration: inst.Generation}
	inst.Status.TaskState = tr.FirstTask()
	switch action {
	case v1.ActionLaunch, v1.ActionTerminate:
		// A launch is told by its placement's Event (a thousand launches at once cost a
		// thousand Events fewer), a terminate by Terminating.
	default:
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskStarted, string(action), "%s started (task %d)", action, inst.Status.LastTaskID)
	}
}
