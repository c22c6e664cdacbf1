package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// Status: reading back the agent's reports (collectReport, finishTask), following the
// hypervisor's power state (syncPowerState) and summarising the instance in conditions at the
// end of each reconcile. It is apart because it turns what the nodes observed into status,
// where the other steps decide what to start.

// collectReport finishes the task in flight once the node agent has answered it. A task still
// in flight lets the later steps look too: a hard reboot may interrupt it.
func (r *InstanceReconciler) collectReport(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	task, report := inst.Status.Task, inst.Status.AgentReport
	if task == nil || inst.Status.TaskState == v1.TaskStateScheduling {
		return nil, nil
	}
	if done, err := r.collectMigration(ctx, inst, st); err != nil || done {
		return nil, err
	}
	if done, err := r.collectResize(ctx, inst, st); err != nil || done {
		return nil, err
	}
	if failed, err := r.failTaskOnFencedNode(ctx, inst, st); err != nil || failed {
		return nil, err
	}
	if report == nil || report.TaskID != task.ID || report.NodeName != inst.Status.NodeName {
		followStep(inst)
		r.enforceBuildTimeout(ctx, inst, st)
		r.enforceTaskTimeout(ctx, inst, st)
		return nil, nil // the agent is still at it; its report brings us back
	}
	r.finishTask(ctx, inst, st, report.TaskResult == v1.TaskSucceeded, report.NodeName, report.Message)
	return nil, nil
}

// enforceBuildTimeout fails a launch the node has not finished within BuildTimeout, as Nova's
// instance_build_timeout does: the instance goes to Error with a fault a person can act on
// (delete it, or rebuild it). A spawn the agent still finishes afterwards is not undone; the
// instance's power state shows it.
func (r *InstanceReconciler) enforceBuildTimeout(ctx context.Context, inst *v1.Instance, st *reconcileState) {
	task := inst.Status.Task
	if r.BuildTimeout <= 0 || task.Action != v1.ActionLaunch {
		return
	}
	left := task.StartedAt.Add(r.BuildTimeout).Sub(r.now())
	if left > 0 {
		st.lookAgain(left)
		return
	}
	r.finishTask(ctx, inst, st, false, inst.Status.NodeName,
		fmt.Sprintf("the build did not finish within %s (--instance-build-timeout) on node %s", r.BuildTimeout, inst.Status.NodeName))
}

// finishTask ends the task in flight with the outcome a node's agent reported: the vm state
// moves to the table's outcome, the requests the task served learn theirs, and status records
// what the task changed (or the fault).
func (r *InstanceReconciler) finishTask(ctx context.Context, inst *v1.Instance, st *reconcileState, succeeded bool, node, message string) {
	task := inst.Status.Task
	r.observeOperation(st, task, succeeded)
	tr, _ := lifecycle.Lookup(task.Action)
	from := inst.Status.VMState
	wasStopped, rollback := from == v1.VMStateStopped, false
	if rs := inst.Status.Resize; rs != nil {
		wasStopped, rollback = rs.PreviousVMState == v1.VMStateStopped, rs.RollingBack
	}
	inst.Status.VMState = tr.Outcome(from, succeeded, wasStopped)
	inst.Status.TaskState = v1.TaskStateNone
	inst.Status.Task = nil
	inst.Status.PeerReport = nil
	finishRequest(inst.Status.RebootRequest, task.ID, succeeded, message)
	finishRequest(inst.Status.ResizeRequest, task.ID, succeeded, message)
	finishRequest(inst.Status.RebuildRequest, task.ID, succeeded, message)
	finishObjectRequest(inst.Status.SnapshotRequest, task.ID, succeeded, message)
	finishObjectRequest(inst.Status.MigrationRequest, task.ID, succeeded, message)
	if !succeeded {
		switch {
		case task.Action == v1.ActionUnshelve && from == v1.VMStateShelvedOffloaded:
			// The next unshelve goes through the scheduler again; the failed node keeps no claim.
			inst.Status.NodeName = ""
		case task.Action == v1.ActionShelve && inst.Status.PowerState == v1.PowerStateShutdown:
			// The shelve powered the guest off before its upload failed: kubenova did that, so
			// the instance is Stopped, not changed "outside kubenova".
			inst.Status.VMState = v1.VMStateStopped
		}
		if task.Action == v1.ActionLiveMigrate {
			// The guest runs on where it ran, as Nova's rollback leaves it: no fault, and the
			// Migration tells the story.
			r.event(st, inst, corev1.EventTypeWarning, v1.ReasonTaskFailed, string(task.Action), "%s failed on %s: %s; the instance stays on %s",
				task.Action, node, message, inst.Status.NodeName)
			return
		}
		inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: fmt.Sprintf("%s failed: %s", task.Action, message),
			Time: metav1.NewTime(r.now()), Action: task.Action, ObservedGeneration: task.ObservedGeneration}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonTaskFailed, string(task.Action), "%s failed on %s: %s", task.Action, node, message)
		r.finishResizeTask(ctx, inst, st, task, false)
		return
	}
	r.finishResizeTask(ctx, inst, st, task, true)
	switch task.Action {
	case v1.ActionRebuild:
		if task.Image != nil {
			inst.Status.Image = task.Image.DeepCopy()
		}
	case v1.ActionRescue:
		inst.Status.RescueImage = task.Image.DeepCopy()
	case v1.ActionUnrescue:
		inst.Status.RescueImage = nil
	case v1.ActionShelve:
		t := metav1.NewTime(r.now())
		inst.Status.ShelvedAt = &t
	case v1.ActionShelveOffload:
		// Nova frees an offloaded instance from its node: the next unshelve places it anew.
		inst.Status.NodeName = ""
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskSucceeded, string(task.Action),
			"offloaded from node %s: domain and disks removed, resources freed", node)
	}
	if task.Action == v1.ActionLaunch && inst.Status.LaunchedAt == nil {
		t := metav1.NewTime(r.now())
		inst.Status.LaunchedAt = &t
	}
	if inst.Status.VMState != v1.VMStateError && !rollback {
		// (A rollback keeps the fault of the move it undid: the same move is not tried again
		// for the same spec.)
		inst.Status.Fault = nil
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskSucceeded, string(task.Action), "%s done on %s: %s", task.Action, node, inst.Status.VMState)
}

