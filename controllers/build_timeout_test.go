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

// A launch the node has not finished within --instance-build-timeout fails, the instance in
// Error with a fault that says so; before that, the manager only asks to look again then.
func TestALaunchPastTheBuildTimeoutFails(t *testing.T) {
	began := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	now := began.Add(time.Minute)
	up := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: v1.HypervisorStatus{State: v1.HypervisorUp}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(up).Build()
	r := &InstanceReconciler{Client: c, BuildTimeout: 5 * time.Minute, Now: func() time.Time { return now }}
	inst := &v1.Instance{Status: v1.InstanceStatus{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateSpawning, NodeName: "node-a",
		Task: &v1.Task{ID: 1, Action: v1.ActionLaunch, StartedAt: metav1.NewTime(began)}}}

	st := &reconcileState{}
	if _, err := r.collectReport(context.Background(), inst, st); err != nil {
		t.Fatal(err)
	}
	if inst.Status.Task == nil || inst.Status.VMState != v1.VMStateBuilding {
		t.Fatalf("within the timeout: %s, task %+v", inst.Status.VMState, inst.Status.Task)
	}
	if st.lookAgainIn != 4*time.Minute {
		t.Errorf("looks again in %s, want at the deadline, 4m0s from now", st.lookAgainIn)
	}

	now = began.Add(5*time.Minute + time.Second)
	st = &reconcileState{}
	if _, err := r.collectReport(context.Background(), inst, st); err != nil {
		t.Fatal(err)
	}
	if inst.Status.VMState != v1.VMStateError || inst.Status.Task != nil || inst.Status.TaskState != v1.TaskStateNone {
		t.Errorf("past the timeout: %s/%s, task %+v", inst.Status.VMState, inst.Status.TaskState, inst.Status.Task)
	}
	if f := inst.Status.Fault; f == nil || !strings.Contains(f.Message, "did not finish within 5m0s (--instance-build-timeout)") {
		t.Errorf("fault %+v", inst.Status.Fault)
	}

	// Off by default: a node that keeps at it is waited for.
	r.BuildTimeout = 0
	inst.Status.VMState, inst.Status.Task, inst.Status.Fault = v1.VMStateBuilding, &v1.Task{ID: 2, Action: v1.ActionLaunch, StartedAt: metav1.NewTime(began)}, nil
	if _, err := r.collectReport(context.Background(), inst, &reconcileState{}); err != nil || inst.Status.Task == nil {
		t.Errorf("without a timeout: task %+v, err %v", inst.Status.Task, err)
	}
}
