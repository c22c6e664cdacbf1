package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Drain: `kubectl drain` of a compute node evicts its pods; the eviction of a reservation pod is
// what tells kubenova (the manager's eviction webhook, AdmitReservationEviction, records it on
// the Node and refuses the eviction with 429, which kubectl drain retries; a
// PodDisruptionBudget refuses it too while the webhook cannot answer). On a node that is both
// cordoned and asked to drain, the DrainReconciler moves each instance by its eviction strategy,
// a bounded number at a time, through Migrations of its own (labelled with the node, so
// that they are counted and shown like any other). As instances leave, the reservation pods
// shrink and are deleted; the drain's next eviction finds them gone, and it completes.
// Uncordoning the node ends the drain.

const (
	// DrainAnnotation on a Node records when an eviction of one of its reservation pods
	// asked for it to be emptied.
	DrainAnnotation = "compute.kubenova.io/drain-requested"
	// DrainLabel on a Migration names the node whose drain created it.
	DrainLabel = "compute.kubenova.io/drain"
	// drainRetry is the default of DrainReconciler.Retry: room may have appeared.
	drainRetry = 30 * time.Second
)

// DrainReconciler empties cordoned nodes that a drain asked to empty.
type DrainReconciler struct {
	client.Client
	// Reader lists the drains' Migrations uncached: a Migration created a moment ago must
	// count against the limits before the cache shows it.
	Reader client.Reader
	// DefaultStrategy applies to instances that name none.
	DefaultStrategy v1.EvictionStrategy
	// MaxPerNode bounds the moves a drain has in flight off one node; MaxInFlight those of all
	// drains at once.
	MaxPerNode, MaxInFlight int
	// Retry is how long a drain waits before it tries again to move an instance whose move
	// failed, and how often it looks at a draining node (drainRetry when zero).
	Retry time.Duration
	Now   func() time.Time
	// Recorder tells each instance that stays on a draining node why (an Event in its own
	// namespace), once per reason.
	Recorder events.EventRecorder
	told     sync.Map
}

// +kubebuilder:rbac:groups="",resources=nodes,verbs=patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=migrations,verbs=create;list;watch

// drainState is where one instance of a draining node stands.
type drainState struct {
	inst *v1.Instance
	// moving: a move off the node is in flight; stays: it will not be moved (the why says
	// why); otherwise it waits for its turn.
	moving, stays bool
	why           string
}

// Reconcile moves the instances of a draining node, within the limits.
func (r *DrainReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	node := &corev1.Node{}
	if err := r.Get(ctx, req.NamespacedName, node); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	_, asked := node.Annotations[DrainAnnotation]
	if asked && !node.Spec.Unschedulable {
		// Uncordoned: the drain is over (or was never more than an eviction).
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{DrainAnnotation: nil}}})
		return ctrl.Result{}, client.IgnoreNotFound(r.Patch(ctx, node, client.RawPatch(types.MergePatchType, patch)))
	}
	if !asked {
		return ctrl.Result{}, nil
	}
	states, inFlight, err := r.survey(ctx, node.Name, r.Reader)
	if err != nil || len(states) == 0 {
		return ctrl.Result{}, err
	}
	r.tellWhyTheyStay(node.Name, states)
	onNode := 0
	for _, s := range states {
		if s.moving {
			onNode++
		}
	}
	for _, s := range states {
		if s.moving || s.stays {
			continue
		}
		if onNode >= r.MaxPerNode || inFlight >= r.MaxInFlight {
			break
		}
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: s.inst.Namespace, GenerateName: s.inst.Name + "-drain-",
			Labels: map[string]string{DrainLabel: node.Name}},
			Spec: v1.MigrationSpec{InstanceName: s.inst.Name, Type: v1.MigrationLive, BlockMigration: v1.BlockMigrationAuto}}
		if err := r.Create(ctx, mig); err != nil {
			return ctrl.Result{}, fmt.Errorf("drain %s: move %s/%s: %w", node.Name, s.inst.Namespace, s.inst.Name, err)
		}
		log.FromContext(ctx).Info("drain: moving an instance off its node", "node", node.Name, "instance", client.ObjectKeyFromObject(s.inst), "migration", mig.Name)
		onNode++
		inFlight++
	}
	return ctrl.Result{RequeueAfter: r.Retry}, nil
}