// syncPowerState is Nova's sync_power_states on the manager's side: when the agent reports a
// power state that does not belong to an idle instance's vm state (the guest powered itself
// off, its QEMU died, someone used virsh), the hypervisor is right. The vm state follows it and
// status.powerChange records it; powerHold says what kubenova then does about it.
func (r *InstanceReconciler) syncPowerState(_ context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	report := inst.Status.AgentReport
	if inst.Status.Task != nil || report == nil || report.NodeName != inst.Status.NodeName {
		return nil, nil
	}
	from := inst.Status.VMState
	if found, changed := lifecycle.SyncPowerState(from, inst.Status.PowerState); changed {
		inst.Status.VMState = found
		inst.Status.PowerChange = &v1.PowerChange{FromVMState: from, PowerState: inst.Status.PowerState,
			Reason: report.PowerReason, Time: metav1.NewTime(r.now()), SpecPowerState: lifecycle.Desired(&inst.Spec)}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonPowerStateChanged, "SyncPowerState",
			"node %s reports the domain %s (%s) while the instance was %s: it is %s now", inst.Status.NodeName,
			inst.Status.PowerState, report.PowerReason, from, found)
	}
	if inst.Status.PowerChange != nil && lifecycle.Reached(lifecycle.Desired(&inst.Spec), inst.Status.VMState) {
		inst.Status.PowerChange = nil
	}
	return nil, nil
}

// desiredReached says whether the instance rests where its spec asks: Rescued while spec.rescue
// is set (a rescue system runs whatever spec.powerState says), else in spec.powerState.
func desiredReached(inst *v1.Instance) bool {
	if inst.Spec.Rescue != nil {
		return inst.Status.VMState == v1.VMStateRescued
	}
	return lifecycle.Reached(lifecycle.Desired(&inst.Spec), inst.Status.VMState)
}

// setConditions summarises the instance in Ready, Reconciling and Stalled.
func (r *InstanceReconciler) setConditions(inst *v1.Instance, st *reconcileState) {
	actionDue := len(specActions(inst)) > 0
	obs := lifecycle.Observation{
		VMState:        inst.Status.VMState,
		TaskState:      inst.Status.TaskState,
		DesiredReached: desiredReached(inst) && !actionDue,
		Refusal:        st.refusal,
		Waiting:        st.waiting,
		Fault:          inst.Status.Fault,
		NodeDown:       st.nodeDown,
	}
	for _, c := range lifecycle.Health(obs) {
		c.ObservedGeneration = inst.Generation
		meta.SetStatusCondition(&inst.Status.Conditions, c)
	}
	inst.Status.ObservedGeneration = inst.Generation
}

// observeNode records in st whether the instance's node is down (nodeDown: the one definition
// deletes and evacuations use too), for its conditions: Ready cannot be True for an instance
// nobody can see.
func (r *InstanceReconciler) observeNode(ctx context.Context, inst *v1.Instance, st *reconcileState) {
	node := inst.Status.NodeName
	if node == "" {
		return
	}
	down, why, err := r.nodeDown(ctx, node)
	if err != nil {
		log.FromContext(ctx).Error(err, "cannot tell whether the instance's node is up", "node", node)
		return
	}
	if down {
		st.nodeDown = fmt.Sprintf("node %s is down (%s): whether the instance still runs is not known", node, why)
	}
}
