// Package controllers holds the manager's reconcilers, one per kind. They decide; the node
// agents carry out and report.
package controllers

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// DefaultInstanceWorkers is how many instances the manager reconciles at once. A reconcile
// spends most of its time waiting for its status write, so a launch storm is placed as fast as
// the API server takes writes only with many of them in flight.
const DefaultInstanceWorkers = 16

// InstanceReconciler drives each Instance through Nova's state machine: it schedules, gives the
// node agent its tasks, reads back the agent's reports and keeps status and conditions honest.
type InstanceReconciler struct {
	client.Client
	Recorder  events.EventRecorder
	Placement *scheduler.Placement
	// Pods sums, per node, what the pods bound there request; nil counts no pods.
	Pods *scheduler.PodLoad
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// MaxSchedulingBackoff caps the wait between attempts to place an instance.
	MaxSchedulingBackoff time.Duration
	// TerminateRetry is how long after a failed terminate task started a new one is given
	// (default 30 s).
	TerminateRetry time.Duration
	// APIReader reads from the API server directly: the Secrets that hold user data (nil skips
	// them), and what the cache may show late.
	APIReader client.Reader
	// SystemNamespace is kubenova's own namespace, where the user data copies are kept
	// (default kubenova-system).
	SystemNamespace string
	// userDataChecked holds the instances whose user data copy this manager has seen.
	userDataChecked sync.Map
	// ShelvedOffloadTime is how long a shelved instance keeps its domain and disks on its node
	// before they are offloaded (Nova's shelved_offload_time): 0 at once, negative never.
	ShelvedOffloadTime time.Duration
	// DefaultRescueImage is the ClusterImage a rescue boots when spec.rescue names no image;
	// empty means the instance's own image, as in Nova.
	DefaultRescueImage string
	// Workers is how many instances are reconciled at once (DefaultInstanceWorkers when zero).
	// Decisions run at once too; only their claims are taken one at a time, under the
	// Placement lock.
	Workers int
	// AllowResizeToSameHost lets a resize stay on its node when both flavors fit there (Nova's
	// allow_resize_to_same_host); otherwise it always moves, as a cold migration does.
	AllowResizeToSameHost bool
	// ResizeConfirmWindow confirms a resize that waited this long in Resized (Nova's
	// resize_confirm_window); 0 waits for a person.
	ResizeConfirmWindow time.Duration
	// BuildTimeout fails a launch that has not finished this long after it began (Nova's
	// instance_build_timeout); zero waits as long as the node keeps at it.
	BuildTimeout time.Duration
	// TaskTimeout fails a task of one node that its agent has not answered this long after it
	// began (DefaultTaskTimeout when zero, never when negative).
	TaskTimeout time.Duration
	// Images is the image store, where a resize between nodes that do not share storage leaves
	// its copy of the disk until the resize ends; nil leaves such copies alone.
	Images imagestore.Store

	// Reservations writes the reservation pods; nil leaves Kubernetes uncounted (no quotas
	// judged, no kubelet waited for).
	Reservations *ReservationReconciler
	// reservationWaits holds when each launch began waiting for its reservation's admission.
	reservationWaits sync.Map

	attempts attempts
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances/finalizers,verbs=update
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=flavors;images;clusterimages,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=hypervisors,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=snapshots;migrations;servergroups,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=images,verbs=create;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;update;delete,namespace=kubenova-system
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// step is one idempotent piece of a reconcile. It changes the instance in memory and returns a
// result when the reconcile should stop there (work in flight, or a retry due).
type step func(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error)

// reconcileState carries what the steps learn for the conditions computed at the end.
type reconcileState struct {
	refusal *lifecycle.Refusal
	waiting *lifecycle.Refusal
	// nodeDown says why the instance's node is down; empty while it is up (observeNode).
	nodeDown string
	// afterWrite holds what waits for the status write, Events and metrics (see event and
	// observe): a reconcile whose write fails tells nothing of what did not happen.
	afterWrite []func()
	// lookAgainIn is when a step wants the instance looked at again though nothing changes
	// (a deadline), without stopping the steps after it; zero for no such wish.
	lookAgainIn time.Duration
}

// lookAgain asks for the instance to be reconciled again within d.
func (st *reconcileState) lookAgain(d time.Duration) {
	if d > 0 && (st.lookAgainIn == 0 || d < st.lookAgainIn) {
		st.lookAgainIn = d
	}
}

// Reconcile reads like a table of contents: initialise, place, collect the agent's answer,
// start what the spec asks for, then summarise in conditions. Status is written once, at the end.
func (r *InstanceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	inst := &v1.Instance{}
	if err := r.Get(ctx, req.NamespacedName, inst); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = kube.WithOperation(ctx, kube.InstanceOperation(inst))
	if !inst.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, inst)
	}
	if controllerutil.AddFinalizer(inst, v1.FinalizerInstance) {
		// The finalizer must be stored before anything is placed, so that no domain can
		// outlive its Instance.
		return ctrl.Result{}, r.Update(ctx, inst)
	}

	orig := inst.DeepCopy()
	st := &reconcileState{}
	result, err := r.runSteps(ctx, inst, st,
		r.initialize,
		r.assignNetworks,
		r.schedule,
		r.scheduleUnshelve,
		r.collectReport,
		r.syncAddresses,
		r.ensureUserDataCopy,
		r.cleanUpShelvedImage,
		r.syncPowerState,
		r.checkPlacement,
		r.serveRequests,
	)
	r.observeNode(ctx, inst, st)
	r.setConditions(inst, st)
	if perr := r.sendAfter(st, r.patchStatus(ctx, orig, inst)); perr != nil {
		return kube.RetryIfStale(ctrl.Result{}, perr)
	}
	if st.lookAgainIn > 0 && (result.RequeueAfter == 0 || st.lookAgainIn < result.RequeueAfter) {
		result.RequeueAfter = st.lookAgainIn
	}
	return result, err
}

