package lifecycle

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// TestKstatusReadsHealth checks the condition mapping with kstatus itself, the library Flux and
// Argo CD-style tools use: a deliberately stopped or paused instance is Current, one in a task
// InProgress, one in Error or stuck on a refused request Failed.
func TestKstatusReadsHealth(t *testing.T) {
	cases := []struct {
		name string
		o    Observation
		want status.Status
	}{
		{"active as asked", Observation{VMState: v1.VMStateActive, DesiredReached: true}, status.CurrentStatus},
		{"stopped as asked", Observation{VMState: v1.VMStateStopped, DesiredReached: true}, status.CurrentStatus},
		{"paused as asked", Observation{VMState: v1.VMStatePaused, DesiredReached: true}, status.CurrentStatus},
		{"shelved as asked", Observation{VMState: v1.VMStateShelvedOffloaded, DesiredReached: true}, status.CurrentStatus},
		{"spawning", Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateSpawning}, status.InProgressStatus},
		{"waiting for a host", Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateScheduling,
			Waiting: &Refusal{Reason: v1.ReasonNoValidHost, Message: "no valid host"}}, status.InProgressStatus},
		{"error", Observation{VMState: v1.VMStateError}, status.FailedStatus},
		{"active on a node that is down", Observation{VMState: v1.VMStateActive, DesiredReached: true, NodeDown: "node-1 is down"}, status.InProgressStatus},
		{"refused", Observation{VMState: v1.VMStateStopped, Refusal: &Refusal{Reason: v1.ReasonInvalidState, Message: "cannot pause"}}, status.FailedStatus},
	}
	for _, c := range cases {
		inst := &v1.Instance{
			TypeMeta:   metav1.TypeMeta{APIVersion: v1.GroupVersion.String(), Kind: "Instance"},
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Generation: 3},
			Status:     v1.InstanceStatus{ObservedGeneration: 3, VMState: c.o.VMState, TaskState: c.o.TaskState},
		}
		for _, cond := range Health(c.o) {
			cond.ObservedGeneration = 3
			inst.Status.Conditions = append(inst.Status.Conditions, cond)
		}
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(inst)
		if err != nil {
			t.Fatal(err)
		}
		res, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Status != c.want {
			t.Errorf("%s: kstatus says %s (%s), want %s", c.name, res.Status, res.Message, c.want)
		}
	}
}
