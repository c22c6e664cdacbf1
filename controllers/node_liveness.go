package controllers

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// nodeDown is the one definition of a node that is down, for deletes, evacuations and health:
// its agent no longer reports, because its Hypervisor is gone or its agent stopped renewing
// its lease. A Hypervisor that is Down only because its kubelet reports the Node not Ready
// still has an agent that acts and reports: nothing new is placed there, but its instances
// are known and its agent carries out their deletes.
func (r *InstanceReconciler) nodeDown(ctx context.Context, node string) (bool, string, error) {
	return nodeDown(ctx, r.Client, node)
}

func nodeDown(ctx context.Context, c client.Reader, node string) (bool, string, error) {
	hv := &v1.Hypervisor{}
	if err := c.Get(ctx, types.NamespacedName{Name: node}, hv); apierrors.IsNotFound(err) {
		return true, "no Hypervisor object", nil
	} else if err != nil {
		return false, "", err
	}
	ready := meta.FindStatusCondition(hv.Status.Conditions, v1.ConditionReady)
	if hv.Status.State == v1.HypervisorDown && ready != nil && ready.Reason == v1.ReasonHeartbeatLapsed {
		return true, "its agent stopped renewing its lease", nil
	}
	return false, "", nil
}
