package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// HypervisorReconciler keeps the manager's half of each Hypervisor's status: whether its agent
// is alive (from the agent's Lease) and what is placed on it (from the Instances).
type HypervisorReconciler struct {
	client.Client
	// LeaseNamespace is where agents keep their Leases.
	LeaseNamespace string
	// Grace is added to a lease's duration before its node counts as down.
	Grace time.Duration
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// AutoEvacuateAfter evacuates the instances of a node that has been down this long and is
	// fenced; 0 leaves evacuation to people (Nova has no automatic evacuation either; tools
	// such as Masakari add it).
	AutoEvacuateAfter time.Duration
	Recorder          events.EventRecorder
	// Contact follows whether the manager reaches the API server; nil judges leases alone.
	Contact *APIContact

	renewalsMu sync.Mutex
	renewals   map[string]renewal
}

// renewal is the last lease renewal seen from a node's agent, and when the manager saw it.
type renewal struct {
	renewTime time.Time
	seenAt    time.Time
}

// observeRenewal returns when the manager first saw the lease's current renewal. Judging the
// lease by the manager's own clock, as the node lifecycle controller does, keeps a node whose
// clock is wrong from looking dead (or alive) for as long as its clock is off. A restarted
// manager gives every node one full lease duration from its first look.
func (r *HypervisorReconciler) observeRenewal(node string, renewTime time.Time) time.Time {
	r.renewalsMu.Lock()
	defer r.renewalsMu.Unlock()
	if r.renewals == nil {
		r.renewals = map[string]renewal{}
	}
	last, ok := r.renewals[node]
	if !ok || !last.renewTime.Equal(renewTime) {
		last = renewal{renewTime: renewTime, seenAt: r.now()}
		r.renewals[node] = last
	}
	return last.seenAt
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=hypervisors/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch,namespace=kubenova-system
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=migrations,verbs=create

// Reconcile computes state, heartbeat, allocations and the Ready condition of one hypervisor.
func (r *HypervisorReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, req.NamespacedName, hv); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	orig := hv.DeepCopy()

	recheck, err := r.heartbeat(ctx, hv)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.allocations(ctx, hv); err != nil {
		return ctrl.Result{}, err
	}
	hv.Status.ObservedGeneration = hv.Generation
	if err := kube.PatchStatus(ctx, r.Client, orig, hv); err != nil {
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	if hv.Status.State != orig.Status.State && r.Recorder != nil {
		// A node going Down or coming back Up: what the people on call look for first.
		ready := meta.FindStatusCondition(hv.Status.Conditions, v1.ConditionReady)
		eventType := corev1.EventTypeNormal
		if hv.Status.State == v1.HypervisorDown {
			eventType = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(hv, nil, eventType, "Hypervisor"+string(hv.Status.State), "Heartbeat", "%s", ready.Message)
	}
	wait, err := r.autoEvacuate(ctx, hv)
	if err != nil {
		return ctrl.Result{}, err
	}
	if wait > 0 && (recheck == 0 || wait < recheck) {
		recheck = wait
	}
	return ctrl.Result{RequeueAfter: recheck}, nil
}

// LabelAutoEvacuation names, on a Migration the manager made, the failed node it evacuates.
const LabelAutoEvacuation = "compute.kubenova.io/auto-evacuation"

// ReasonAutoEvacuating says the manager evacuates a failed node by itself.
const ReasonAutoEvacuating = "AutoEvacuating"

// autoEvacuate creates an Evacuate Migration for each instance of a node that has been down
// for AutoEvacuateAfter and is fenced, once: an instance that has had an evacuation since the
// node went down gets no other (a failed one waits for people). It returns when to look again
// while the node is down but not down long enough.
func (r *HypervisorReconciler) autoEvacuate(ctx context.Context, hv *v1.Hypervisor) (time.Duration, error) {
	if r.AutoEvacuateAfter <= 0 || hv.Status.State != v1.HypervisorDown {
		return 0, nil
	}
	ready := meta.FindStatusCondition(hv.Status.Conditions, v1.ConditionReady)
	if ready == nil || ready.Reason != v1.ReasonHeartbeatLapsed {
		return 0, nil // up, or only not Ready: its agent may still run its guests
	}
	downSince := ready.LastTransitionTime.Time
	if wait := downSince.Add(r.AutoEvacuateAfter).Sub(r.now()); wait > 0 {
		return wait, nil
	}
	fenced := hv.Spec.ForcedDown
	node := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: hv.Name}, node); err == nil {
		fenced = fenced || slices.ContainsFunc(node.Spec.Taints, func(t corev1.Taint) bool { return t.Key == corev1.TaintNodeOutOfService })
	} else if !apierrors.IsNotFound(err) {
		return 0, err
	}
	if !fenced {
		return 0, nil // the fencing's change brings us back
	}
	var list v1.InstanceList
	if err := r.List(ctx, &list, client.MatchingFields{indexNode: hv.Name}); err != nil {
		return 0, err
	}
	for i := range list.Items {
		inst := &list.Items[i]
		if inst.Status.NodeName != hv.Name || !inst.DeletionTimestamp.IsZero() {
			continue
		}
		evacuated, err := r.evacuatedSince(ctx, inst, downSince)
		if err != nil || evacuated {
			if err != nil {
				return 0, err
			}
			continue
		}
		// Named after the failure, so that a cache that does not show it yet cannot have a
		// second one made.
		name := fmt.Sprintf("%s-evacuate-%d", inst.Name[:min(len(inst.Name), 200)], downSince.Unix())
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: name,
			Labels: map[string]string{LabelAutoEvacuation: hv.Name}},
			Spec: v1.MigrationSpec{InstanceName: inst.Name, Type: v1.MigrationEvacuate}}
		if err := r.Create(ctx, mig); apierrors.IsAlreadyExists(err) {
			continue
		} else if err != nil {
			return 0, err
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(hv, nil, corev1.EventTypeWarning, ReasonAutoEvacuating, "Evacuate",
				"node %s has been down since %s and is fenced: evacuating instance %s/%s (migration %s)",
				hv.Name, downSince.UTC().Format(time.RFC3339), inst.Namespace, inst.Name, mig.Name)
		}
	}
	return 0, nil
}