// survey reads where each instance of a draining node stands, and how many moves all drains
// have in flight, listing the drains' Migrations through migrations (uncached where a decision
// depends on it).
func (r *DrainReconciler) survey(ctx context.Context, node string, migrations client.Reader) ([]drainState, int, error) {
	var insts v1.InstanceList
	if err := r.List(ctx, &insts, client.MatchingFields{indexNode: node}); err != nil {
		return nil, 0, err
	}
	var migs v1.MigrationList
	if err := migrations.List(ctx, &migs, client.HasLabels{DrainLabel}); err != nil {
		return nil, 0, err
	}
	inFlight := 0
	// The latest drain Migration of each instance, and how many of its drain's moves failed.
	latest := map[types.NamespacedName]*v1.Migration{}
	failures := map[types.NamespacedName]int{}
	for i := range migs.Items {
		m := &migs.Items[i]
		if !migrationFinal(m) {
			inFlight++
		}
		if m.Labels[DrainLabel] != node {
			continue
		}
		key := types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.InstanceName}
		if m.Status.Phase == v1.MigrationFailed {
			failures[key]++
		}
		if prev, ok := latest[key]; !ok || prev.CreationTimestamp.Before(&m.CreationTimestamp) {
			latest[key] = m
		}
	}
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	var states []drainState
	for i := range insts.Items {
		inst := &insts.Items[i]
		if inst.Status.NodeName != node {
			continue // only the far end of a move is here: it leaves when the move ends
		}
		s := drainState{inst: inst}
		key := client.ObjectKeyFromObject(inst)
		mig := latest[key]
		strategy := inst.Spec.EvictionStrategy
		if strategy == "" {
			strategy = r.DefaultStrategy
		}
		switch {
		case !inst.DeletionTimestamp.IsZero():
			s.moving, s.why = true, "being deleted"
		case mig != nil && !migrationFinal(mig):
			s.moving, s.why = true, "moving (migration "+mig.Name+")"
		case strategy == v1.EvictionNone:
			s.stays, s.why = true, "evictionStrategy None: it stays until it is moved or deleted"
		case mig != nil && mig.Status.Phase == v1.MigrationFailed && now.Before(failedAt(mig).Add(r.retryAfter(failures[key]))):
			s.stays, s.why = true, fmt.Sprintf("its move failed (%s: %s); tried again %s after the failure",
				mig.Status.Reason, mig.Status.Message, r.retryAfter(failures[key]))
		case inst.Status.Task != nil:
			s.why = fmt.Sprintf("waits for its %s to end", inst.Status.Task.Action)
			s.stays = true
		case inst.Status.VMState != v1.VMStateActive && inst.Status.VMState != v1.VMStatePaused:
			s.stays, s.why = true, fmt.Sprintf("it is %s: only a running or paused guest moves live; move it with kubectl nova migrate", inst.Status.VMState)
		default:
			s.why = "waits for its turn (at most a few moves at once)"
		}
		states = append(states, s)
	}
	sort.Slice(states, func(i, j int) bool {
		return client.ObjectKeyFromObject(states[i].inst).String() < client.ObjectKeyFromObject(states[j].inst).String()
	})
	return states, inFlight, nil
}

// retryAfter is how long a drain waits after the failed-th failure of an instance's move: Retry,
// doubled with each failure, at most ten minutes, so that a move that cannot succeed does not
// pile up Migrations.
func (r *DrainReconciler) retryAfter(failed int) time.Duration {
	wait := r.Retry
	for i := 1; i < failed && wait < 10*time.Minute; i++ {
		wait *= 2
	}
	return min(wait, 10*time.Minute)
}

// failedAt is when a migration ended, or when it was made if it does not say.
func failedAt(m *v1.Migration) time.Time {
	if m.Status.CompletionTime != nil {
		return m.Status.CompletionTime.Time
	}
	return m.CreationTimestamp.Time
}

// tellWhyTheyStay records on each instance that a drain cannot move now why, once per reason:
// the Event is in the instance's own namespace, where its users look (the eviction's refusal,
// which anyone who reaches the webhook could ask for, only counts them).
func (r *DrainReconciler) tellWhyTheyStay(node string, states []drainState) {
	if r.Recorder == nil {
		return
	}
	for _, s := range states {
		if !s.stays {
			r.told.Delete(s.inst.UID)
			continue
		}
		if prev, ok := r.told.Load(s.inst.UID); ok && prev.(string) == s.why {
			continue
		}
		r.told.Store(s.inst.UID, s.why)
		r.Recorder.Eventf(s.inst, nil, corev1.EventTypeWarning, ReasonDrainWaiting, "Drain", "node %s is being drained; the instance stays: %s", node, s.why)
	}
}

