package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
)

// A task of one node that its agent, alive, has not answered within --task-timeout fails with
// a fault that says so; a two-node move never does (its outcome needs both nodes' words).
func TestATaskUnansweredPastTheTaskTimeoutFails(t *testing.T) {
	began := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	now := began.Add(time.Hour)
	up := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
	target := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(up, target).Build()
	r := &InstanceReconciler{Client: c, Now: func() time.Time { return now }}
	stopping := func(action v1.Action) *v1.Instance {
		return &v1.Instance{Status: v1.InstanceStatus{VMState: v1.VMStateActive, TaskState: v1.TaskStatePoweringOff, NodeName: "node-a",
			Task: &v1.Task{ID: 3, Action: action, StartedAt: metav1.NewTime(began)}}}
	}

	inst := stopping(v1.ActionStop)
	st := &reconcileState{}
	if _, err := r.collectReport(context.Background(), inst, st); err != nil {
		t.Fatal(err)
	}
	if inst.Status.Task == nil || st.lookAgainIn != 2*time.Hour {
		t.Fatalf("within the timeout: task %+v, looks again in %s (want 2h0m0s)", inst.Status.Task, st.lookAgainIn)
	}

	now = began.Add(DefaultTaskTimeout + time.Second)
	if _, err := r.collectReport(context.Background(), inst, &reconcileState{}); err != nil {
		t.Fatal(err)
	}
	if inst.Status.Task != nil || inst.Status.TaskState != v1.TaskStateNone {
		t.Fatalf("past the timeout: task %+v", inst.Status.Task)
	}
	if f := inst.Status.Fault; f == nil || !strings.Contains(f.Message, "did not answer within 3h0m0s (--task-timeout)") {
		t.Errorf("fault %+v", inst.Status.Fault)
	}

	for _, action := range []v1.Action{v1.ActionLiveMigrate, v1.ActionTerminate} {
		inst := stopping(action)
		if action == v1.ActionLiveMigrate {
			inst.Status.Task.Migration = &v1.MigrationTask{SourceNode: "node-a", TargetNode: "node-b"}
		}
		if _, err := r.collectReport(context.Background(), inst, &reconcileState{}); err != nil {
			t.Fatal(err)
		}
		if inst.Status.Task == nil {
			t.Errorf("%s failed by the task timeout", action)
		}
	}

	r.TaskTimeout = -1
	inst = stopping(v1.ActionStop)
	if _, err := r.collectReport(context.Background(), inst, &reconcileState{}); err != nil || inst.Status.Task == nil {
		t.Errorf("with the timeout off: task %+v, %v", inst.Status.Task, err)
	}
}