// evacuatedSince says whether the instance has an Evacuate Migration made after t, or one not
// over yet.
func (r *HypervisorReconciler) evacuatedSince(ctx context.Context, inst *v1.Instance, t time.Time) (bool, error) {
	var migs v1.MigrationList
	if err := r.List(ctx, &migs, client.InNamespace(inst.Namespace), client.MatchingFields{indexMigrationInstance: inst.Name}); err != nil {
		return false, err
	}
	for _, m := range migs.Items {
		if m.Spec.Type == v1.MigrationEvacuate && (!m.CreationTimestamp.Time.Before(t) || !migrationFinal(&m)) {
			return true, nil
		}
	}
	return false, nil
}

// heartbeat sets state Up while the agent's lease is current, Down once it lapsed, and returns
// when to look again (the moment the lease would lapse).
func (r *HypervisorReconciler) heartbeat(ctx context.Context, hv *v1.Hypervisor) (time.Duration, error) {
	lease := &coordinationv1.Lease{}
	err := r.Get(ctx, types.NamespacedName{Namespace: r.LeaseNamespace, Name: v1.AgentLeaseName(hv.Name)}, lease)
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, err
	}
	now := r.now()
	renewedEver := err == nil && lease.Spec.RenewTime != nil && lease.Spec.LeaseDurationSeconds != nil
	var expires time.Time
	if renewedEver {
		// The renewal time itself is not copied into status: that would be a write per heartbeat,
		// which is what Leases exist to avoid. Status changes only when the state does.
		seen := r.observeRenewal(hv.Name, lease.Spec.RenewTime.Time)
		expires = seen.Add(time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second + r.Grace)
	}
	cond := metav1.Condition{Type: v1.ConditionReady, ObservedGeneration: hv.Generation}
	var recheck time.Duration
	if renewedEver && !now.Before(expires) && hv.Status.State == v1.HypervisorUp {
		// A lease that lapsed while the manager could not see the API server, or before the
		// agents had a full lease to renew since it can again, is no evidence against the node.
		since, reached := r.Contact.Since()
		floor := since.Add(time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second + r.Grace)
		if !reached {
			return time.Second, nil
		}
		if now.Before(floor) {
			return floor.Sub(now) + time.Second, nil
		}
	}
	if now.Before(expires) {
		hv.Status.State = v1.HypervisorUp
		cond.Status, cond.Reason = metav1.ConditionTrue, v1.ReasonHeartbeatCurrent
		cond.Message = "the agent renews its lease"
		recheck = expires.Sub(now) + time.Second
	} else {
		hv.Status.State = v1.HypervisorDown
		cond.Status, cond.Reason = metav1.ConditionFalse, v1.ReasonHeartbeatLapsed
		cond.Message = fmt.Sprintf("no lease renewal from the agent of %s in time", hv.Name)
		if !renewedEver {
			cond.Message = fmt.Sprintf("the agent of %s has never renewed a lease", hv.Name)
		}
	}
	if hv.Status.State == v1.HypervisorUp {
		if notReady, err := r.nodeNotReady(ctx, hv.Name); err != nil {
			return 0, err
		} else if notReady != "" {
			hv.Status.State = v1.HypervisorDown
			cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, ReasonNodeNotReady, notReady
		}
	}
	meta.SetStatusCondition(&hv.Status.Conditions, cond)
	return recheck, nil
}