// ReasonDrainWaiting is the reason of the Event that tells an instance a drain of its node cannot move it now.
const ReasonDrainWaiting = "DrainWaiting"

// AdmitReservationEviction answers an eviction of a reservation pod: it records on the pod's
// Node that a drain asked for it to be emptied (unless dryRun), and says, for the refusal
// kubectl drain prints and retries, what keeps the node: the instances of the pod's namespace
// by name, the others counted only (the evicting user may not see other namespaces).
func (r *DrainReconciler) AdmitReservationEviction(ctx context.Context, pod *corev1.Pod, dryRun bool) (string, error) {
	node := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: pod.Spec.NodeName}, node); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("reservation pod %s/%s carries kubenova instances on node %s", pod.Namespace, pod.Name, node.Name)
	if !node.Spec.Unschedulable {
		// Not a drain (or not yet): nothing is recorded, so that a bare eviction, or a forged
		// review, moves nothing.
		return msg + "; kubenova moves them only off a cordoned node (kubectl cordon " + node.Name + ", or kubectl drain)", nil
	}
	if _, asked := node.Annotations[DrainAnnotation]; !asked && !dryRun {
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{
			DrainAnnotation: time.Now().UTC().Format(time.RFC3339)}}})
		if err := r.Patch(ctx, node, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return "", err
		}
	}
	// The cache is recent enough to say what is left; the decisions read fresh data.
	states, _, err := r.survey(ctx, node.Name, r.Client)
	if err != nil {
		return "", err
	}
	moving, waiting, none, cannot := 0, 0, 0, 0
	for _, s := range states {
		switch {
		case s.moving:
			moving++
		case !s.stays:
			waiting++
		case strings.HasPrefix(s.why, "evictionStrategy None"):
			none++
		default:
			cannot++
		}
	}
	return msg + fmt.Sprintf(": %d left (%d moving, %d waiting for their turn, %d with evictionStrategy None, %d that cannot move now); "+
		"the pod goes once they have left; each instance that stays says why in an Event (reason %s)",
		len(states), moving, waiting, none, cannot, ReasonDrainWaiting), nil
}

// SetupWithManager watches Nodes, the drains' Migrations and the instances.
func (r *DrainReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.MaxPerNode <= 0 {
		r.MaxPerNode = 2
	}
	if r.MaxInFlight <= 0 {
		r.MaxInFlight = 5
	}
	if r.DefaultStrategy == "" {
		r.DefaultStrategy = v1.EvictionLiveMigrate
	}
	if r.Retry <= 0 {
		r.Retry = drainRetry
	}
	drained := predicate.NewPredicateFuncs(func(o client.Object) bool { _, ok := o.GetAnnotations()[DrainAnnotation]; return ok })
	return ctrl.NewControllerManagedBy(mgr).
		Named("drain").
		For(&corev1.Node{}, builder.WithPredicates(drained)).
		// A drain's move that ends may let the next one start, on any draining node.
		Watches(&v1.Migration{}, handler.EnqueueRequestsFromMapFunc(r.drainingNodes),
			builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[DrainLabel] != "" }))).
		// A spec change (its eviction strategy) may let an instance of a draining node move.
		Watches(&v1.Instance{}, handler.EnqueueRequestsFromMapFunc(r.nodeOfInstance),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Complete(r)
}

// nodeOfInstance names the node of an instance, if a drain asked for it.
func (r *DrainReconciler) nodeOfInstance(ctx context.Context, o client.Object) []reconcile.Request {
	name := o.(*v1.Instance).Status.NodeName
	node := &corev1.Node{}
	if name == "" || r.Get(ctx, types.NamespacedName{Name: name}, node) != nil {
		return nil
	}
	if _, ok := node.Annotations[DrainAnnotation]; !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: name}}}
}

// drainingNodes lists the nodes asked to drain.
func (r *DrainReconciler) drainingNodes(ctx context.Context, _ client.Object) []reconcile.Request {
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, n := range nodes.Items {
		if _, ok := n.Annotations[DrainAnnotation]; ok {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: n.Name}})
		}
	}
	return out
}
