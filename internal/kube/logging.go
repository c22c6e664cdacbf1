package kube

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// WithOperation adds the operation to every line the reconcile logs; controller-runtime's
// logger already carries the object's namespace and name.
func WithOperation(ctx context.Context, operation string) context.Context {
	return log.IntoContext(ctx, log.FromContext(ctx).WithValues("operation", operation))
}

// InstanceOperation is what a reconcile of the instance works on: its task's action (Launch,
// Reboot, LiveMigrate, ...), Terminate once it is being deleted, else Sync (following the
// hypervisor, waiting for a request).
func InstanceOperation(inst *v1.Instance) string {
	switch {
	case inst.Status.Task != nil:
		return string(inst.Status.Task.Action)
	case !inst.DeletionTimestamp.IsZero():
		return string(v1.ActionTerminate)
	}
	return "Sync"
}