// nodeNotReady says why the node's kubelet reports it not Ready (or has stopped reporting:
// Unknown), "" when it does not. A hypervisor whose agent renews its lease is Down all the
// same then, so that nothing new is placed there: the node lifecycle controller's verdict
// counts as much as the agent's heartbeat. (Evacuation asks for more: a lapsed lease, see
// fencedAndDown.) A Node without a Ready condition (no kubelet reports on it) leaves the lease
// to decide.
func (r *HypervisorReconciler) nodeNotReady(ctx context.Context, name string) (string, error) {
	node := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: name}, node); apierrors.IsNotFound(err) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			return fmt.Sprintf("the agent renews its lease, but node %s is not Ready (%s: %s)", name, c.Reason, c.Message), nil
		}
	}
	return "", nil
}

// ReasonNodeNotReady says a hypervisor is down because its Node is not Ready.
const ReasonNodeNotReady = "NodeNotReady"

// allocations sums the flavors of the instances placed on the hypervisor.
func (r *HypervisorReconciler) allocations(ctx context.Context, hv *v1.Hypervisor) error {
	var list v1.InstanceList
	if err := r.List(ctx, &list, client.MatchingFields{indexNode: hv.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	var used v1.Resources
	var count int32
	for i := range list.Items {
		holds := false
		for _, c := range scheduler.Claims(&list.Items[i]) {
			if c.Node == hv.Name {
				// (A resize on its own node holds both flavors there: one instance.)
				used, holds = scheduler.Add(used, c.Resources), true
			}
		}
		if holds {
			count++
		}
	}
	hv.Status.Allocated, hv.Status.Instances = used, count
	return nil
}

func (r *HypervisorReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager watches Hypervisors, their agents' Leases and the Instances placed on them.
func (r *HypervisorReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Hypervisor{}).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			if o.GetNamespace() != r.LeaseNamespace || o.GetLabels()[v1.LabelHypervisor] == "" {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetLabels()[v1.LabelHypervisor]}}}
		})).
		Watches(&corev1.Node{}, &handler.EnqueueRequestForObject{}).
		Watches(&v1.Instance{}, handler.TypedFuncs[client.Object, reconcile.Request]{
			CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				allocationChanged(q, nil, e.Object.(*v1.Instance))
			},
			UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				allocationChanged(q, e.ObjectOld.(*v1.Instance), e.ObjectNew.(*v1.Instance))
			},
			DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				allocationChanged(q, e.Object.(*v1.Instance), nil)
			},
		}).
		Complete(r)
}

// allocationDelay is how long a Hypervisor's allocations may lag its instances. Status.allocated
// is for people and dashboards (the scheduler keeps its own sums), so a launch storm may update
// it once per node and delay rather than once per instance.
const allocationDelay = 2 * time.Second

// allocationChanged enqueues, after allocationDelay, the nodes whose allocations an instance's
// change touches; changes that touch none (most status writes) enqueue nothing. A nil old or
// inst is an instance that was created or deleted.
func allocationChanged(q workqueue.TypedRateLimitingInterface[reconcile.Request], old, inst *v1.Instance) {
	of := func(i *v1.Instance) []scheduler.Claim {
		if i == nil {
			return nil
		}
		return scheduler.Claims(i)
	}
	before, after := of(old), of(inst)
	if slices.Equal(before, after) {
		return
	}
	for _, c := range append(before, after...) {
		q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Name: c.Node}}, allocationDelay)
	}
}
