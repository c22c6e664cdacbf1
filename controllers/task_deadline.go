package controllers

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// DefaultTaskTimeout is how long a task may go unanswered by a node whose agent keeps its
// heartbeat: longer than anything a working agent takes before it answers by itself (three
// attempts of --task-attempt-timeout, 30 minutes each, and its waits for the image store and
// for libvirtd, 5 minutes each). Past it the agent is alive but stuck on this task.
const DefaultTaskTimeout = 3 * time.Hour

// taskDeadlineApplies says whether the manager may fail a task its node has not answered in
// time: only a task one node carries out alone. The two-node moves record their outcome from
// both nodes' words (a failure recorded while the other node may run the guest is what must
// never happen), and a terminate shows its wait: the instance is being deleted.
func taskDeadlineApplies(a v1.Action) bool {
	switch a {
	case v1.ActionLiveMigrate, v1.ActionMigrate, v1.ActionResize, v1.ActionConfirmResize, v1.ActionRevertResize, v1.ActionTerminate:
		return false
	}
	return true
}

// enforceTaskTimeout fails a task its node has not answered within TaskTimeout
// (DefaultTaskTimeout when zero, never when negative): the instance rests in the task's failure
// state with a fault, for a person to act on, rather than wait on a stuck agent for ever. An
// answer that comes later is for a task that is over, and is not applied.
func (r *InstanceReconciler) enforceTaskTimeout(ctx context.Context, inst *v1.Instance, st *reconcileState) {
	task := inst.Status.Task
	limit := r.TaskTimeout
	if limit == 0 {
		limit = DefaultTaskTimeout
	}
	if task == nil || limit < 0 || !taskDeadlineApplies(task.Action) {
		return
	}
	left := task.StartedAt.Add(limit).Sub(r.now())
	if left > 0 {
		st.lookAgain(left)
		return
	}
	r.finishTask(ctx, inst, st, false, inst.Status.NodeName,
		fmt.Sprintf("node %s did not answer within %s (--task-timeout), though its agent keeps its heartbeat", inst.Status.NodeName, limit))
}
