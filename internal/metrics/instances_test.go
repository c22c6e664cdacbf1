package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
)

func TestInstanceCollectorCountsByStateAndNode(t *testing.T) {
	inst := func(name string, vm v1.VMState, task v1.TaskState, node string) *v1.Instance {
		return &v1.Instance{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Status: v1.InstanceStatus{VMState: vm, TaskState: task, NodeName: node}}
	}
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(
		inst("a", v1.VMStateActive, "", "host-1"),
		inst("b", v1.VMStateActive, "", "host-1"),
		inst("c", v1.VMStateActive, v1.TaskStateMigrating, "host-2"),
		inst("d", v1.VMStateStopped, "", "host-2"),
	).Build()
	want := `
# HELP kubenova_instances Instances by vm state, task state and node (the node empty while an instance has none).
# TYPE kubenova_instances gauge
kubenova_instances{node="host-1",task_state="",vm_state="Active"} 2
kubenova_instances{node="host-2",task_state="Migrating",vm_state="Active"} 1
kubenova_instances{node="host-2",task_state="",vm_state="Stopped"} 1
`
	elected := make(chan struct{})
	standby := &InstanceCollector{Reader: c, Elected: elected}
	if n := testutil.CollectAndCount(standby); n != 0 {
		t.Errorf("a manager that does not lead reports %d series", n)
	}
	close(elected)
	if err := testutil.CollectAndCompare(standby, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
