package controllers

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// Server groups (Nova's os-server-groups): an instance names its group in spec.serverGroup, and
// every placement of it (launch, unshelve, resize, migrations, evacuation; all go through
// place) passes the group's policy to the scheduler with where the other members are. The
// Placement counts members per node from the Instance informer and the claims not yet written,
// so concurrent launches of one group hold to its policy as they hold to the nodes' room.

// serverGroupMissing says why a launch or an unshelve waits on its server group: the group it
// names does not exist (yet). A group deleted under a placed instance no longer binds its moves,
// as in Nova.
func (r *InstanceReconciler) serverGroupMissing(ctx context.Context, inst *v1.Instance) (*lifecycle.Refusal, error) {
	if inst.Spec.ServerGroup == "" {
		return nil, nil
	}
	_, err := r.serverGroup(ctx, inst)
	if apierrors.IsNotFound(err) {
		return &lifecycle.Refusal{Reason: v1.ReasonServerGroupNotFound,
			Message: fmt.Sprintf("server group %s does not exist in namespace %s: create it or fix spec.serverGroup (it cannot change later)",
				inst.Spec.ServerGroup, inst.Namespace)}, nil
	}
	return nil, err
}

func (r *InstanceReconciler) serverGroup(ctx context.Context, inst *v1.Instance) (*v1.ServerGroup, error) {
	group := &v1.ServerGroup{}
	err := r.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: inst.Spec.ServerGroup}, group)
	return group, err
}

// groupRequest is the instance's server group as the scheduler takes it, without its members
// (place counts them at each decision); nil when the instance names no group or its group is
// gone.
func (r *InstanceReconciler) groupRequest(ctx context.Context, inst *v1.Instance) (*scheduler.GroupRequest, error) {
	if inst.Spec.ServerGroup == "" {
		return nil, nil
	}
	group, err := r.serverGroup(ctx, inst)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &scheduler.GroupRequest{Key: scheduler.GroupKey(inst), Policy: group.Spec.Policy, MaxPerHost: group.Spec.MaxPerHost()}, nil
}
