package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// Quotas and reservations: the two checks between choosing a node for a launch (or an unshelve)
// and handing the instance to that node. First the namespace's ResourceQuotas must have room for
// what its reservation pods will grow by; then the node's kubelet must have admitted the grown
// pod. Until both hold, the instance keeps its claim on the node (it was counted there) without
// a write, and a change of the pod or of a quota wakes it.

// +kubebuilder:rbac:groups="",resources=resourcequotas,verbs=get;list;watch

// reservationAdmissionTimeout bounds how long a launch waits for a kubelet to admit its
// reservation before it is placed again.
const reservationAdmissionTimeout = 2 * time.Minute

// quotaExceeded says which of the namespace's ResourceQuotas the instance's launch on node would
// take past its hard limit, nil when none. It counts what the quota has counted (status.used),
// and what the namespace's reservation pods will grow by, this launch included. A quota with
// scopes is left to the API server, which judges the pod's write.
func (r *InstanceReconciler) quotaExceeded(ctx context.Context, inst *v1.Instance) (*lifecycle.Refusal, error) {
	return r.quotaExceededWith(ctx, inst, nil, "the launch")
}

// resizeQuotaExceeded says which ResourceQuota a resize to flavor would take past its hard
// limit: the namespace's reservation pods grow by the new flavor less the old one once the
// instance runs with it (Nova checks a resize's quota for that difference too).
func (r *InstanceReconciler) resizeQuotaExceeded(ctx context.Context, inst *v1.Instance, flavor v1.FlavorSpec) (*lifecycle.Refusal, error) {
	if inst.Status.Flavor == nil {
		return nil, nil
	}
	ratio := r.cpuRatio(ctx, inst.Status.NodeName)
	now := ReservationRequests(scheduler.ReservedFor(scheduler.FlavorResources(inst.Status.Flavor.FlavorSpec)), ratio)
	then := ReservationRequests(scheduler.ReservedFor(scheduler.FlavorResources(flavor)), ratio)
	extra := corev1.ResourceList{}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if d := then[name].DeepCopy(); d.Cmp(now[name]) > 0 {
			d.Sub(now[name])
			extra[name] = d
		}
	}
	if len(extra) == 0 {
		return nil, nil
	}
	refusal, err := r.quotaExceededWith(ctx, inst, extra, "the resize")
	if refusal != nil {
		refusal.Action = v1.ActionResize
	}
	return refusal, err
}

// quotaExceededWith is quotaExceeded with extra (CPU, memory) on top of what Placement knows.
func (r *InstanceReconciler) quotaExceededWith(ctx context.Context, inst *v1.Instance, extra corev1.ResourceList, what string) (*lifecycle.Refusal, error) {
	if r.Reservations == nil {
		return nil, nil // nothing carries the instances to the quotas
	}
	var quotas corev1.ResourceQuotaList
	if err := r.List(ctx, &quotas, client.InNamespace(inst.Namespace)); err != nil || len(quotas.Items) == 0 {
		return nil, err
	}
	growth, err := r.reservationGrowth(ctx, inst.Namespace)
	if err != nil {
		return nil, err
	}
	for name, q := range extra {
		forms := []corev1.ResourceName{corev1.ResourceRequestsCPU, corev1.ResourceCPU, corev1.ResourceLimitsCPU}
		if name == corev1.ResourceMemory {
			forms = []corev1.ResourceName{corev1.ResourceRequestsMemory, corev1.ResourceMemory, corev1.ResourceLimitsMemory}
		}
		for _, f := range forms {
			sum := growth[f].DeepCopy()
			sum.Add(q)
			growth[f] = sum
		}
	}
	sort.Slice(quotas.Items, func(i, j int) bool { return quotas.Items[i].Name < quotas.Items[j].Name })
	for _, q := range quotas.Items {
		if len(q.Spec.Scopes) > 0 || q.Spec.ScopeSelector != nil {
			continue
		}
		for _, name := range []corev1.ResourceName{corev1.ResourceRequestsCPU, corev1.ResourceCPU, corev1.ResourceLimitsCPU,
			corev1.ResourceRequestsMemory, corev1.ResourceMemory, corev1.ResourceLimitsMemory, corev1.ResourcePods, "count/pods"} {
			hard, limited := q.Status.Hard[name]
			more, grows := growth[name]
			if !limited || !grows {
				continue
			}
			used := q.Status.Used[name]
			wanted := used.DeepCopy()
			wanted.Add(more)
			if wanted.Cmp(hard) > 0 {
				return &lifecycle.Refusal{Reason: v1.ReasonQuotaExceeded, Message: fmt.Sprintf(
					"exceeded quota %s: %s of %s needs %s more, %s of %s used; %s goes on when the quota has room",
					q.Name, name, inst.Namespace, more.String(), used.String(), hard.String(), what)}, nil
			}
		}
	}
	return nil, nil
}

