package controllers

import (
	"context"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// ServerGroupReconciler lists each ServerGroup's members and their nodes in its status, as
// Nova's server group shows its members. Placement does not read it (it counts members from the
// instances themselves); it is for people.
type ServerGroupReconciler struct {
	client.Client
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=servergroups,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=servergroups/status,verbs=get;update;patch

// indexServerGroup indexes instances by the server group they name (namespace/name).
const indexServerGroup = "spec.serverGroup"

// IndexServerGroupMembers adds the index by spec.serverGroup to the manager's cache.
func IndexServerGroupMembers(ctx context.Context, mgr ctrl.Manager) error {
	return mgr.GetFieldIndexer().IndexField(ctx, &v1.Instance{}, indexServerGroup, func(o client.Object) []string {
		if key := scheduler.GroupKey(o.(*v1.Instance)); key != "" {
			return []string{key}
		}
		return nil
	})
}

// Reconcile writes the group's members when they changed.
func (r *ServerGroupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	group := &v1.ServerGroup{}
	if err := r.Get(ctx, req.NamespacedName, group); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var list v1.InstanceList
	if err := r.List(ctx, &list, client.InNamespace(group.Namespace),
		client.MatchingFields{indexServerGroup: group.Namespace + "/" + group.Name}); err != nil {
		return ctrl.Result{}, err
	}
	members := make([]v1.ServerGroupMember, 0, len(list.Items))
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp.IsZero() {
			members = append(members, v1.ServerGroupMember{Name: list.Items[i].Name, NodeName: list.Items[i].Status.NodeName})
		}
	}
	slices.SortFunc(members, func(a, b v1.ServerGroupMember) int { return strings.Compare(a.Name, b.Name) })
	if slices.Equal(members, group.Status.Members) {
		return ctrl.Result{}, nil
	}
	orig := group.DeepCopy()
	group.Status.Members = members
	return ctrl.Result{}, kube.PatchStatus(ctx, r.Client, orig, group)
}

// SetupWithManager watches ServerGroups and the instances that name one.
func (r *ServerGroupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.ServerGroup{}).
		Watches(&v1.Instance{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			inst := o.(*v1.Instance)
			if inst.Spec.ServerGroup == "" {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: inst.Namespace, Name: inst.Spec.ServerGroup}}}
		})).
		Complete(r)
}