func (r *InstanceReconciler) runSteps(ctx context.Context, inst *v1.Instance, st *reconcileState, steps ...step) (ctrl.Result, error) {
	for _, s := range steps {
		res, err := s(ctx, inst, st)
		if err != nil || res != nil {
			if res == nil {
				res = &ctrl.Result{}
			}
			return *res, err
		}
	}
	return ctrl.Result{}, nil
}

// initialize puts a new instance in Building/Scheduling with its launch task.
func (r *InstanceReconciler) initialize(_ context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if inst.Status.VMState != "" {
		return nil, nil
	}
	inst.Status.VMState = v1.VMStateBuilding
	r.startTask(st, inst, v1.ActionLaunch)
	// No Event yet: the one that says where it was placed (or why it could not be) tells the
	// launch began, and a thousand launches at once cost a thousand Events fewer.
	return nil, nil
}

// sendAfter sends the reconcile's Events if its write (whose error is err) landed, and
// returns err.
func (r *InstanceReconciler) sendAfter(st *reconcileState, err error) error {
	if err == nil {
		for _, send := range st.afterWrite {
			send()
		}
	}
	return err
}

// patchStatus writes status once, only if it changed, and only over the version it was computed
// from (kube.PatchStatus): this is what keeps a stale cache from placing an instance twice. A
// write that lost its race (or whose instance is gone) surely did not land, so the claim the reconcile made is dropped; after
// any other failure (a timeout may hide a write that landed) the claim stays until the cache
// shows the instance, its next decision replaces it or the instance is deleted, and it never
// counts against that decision (Placement.Usage leaves out the instance's own claim).
func (r *InstanceReconciler) patchStatus(ctx context.Context, orig, inst *v1.Instance) error {
	err := kube.PatchStatus(ctx, r.Client, orig, inst)
	lost := errors.Is(err, kube.ErrStale) || apierrors.IsNotFound(err)
	placed := orig.Status.NodeName == "" && inst.Status.NodeName != ""
	targeted := scheduler.MigrationTarget(orig) == "" && scheduler.MigrationTarget(inst) != ""
	resized := orig.Status.Resize == nil && inst.Status.Resize != nil
	if lost && (placed || targeted || resized) {
		r.Placement.Release(inst.UID)
	}
	if errors.Is(err, kube.ErrStale) {
		log.FromContext(ctx).V(1).Info("status changed underneath; retrying")
	}
	return err
}

