package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// A live migration that libvirt ends with an error is not known to have failed: libvirt
// starts the guest on the target before it tells the source, and should that reply be lost,
// the source resumes its own copy while the target's runs on (libvirt leaves this case to
// lock managers; Nova warns of it in _live_migration_operation). So the source's failure is
// only its half of the answer. The manager records an outcome once the target has said what
// it has (reportArrival in the agent):
//
//	source \ target  | the guest ran there        | it did not arrive
//	still running    | Error, GuestOnTwoNodes     | failed: Active on the source
//	not running      | moved: the target's now    | failed: the source's copy stays
//
// A target that does not answer is waited for (a person who fences it ends the wait: a fenced
// node runs nothing).

// moveEndedOnSource says whether the source's agent reported the live migration over with its
// domain still there (a failure from its own view), after the target had prepared: the move may
// have begun, and where the guest runs is the target's to say.
func moveEndedOnSource(task *v1.Task, rep, tr *v1.AgentReport) bool {
	return rep != nil && rep.TaskID == task.ID && rep.TaskResult == v1.TaskFailed &&
		tr != nil && tr.StepTaskID == task.ID && (tr.Step == v1.StepPrepared || tr.Step == v1.StepMigrated)
}

// targetWaitRecheck is how often a move waiting for its down target's word is looked at: the
// target's fencing (its Hypervisor's spec, its Node's taint) brings no event of this instance.
const targetWaitRecheck = 30 * time.Second

// settleEndedMove records the outcome of a live migration the source reported ended with its
// domain still there, from the target's word (see the table above). It says whether it
// handled the task's step (waiting counts).
func (r *InstanceReconciler) settleEndedMove(ctx context.Context, inst *v1.Instance, st *reconcileState, rep, tr *v1.AgentReport) (bool, error) {
	task := inst.Status.Task
	m := task.Migration
	switch {
	case tr.Step == v1.StepMigrated && inst.Status.PowerState == v1.PowerStateRunning:
		r.finishOnTwoNodes(ctx, inst, st, rep)
	case tr.Step == v1.StepMigrated:
		r.event(st, inst, corev1.EventTypeWarning, ReasonMigrating, string(task.Action),
			"the move ended with an error on %s (%s), but the guest runs on %s: it is the instance's now", m.SourceNode, rep.Message, m.TargetNode)
		r.moveToTarget(inst, st, "the guest runs on %s, not on %s", m.TargetNode, m.SourceNode)
	case tr.TaskID == task.ID && tr.TaskResult == v1.TaskFailed:
		r.finishTask(ctx, inst, st, false, m.SourceNode, fmt.Sprintf("%s; %s", rep.Message, tr.Message))
	default:
		fenced, down, err := r.fencedAndDown(ctx, m.TargetNode)
		if err != nil {
			return false, err
		}
		if fenced && down {
			r.finishTask(ctx, inst, st, false, m.SourceNode,
				fmt.Sprintf("%s; the target %s is fenced and down, so no copy runs there", rep.Message, m.TargetNode))
			return true, nil
		}
		if down {
			r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNodeDown, string(task.Action),
				"the move ended with an error on %s; node %s, which may run the guest, is down: the outcome waits for its agent, or for it to be fenced", m.SourceNode, m.TargetNode)
			st.lookAgain(targetWaitRecheck)
		}
	}
	return true, nil
}

// finishOnTwoNodes ends a live migration whose guest runs on both its nodes: the instance goes
// to Error, recorded on its source, whose copy runs on; the target's agent pauses its copy
// (never destroys it) for a person to decide. A hard reboot repairs the instance on the source,
// after which the paused copy goes like any stale one.
func (r *InstanceReconciler) finishOnTwoNodes(ctx context.Context, inst *v1.Instance, st *reconcileState, rep *v1.AgentReport) {
	task := inst.Status.Task
	m := task.Migration
	msg := fmt.Sprintf("the guest runs on %s and on %s after a live migration that ended with an error (%s): the copy on %s runs on as the instance's; the one on %s is paused for a person to look at",
		m.SourceNode, m.TargetNode, rep.Message, m.SourceNode, m.TargetNode)
	action, generation := task.Action, task.ObservedGeneration
	r.finishTask(ctx, inst, st, false, m.SourceNode, msg)
	inst.Status.VMState = v1.VMStateError
	inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonGuestOnTwoNodes, Message: msg,
		Time: metav1.NewTime(r.now()), Action: action, ObservedGeneration: generation}
	r.event(st, inst, corev1.EventTypeWarning, v1.ReasonGuestOnTwoNodes, string(action), "%s", msg)
}
