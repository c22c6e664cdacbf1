package controllers

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
)

// A live migration that its source reports failed is recorded only once its target has said
// what it has: the guest that ran there is the instance's (alone) or found on two nodes (Error);
// one that did not arrive leaves a failed move; a down target is waited for until fenced.
func TestALiveMigrationsOutcomeWaitsForTheTargetsWord(t *testing.T) {
	const taskID = 5
	failedHere := &v1.AgentReport{NodeName: "node-s", TaskID: taskID, TaskResult: v1.TaskFailed,
		Message: "the connection closed; the domain is still here, Running (MigrationCanceled)"}
	prepared := &v1.AgentReport{NodeName: "node-t", Step: v1.StepPrepared, StepTaskID: taskID}
	ranThere := &v1.AgentReport{NodeName: "node-t", Step: v1.StepMigrated, StepTaskID: taskID}
	notThere := &v1.AgentReport{NodeName: "node-t", Step: v1.StepPrepared, StepTaskID: taskID,
		TaskID: taskID, TaskResult: v1.TaskFailed, Message: "the guest did not arrive on node-t: its domain there is absent"}
	for _, tc := range []struct {
		what        string
		sourcePower v1.PowerState
		target      *v1.AgentReport
		targetState v1.HypervisorState
		fenced      bool
		// want: the instance's vm state and node, "" while the task goes on.
		wantState v1.VMState
		wantNode  string
		wantFault string
	}{
		{"the target has not answered", v1.PowerStateRunning, prepared, v1.HypervisorUp, false, "", "node-s", ""},
		{"the target is down, not fenced", v1.PowerStateRunning, prepared, v1.HypervisorDown, false, "", "node-s", ""},
		{"the target is fenced and down", v1.PowerStateRunning, prepared, v1.HypervisorDown, true, v1.VMStateActive, "node-s", ""},
		{"the guest did not arrive", v1.PowerStateRunning, notThere, v1.HypervisorUp, false, v1.VMStateActive, "node-s", ""},
		{"the guest runs on both nodes", v1.PowerStateRunning, ranThere, v1.HypervisorUp, false, v1.VMStateError, "node-s", v1.ReasonGuestOnTwoNodes},
		{"the guest runs only on the target", v1.PowerStatePaused, ranThere, v1.HypervisorUp, false, "", "node-t", ""},
	} {
		target := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-t"}, Spec: v1.HypervisorSpec{ForcedDown: tc.fenced},
			Status: v1.HypervisorStatus{State: tc.targetState}}
		if tc.targetState == v1.HypervisorDown {
			target.Status.Conditions = []metav1.Condition{{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1.ReasonHeartbeatLapsed}}
		}
		source := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-s"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Name: "move", Namespace: "default", UID: "m-1"}}
		c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(target, source, mig).Build()
		r := &InstanceReconciler{Client: c}
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Name: "vm", Namespace: "default"},
			Status: v1.InstanceStatus{VMState: v1.VMStateActive, TaskState: v1.TaskStateMigrating, NodeName: "node-s", PowerState: tc.sourcePower,
				Task: &v1.Task{ID: taskID, Action: v1.ActionLiveMigrate, PeerNode: "node-t",
					Migration: &v1.MigrationTask{Name: "move", UID: "m-1", SourceNode: "node-s", TargetNode: "node-t"}},
				MigrationRequest: &v1.ObjectRequestStatus{Name: "move", UID: "m-1", TaskID: taskID, SourceNode: "node-s", TargetNode: "node-t", Result: v1.RequestAccepted},
				AgentReport:      failedHere.DeepCopy(), PeerReport: tc.target.DeepCopy()}}
		st := &reconcileState{}
		handled, err := r.collectMigration(context.Background(), inst, st)
		if err != nil || !handled {
			t.Fatalf("%s: handled %v, %v", tc.what, handled, err)
		}
		if inst.Status.NodeName != tc.wantNode {
			t.Errorf("%s: recorded on %q, want %q", tc.what, inst.Status.NodeName, tc.wantNode)
		}
		if tc.wantState == "" {
			if inst.Status.Task == nil {
				t.Errorf("%s: the task ended (%s): %+v", tc.what, inst.Status.VMState, inst.Status.MigrationRequest)
			}
			continue
		}
		if inst.Status.Task != nil || inst.Status.VMState != tc.wantState {
			t.Errorf("%s: %s, task %+v; want %s and no task", tc.what, inst.Status.VMState, inst.Status.Task, tc.wantState)
		}
		if mr := inst.Status.MigrationRequest; mr.Result != v1.RequestFailed {
			t.Errorf("%s: the Migration is %s, want Failed", tc.what, mr.Result)
		}
		f := inst.Status.Fault
		switch {
		case tc.wantFault == "" && f != nil:
			t.Errorf("%s: fault %+v", tc.what, f)
		case tc.wantFault != "" && (f == nil || f.Reason != tc.wantFault || !strings.Contains(f.Message, "node-s and on node-t")):
			t.Errorf("%s: fault %+v, want %s naming both nodes", tc.what, f, tc.wantFault)
		}
	}
}