func (r *InstanceReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// event tells people what happened, once the reconcile's write has landed (sendAfter), so
// that a write that loses its race (and whose reconcile then decides again on fresh data)
// does not tell the same thing twice.
func (r *InstanceReconciler) event(st *reconcileState, inst *v1.Instance, eventType, reason, action, note string, args ...any) {
	if r.Recorder == nil {
		return
	}
	st.afterWrite = append(st.afterWrite, func() { r.Recorder.Eventf(inst, nil, eventType, reason, action, note, args...) })
}

// observe records a metric once the reconcile's status write lands.
func (r *InstanceReconciler) observe(st *reconcileState, record func()) {
	st.afterWrite = append(st.afterWrite, record)
}

// observeOperation records how long the task took, from its start until now.
func (r *InstanceReconciler) observeOperation(st *reconcileState, task *v1.Task, succeeded bool) {
	if task == nil {
		return
	}
	outcome := metrics.OutcomeFailed
	if succeeded {
		outcome = metrics.OutcomeSucceeded
	}
	took := r.now().Sub(task.StartedAt.Time).Seconds()
	r.observe(st, func() { metrics.OperationDuration.WithLabelValues(string(task.Action), outcome).Observe(took) })
}

// SetupWithManager watches Instances, and the Flavors, ServerGroups, Images, Hypervisors and
// Nodes that can unblock an instance waiting to be placed. The Placement follows the Instance informer.
func (r *InstanceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	informer, err := mgr.GetCache().GetInformer(context.Background(), &v1.Instance{})
	if err != nil {
		return err
	}
	registration, err := informer.AddEventHandler(r.Placement.EventHandler())
	if err != nil {
		return err
	}
	r.Placement.SetSynced(registration.HasSynced)
	podsWatch := func(b *builder.Builder) *builder.Builder { return b }
	if r.Pods != nil {
		pods, err := mgr.GetCache().GetInformer(context.Background(), &corev1.Pod{})
		if err != nil {
			return err
		}
		if _, err := pods.AddEventHandler(r.Pods.EventHandler()); err != nil {
			return err
		}
		// A pod that goes (or ends) frees room on its node for an instance that waits.
		podsWatch = func(b *builder.Builder) *builder.Builder {
			return b.Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.waitingInstances),
				builder.WithPredicates(predicate.Funcs{CreateFunc: never[event.CreateEvent], UpdateFunc: podEnded, GenericFunc: never[event.GenericEvent]})).
				// A reservation pod admitted (or refused) lets the launches it carries go on.
				Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.instancesAwaitingReservation))
		}
	}

	waiting := handler.EnqueueRequestsFromMapFunc(r.waitingInstances)
	workers := r.Workers
	if workers <= 0 {
		workers = DefaultInstanceWorkers
	}
	return podsWatch(ctrl.NewControllerManagedBy(mgr)).
		For(&v1.Instance{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Watches(&v1.Flavor{}, waiting).
		Watches(&v1.ServerGroup{}, waiting, builder.WithPredicates(predicate.Funcs{UpdateFunc: never[event.UpdateEvent]})).
		Watches(&v1.Image{}, handler.EnqueueRequestsFromMapFunc(r.instancesUsingImage)).
		Watches(&v1.ClusterImage{}, handler.EnqueueRequestsFromMapFunc(r.instancesUsingImage)).
		Watches(&v1.Snapshot{}, handler.EnqueueRequestsFromMapFunc(instanceOfSnapshot)).
		Watches(&v1.Migration{}, handler.EnqueueRequestsFromMapFunc(instanceOfMigration)).
		Watches(&v1.Hypervisor{}, waiting, builder.WithPredicates(predicate.Funcs{UpdateFunc: hypervisorMayTakeMore})).
		// A node going down or coming back changes its instances' Ready.
		Watches(&v1.Hypervisor{}, handler.EnqueueRequestsFromMapFunc(r.instancesOnNode),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: hypervisorStateChanged, CreateFunc: never[event.CreateEvent], GenericFunc: never[event.GenericEvent]})).
		Watches(&corev1.Node{}, waiting, builder.WithPredicates(predicate.Funcs{UpdateFunc: nodePlacementChanged})).
		Watches(&corev1.ResourceQuota{}, handler.EnqueueRequestsFromMapFunc(r.instancesWaitingOnQuota)).
		Complete(r)
}

// instanceOfSnapshot names the instance a Snapshot asks to save.
func instanceOfSnapshot(_ context.Context, o client.Object) []reconcile.Request {
	snap := o.(*v1.Snapshot)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: snap.Namespace, Name: snap.Spec.InstanceName}}}
}

// hypervisorMayTakeMore says whether a Hypervisor's change may let a waiting instance fit: a
// change of anything the scheduler's filters read (internal/scheduler), but not the many changes
// in which it only takes on more instances. A field left out here leaves a waiting instance to
// its backoff, up to minutes after the node could take it.
func hypervisorMayTakeMore(e event.UpdateEvent) bool {
	old, hv := e.ObjectOld.(*v1.Hypervisor), e.ObjectNew.(*v1.Hypervisor)
	return old.Generation != hv.Generation || old.Status.State != hv.Status.State ||
		old.Status.StorageUnavailable != hv.Status.StorageUnavailable ||
		old.Status.Capacity != hv.Status.Capacity || old.Status.Reserved != hv.Status.Reserved ||
		hv.Status.Instances < old.Status.Instances || !slices.Equal(old.Status.Networks, hv.Status.Networks) ||
		!slices.Equal(old.Status.Quarantined, hv.Status.Quarantined)
}

// podEnded says whether a pod's update ended it (Succeeded or Failed): kube-scheduler stops
// counting it then, and so does PodLoad.
func podEnded(e event.UpdateEvent) bool {
	ended := func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}
	return !ended(e.ObjectOld.(*corev1.Pod)) && ended(e.ObjectNew.(*corev1.Pod))
}