// reservationGrowth is what the namespace's reservation pods will grow by when they carry every
// claim Placement knows of (the pods' requests now are what the quotas have counted).
func (r *InstanceReconciler) reservationGrowth(ctx context.Context, namespace string) (corev1.ResourceList, error) {
	cpu, mem := resource.Quantity{}, resource.Quantity{}
	pods := int64(0)
	for node, want := range r.Placement.HomeReservations(namespace) {
		hv := &v1.Hypervisor{}
		if err := r.Get(ctx, types.NamespacedName{Name: node}, hv); err != nil && !apierrors.IsNotFound(err) {
			return nil, err
		}
		wantReq := ReservationRequests(want, scheduler.CPUAllocationRatio(hv))
		key := scheduler.ReservationKey{Namespace: namespace, Node: node}
		pod := &corev1.Pod{}
		has := corev1.ResourceList{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ReservationPodName(key)}, pod); err == nil {
			has = podRequests(pod)
		} else if apierrors.IsNotFound(err) {
			pods++
		} else {
			return nil, err
		}
		if d := wantReq.Cpu().DeepCopy(); d.Cmp(*has.Cpu()) > 0 {
			d.Sub(*has.Cpu())
			cpu.Add(d)
		}
		if d := wantReq.Memory().DeepCopy(); d.Cmp(*has.Memory()) > 0 {
			d.Sub(*has.Memory())
			mem.Add(d)
		}
	}
	growth := corev1.ResourceList{}
	if !cpu.IsZero() {
		for _, n := range []corev1.ResourceName{corev1.ResourceRequestsCPU, corev1.ResourceCPU, corev1.ResourceLimitsCPU} {
			growth[n] = cpu
		}
	}
	if !mem.IsZero() {
		for _, n := range []corev1.ResourceName{corev1.ResourceRequestsMemory, corev1.ResourceMemory, corev1.ResourceLimitsMemory} {
			growth[n] = mem
		}
	}
	if pods > 0 {
		growth[corev1.ResourcePods] = *resource.NewQuantity(pods, resource.DecimalSI)
		growth["count/pods"] = *resource.NewQuantity(pods, resource.DecimalSI)
	}
	return growth, nil
}

// reservationPending says why a launch placed on node cannot be handed to it yet: its
// reservation pod is not admitted by the node's kubelet (wait), or was refused (place again);
// nil when it is admitted, or when the node has no kubelet to admit it (no allocatable or no
// kubelet version: the simulated and e2e nodes).
func (r *InstanceReconciler) reservationPending(ctx context.Context, inst *v1.Instance, node string) (wait, refused *lifecycle.Refusal, err error) {
	if r.Reservations == nil {
		return nil, nil, nil
	}
	n := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, n); apierrors.IsNotFound(err) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	if len(n.Status.Allocatable) == 0 || n.Status.NodeInfo.KubeletVersion == "" {
		return nil, nil, nil
	}
	key := scheduler.ReservationKey{Namespace: inst.Namespace, Node: node}
	if why := r.Reservations.Refusal(key); why != "" {
		if strings.Contains(why, "exceeded quota") {
			return nil, &lifecycle.Refusal{Reason: v1.ReasonQuotaExceeded, Message: why}, nil
		}
		return nil, &lifecycle.Refusal{Reason: v1.ReasonReservationRefused, Message: why}, nil
	}
	at := r.Reservations.PodKey(key)
	pod := &corev1.Pod{}
	if err := r.Get(ctx, at, pod); err != nil && !apierrors.IsNotFound(err) {
		return nil, nil, err
	} else if err == nil && reservationCovers(AdmittedRequests(pod), ReservationRequests(r.Placement.Reservation(key), r.cpuRatio(ctx, node))) {
		r.reservationWaits.Delete(inst.UID)
		return nil, nil, nil
	}
	since, _ := r.reservationWaits.LoadOrStore(inst.UID, r.now())
	if waited := r.now().Sub(since.(time.Time)); waited > reservationAdmissionTimeout {
		r.reservationWaits.Delete(inst.UID)
		return nil, &lifecycle.Refusal{Reason: v1.ReasonReservationRefused, Message: fmt.Sprintf(
			"the kubelet on node %s did not admit reservation pod %s within %s", node, at, reservationAdmissionTimeout)}, nil
	}
	return &lifecycle.Refusal{Reason: v1.ReasonAwaitingReservation, Message: fmt.Sprintf(
		"placed on node %s; waiting for its kubelet to admit reservation pod %s", node, at)}, nil, nil
}

// reservationCovers says whether what a kubelet admitted holds what is wanted.
func reservationCovers(admitted, want corev1.ResourceList) bool {
	return admitted != nil && admitted.Cpu().Cmp(*want.Cpu()) >= 0 && admitted.Memory().Cmp(*want.Memory()) >= 0
}

// cpuRatio is the CPU allocation ratio of node's Hypervisor.
func (r *InstanceReconciler) cpuRatio(ctx context.Context, node string) float64 {
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, hv); err != nil {
		return scheduler.CPUAllocationRatio(nil)
	}
	return scheduler.CPUAllocationRatio(hv)
}

// instancesAwaitingReservation lists the launches a reservation pod's change may let go on.
func (r *InstanceReconciler) instancesAwaitingReservation(_ context.Context, o client.Object) []reconcile.Request {
	pod := o.(*corev1.Pod)
	if pod.Labels[ReservationLabel] != reservationHome || pod.Spec.NodeName == "" {
		return nil
	}
	var out []reconcile.Request
	for _, owner := range r.Placement.WaitingOn(scheduler.ReservationKey{Namespace: pod.Namespace, Node: pod.Spec.NodeName}) {
		out = append(out, reconcile.Request{NamespacedName: owner})
	}
	return out
}

// instancesWaitingOnQuota lists the namespace's instances that wait for a quota's room (a launch,
// an unshelve or a resize): a ResourceQuota's change may give it.
func (r *InstanceReconciler) instancesWaitingOnQuota(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.InstanceList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if c := meta.FindStatusCondition(list.Items[i].Status.Conditions, v1.ConditionReady); c != nil && c.Reason == v1.ReasonQuotaExceeded {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}
