package kube

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestInstanceOperation(t *testing.T) {
	now := metav1.Now()
	for _, c := range []struct {
		inst *v1.Instance
		want string
	}{
		{&v1.Instance{}, "Sync"},
		{&v1.Instance{Status: v1.InstanceStatus{Task: &v1.Task{Action: v1.ActionReboot}}}, "Reboot"},
		{&v1.Instance{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}}, "Terminate"},
		// A task in flight names itself, also while the deletion waits for it.
		{&v1.Instance{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}, Status: v1.InstanceStatus{Task: &v1.Task{Action: v1.ActionLiveMigrate}}}, "LiveMigrate"},
	} {
		if got := InstanceOperation(c.inst); got != c.want {
			t.Errorf("%+v: %s, want %s", c.inst, got, c.want)
		}
	}
}