// hypervisorStateChanged says whether a Hypervisor went down or came back up.
func hypervisorStateChanged(e event.UpdateEvent) bool {
	return e.ObjectOld.(*v1.Hypervisor).Status.State != e.ObjectNew.(*v1.Hypervisor).Status.State
}

// never filters out every event of its kind.
func never[E any](E) bool { return false }

// requestsFor turns instances into reconcile requests.
func requestsFor(items []v1.Instance) []reconcile.Request {
	out := make([]reconcile.Request, 0, len(items))
	for i := range items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&items[i])})
	}
	return out
}

// instancesOnNode lists the instances placed on the Hypervisor's node, from an index.
func (r *InstanceReconciler) instancesOnNode(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.InstanceList
	if err := r.List(ctx, &list, client.MatchingFields{indexNode: o.GetName()}, client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	return requestsFor(list.Items)
}

// nodePlacementChanged says whether a Node's change may let a waiting instance fit: its labels,
// taints or schedulability, not its status.
func nodePlacementChanged(e event.UpdateEvent) bool {
	old, node := e.ObjectOld.(*corev1.Node), e.ObjectNew.(*corev1.Node)
	return !maps.Equal(old.Labels, node.Labels) || !equality.Semantic.DeepEqual(old.Spec, node.Spec)
}

// waitingInstances lists the instances still waiting to be placed, from an index: it runs on
// every change of a Hypervisor, Node, Flavor or Image, so it must not cost all the instances.
func (r *InstanceReconciler) waitingInstances(ctx context.Context, _ client.Object) []reconcile.Request {
	var list v1.InstanceList
	if err := r.List(ctx, &list, client.MatchingFields{indexWaiting: "true"}, client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	return requestsFor(list.Items)
}

// instancesUsingImage lists the instances that name an image that changed: waiting to be
// placed on it, rebuilt or rescued with it, or offloaded or unshelved once it is verified.
func (r *InstanceReconciler) instancesUsingImage(ctx context.Context, o client.Object) []reconcile.Request {
	kind, opts := v1.KindImage, []client.ListOption{client.InNamespace(o.GetNamespace())}
	if _, ok := o.(*v1.ClusterImage); ok {
		kind, opts = v1.KindClusterImage, nil
	}
	var list v1.InstanceList
	opts = append(opts, client.MatchingFields{indexImagesUsed: imageKey(v1.ImageReference{Kind: kind, Name: o.GetName()})}, client.UnsafeDisableDeepCopy)
	if err := r.List(ctx, &list, opts...); err != nil {
		return nil
	}
	return requestsFor(list.Items)
}

// imageKey is how the spec.image index names an image.
func imageKey(ref v1.ImageReference) string {
	return string(ref.ImageKindOrDefault()) + "/" + ref.Name
}

// The manager's cache indexes instances by node, by whether they wait to be placed, and by the
// images they wait for or boot from (spec.image, spec.rescue.image, status.shelvedImage).
const (
	indexNode       = "status.nodeName"
	indexWaiting    = "waitingToBePlaced"
	indexImagesUsed = "imagesUsed"
)

// IndexInstances adds the manager's Instance indexes to its cache.
func IndexInstances(ctx context.Context, mgr ctrl.Manager) error {
	indexer := mgr.GetFieldIndexer()
	if err := indexer.IndexField(ctx, &v1.Instance{}, indexNode, func(o client.Object) []string {
		inst := o.(*v1.Instance)
		var nodes []string
		if n := inst.Status.NodeName; n != "" {
			nodes = append(nodes, n)
		}
		// A migration's target counts the instance too, while it moves, and so does the
		// other node of a resize until it is confirmed or reverted.
		if t := scheduler.MigrationTarget(inst); t != "" && t != inst.Status.NodeName {
			nodes = append(nodes, t)
		}
		if other, ok := scheduler.ResizeOther(inst); ok && other.Node != inst.Status.NodeName {
			nodes = append(nodes, other.Node)
		}
		return nodes
	}); err != nil {
		return err
	}
	if err := indexer.IndexField(ctx, &v1.Instance{}, indexImagesUsed, func(o client.Object) []string {
		inst := o.(*v1.Instance)
		keys := []string{imageKey(inst.Spec.Image)}
		if r := inst.Spec.Rescue; r != nil && r.Image != nil {
			keys = append(keys, imageKey(*r.Image))
		}
		if s := inst.Status.ShelvedImage; s != nil {
			keys = append(keys, imageKey(*s))
		}
		return keys
	}); err != nil {
		return err
	}
	return indexer.IndexField(ctx, &v1.Instance{}, indexWaiting, func(o client.Object) []string {
		s := o.(*v1.Instance).Status
		if s.TaskState == v1.TaskStateScheduling || s.VMState == "" ||
			(s.Task != nil && s.Task.Action == v1.ActionUnshelve && s.NodeName == "") {
			return []string{"true"}
		}
		return nil
	})
}
