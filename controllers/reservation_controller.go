package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// Reservation pods carry the guests' vCPUs and memory for Kubernetes (scheduler.ReservationKey
// says which pod carries what). Each is a pause container bound to its node by spec.nodeName,
// requests equal to limits (Guaranteed, so the kubelet's eviction ranks it last), under a
// PriorityClass that nothing preempts; it is resized in place (the pods/resize subresource) as
// instances come and go, so that a burst of launches on a node costs one write, and deleted when
// it carries nothing. The kubelet admitting it is what lets a launch go on (instance_reservation.go).

const (
	// ReservationLabel marks a reservation pod; its value is "home" (a namespace's instances
	// on the node) or "moves" (the far ends of the moves in flight that concern the node).
	ReservationLabel = scheduler.ReservationLabel
	// ReservationContainer is the reservation pod's one container.
	ReservationContainer = "reserve"
	// DefaultReservationPriorityClass is the PriorityClass of reservation pods.
	DefaultReservationPriorityClass = "kubenova-guests"
	// DefaultReservationImage is the image of the reservation pods' container.
	DefaultReservationImage = "registry.k8s.io/pause:3.10"
	// reservationPriority is the highest priority a PriorityClass outside the system ones may
	// have: a guest outranks every workload pod, as a running VM cannot be rescheduled.
	reservationPriority = 1000000000

	reservationHome  = "home"
	reservationMoves = "moves"
	// movesPrefix starts the name of a moves key's request (node names have no slash).
	movesPrefix = "moves/"
)

// ReservationReconciler keeps each reservation pod's requests equal to what scheduler.Placement
// says its instances hold.
type ReservationReconciler struct {
	client.Client
	Placement *scheduler.Placement
	// SystemNamespace holds the moves' reservation pods.
	SystemNamespace string
	// Image is the reservation container's image; PriorityClass the pods' class.
	Image, PriorityClass string

	queue keyQueue
	// refusals holds, per reservation (its request), why the API server or the kubelet refused
	// its last write (a refusal): what the instances waiting on it are told.
	refusals sync.Map
	// failedAt holds, per reservation, when the kubelet last refused its pod.
	failedAt sync.Map
}

// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=pods/resize,verbs=patch
// +kubebuilder:rbac:groups=scheduling.k8s.io,resources=priorityclasses,verbs=get;create
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create

// requestFor is the reconcile request of a reservation.
func (r *ReservationReconciler) requestFor(key scheduler.ReservationKey) reconcile.Request {
	if key.Moves {
		return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: r.SystemNamespace, Name: movesPrefix + key.Node}}
	}
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: key.Namespace, Name: key.Node}}
}

// keyOf is the reservation a request names.
func keyOf(req reconcile.Request) scheduler.ReservationKey {
	if node, ok := strings.CutPrefix(req.Name, movesPrefix); ok {
		return scheduler.ReservationKey{Node: node, Moves: true}
	}
	return scheduler.ReservationKey{Namespace: req.Namespace, Node: req.Name}
}

// ReservationPodName is the name of a reservation pod: the node's name after a prefix, or a
// digest of it when that would be too long for a pod's name.
func ReservationPodName(key scheduler.ReservationKey) string {
	prefix := "kubenova-guests-"
	if key.Moves {
		prefix = "kubenova-moves-"
	}
	if len(prefix)+len(key.Node) <= 253 {
		return prefix + key.Node
	}
	sum := sha256.Sum256([]byte(key.Node))
	return prefix + hex.EncodeToString(sum[:16])
}

// podKey is where a reservation's pod is.
func (r *ReservationReconciler) podKey(key scheduler.ReservationKey) types.NamespacedName {
	ns := key.Namespace
	if key.Moves {
		ns = r.SystemNamespace
	}
	return types.NamespacedName{Namespace: ns, Name: ReservationPodName(key)}
}

// Reconcile makes the reservation pod carry what Placement says, creating, resizing or deleting
// it.
func (r *ReservationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if !r.Placement.Synced() {
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	key := keyOf(req)
	want := r.Placement.Reservation(key)
	pod := &corev1.Pod{}
	err := r.Get(ctx, r.podKey(key), pod)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	exists := err == nil
	if want == (scheduler.Reserved{}) {
		r.refusals.Delete(req)
		if !exists || (!pod.DeletionTimestamp.IsZero() && r.hasKubelet(ctx, key.Node)) {
			return ctrl.Result{}, nil // gone, or its kubelet is finishing its deletion
		}
		return ctrl.Result{}, r.deletePod(ctx, pod, key.Node)
	}
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: key.Node}, hv); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	requests := ReservationRequests(want, scheduler.CPUAllocationRatio(hv))
	switch {
	case !exists:
		if !r.nodeExists(ctx, key.Node) {
			// No Node (gone, or not registered yet): a pod bound to it would be collected by
			// Kubernetes' pod garbage collector, and made again, without end.
			return ctrl.Result{RequeueAfter: 30 * time.Second}, nil
		}
		if v, ok := r.failedAt.Load(req); ok {
			// The kubelet refused the last one: a while before the next, which it judges again.
			if wait := reservationRecreateDelay - time.Since(v.(time.Time)); wait > 0 {
				return ctrl.Result{RequeueAfter: wait}, nil
			}
		}
		if err := r.ensureDisruptionBudget(ctx, r.podKey(key).Namespace); err != nil {
			return ctrl.Result{}, err
		}
		pod = r.newPod(key, requests)
		r.ownByNode(ctx, pod, key.Node)
		err = r.Create(ctx, pod)
	case !pod.DeletionTimestamp.IsZero():
		if !r.hasKubelet(ctx, key.Node) {
			return ctrl.Result{}, r.deletePod(ctx, pod, key.Node)
		}
		return ctrl.Result{RequeueAfter: time.Second}, nil // created again once it is gone
	case pod.Status.Phase == corev1.PodFailed:
		// The kubelet refused it at admission (OutOfmemory, OutOfcpu): the waiting launches go
		// elsewhere, and a fresh pod is judged again.
		r.refusals.Store(req, refusal{byKubelet: true, message: fmt.Sprintf("the kubelet on node %s refused reservation pod %s/%s (%s: %s)",
			key.Node, pod.Namespace, pod.Name, pod.Status.Reason, pod.Status.Message)})
		r.failedAt.Store(req, time.Now())
		err = client.IgnoreNotFound(r.Delete(ctx, pod, client.Preconditions{UID: &pod.UID}))
		return ctrl.Result{}, err
	case !sameRequests(podRequests(pod), requests):
		if !r.hasAllocatable(ctx, key.Node) {
			// The API server refuses any resize of a pod on a node that reports no allocatable
			// (no kubelet: the simulated nodes); there the pod is made again.
			return ctrl.Result{}, r.deletePod(ctx, pod, key.Node)
		}
		err = r.resize(ctx, pod, requests)
	default:
		if refused := resizeRefused(pod); refused != "" {
			r.refusals.Store(req, refusal{byKubelet: true, message: fmt.Sprintf("the kubelet on node %s cannot resize reservation pod %s/%s: %s",
				key.Node, pod.Namespace, pod.Name, refused)})
		} else if !r.hasKubelet(ctx, key.Node) || reservationCovers(AdmittedRequests(pod), requests) {
			r.refusals.Delete(req)
			r.failedAt.Delete(req)
		}
		return ctrl.Result{}, nil
	}
	if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
		// A ResourceQuota (or a policy) refused it: the launches waiting on it are told why and
		// go on when a quota's change wakes them.
		r.refusals.Store(req, refusal{message: err.Error()})
		log.FromContext(ctx).Info("reservation refused", "reservation", req, "reason", err.Error())
		// A pod of another node may be about to shrink (an instance that moved): soon again.
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	if v, ok := r.refusals.Load(req); err == nil && ok && !v.(refusal).byKubelet {
		// The API server took the write; a kubelet's refusal stands until it admits the pod.
		r.refusals.Delete(req)
	}
	return ctrl.Result{}, client.IgnoreAlreadyExists(err)
}

// reservationRecreateDelay is how long after a kubelet refused a reservation pod the next is
// made.
const reservationRecreateDelay = 10 * time.Second

// refusal is why a reservation's last write, or its pod, was refused.
type refusal struct {
	message string
	// byKubelet: the kubelet refused the pod or its resize (it stands until it admits one),
	// rather than the API server its write.
	byKubelet bool
}

// nodeExists says whether node has a Node object.
func (r *ReservationReconciler) nodeExists(ctx context.Context, node string) bool {
	return r.Get(ctx, types.NamespacedName{Name: node}, &corev1.Node{}) == nil
}

// deletePod deletes a reservation pod: gracefully where a kubelet runs the node, at once where
// none does (nothing would ever finish a graceful deletion there).
func (r *ReservationReconciler) deletePod(ctx context.Context, pod *corev1.Pod, node string) error {
	opts := []client.DeleteOption{client.Preconditions{UID: &pod.UID}}
	if !r.hasKubelet(ctx, node) {
		opts = append(opts, client.GracePeriodSeconds(0))
	}
	return client.IgnoreNotFound(r.Delete(ctx, pod, opts...))
}

// hasKubelet says whether a kubelet runs node: its Node reports a kubelet version.
func (r *ReservationReconciler) hasKubelet(ctx context.Context, node string) bool {
	n := &corev1.Node{}
	return r.Get(ctx, types.NamespacedName{Name: node}, n) == nil && n.Status.NodeInfo.KubeletVersion != ""
}

// hasAllocatable says whether node's Node reports allocatable resources (a kubelet runs it).
func (r *ReservationReconciler) hasAllocatable(ctx context.Context, node string) bool {
	n := &corev1.Node{}
	return r.Get(ctx, types.NamespacedName{Name: node}, n) == nil && len(n.Status.Allocatable) > 0
}

// Refusal is why the API server or the kubelet last refused a reservation, "" when it did not.
func (r *ReservationReconciler) Refusal(key scheduler.ReservationKey) string {
	if v, ok := r.refusals.Load(r.requestFor(key)); ok {
		return v.(refusal).message
	}
	return ""
}

// PodKey is where a reservation's pod is.
func (r *ReservationReconciler) PodKey(key scheduler.ReservationKey) types.NamespacedName {
	return r.podKey(key)
}

// ReservationRequests is what a reservation pod requests (and limits itself to) for what its
// instances hold: their memory with QEMU's overhead, and their vCPUs' share at the node's CPU
// allocation ratio.
func ReservationRequests(res scheduler.Reserved, cpuRatio float64) corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(scheduler.CPUShareMilli(res.VCPUs, cpuRatio), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(res.MemoryMiB<<20, resource.BinarySI),
	}
}

// podRequests is what a reservation pod's container requests.
func podRequests(pod *corev1.Pod) corev1.ResourceList {
	for _, c := range pod.Spec.Containers {
		if c.Name == ReservationContainer {
			return c.Resources.Requests
		}
	}
	return nil
}

// sameRequests compares CPU and memory.
func sameRequests(a, b corev1.ResourceList) bool {
	return a.Cpu().Cmp(*b.Cpu()) == 0 && a.Memory().Cmp(*b.Memory()) == 0
}

// AdmittedRequests is what the kubelet has admitted of a reservation pod: the requests it
// allocated to the running container (nil while it has not).
func AdmittedRequests(pod *corev1.Pod) corev1.ResourceList {
	if pod.Status.Phase != corev1.PodRunning || !pod.DeletionTimestamp.IsZero() {
		return nil
	}
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == ReservationContainer {
			return s.AllocatedResources
		}
	}
	return nil
}

// resizeRefused says why the kubelet does not apply a pod's resize (its PodResizePending
// condition: Infeasible, or Deferred for want of room now), "" when it does.
func resizeRefused(pod *corev1.Pod) string {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodResizePending && c.Status == corev1.ConditionTrue {
			return c.Reason + ": " + c.Message
		}
	}
	return ""
}

// resize sets the pod's requests and limits through the resize subresource.
func (r *ReservationReconciler) resize(ctx context.Context, pod *corev1.Pod, requests corev1.ResourceList) error {
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"containers": []map[string]any{{
		"name": ReservationContainer, "resources": corev1.ResourceRequirements{Requests: requests, Limits: requests},
	}}}})
	if err != nil {
		return err
	}
	return r.SubResource("resize").Patch(ctx, pod, client.RawPatch(types.StrategicMergePatchType, patch))
}

// newPod is a reservation pod carrying requests.
func (r *ReservationReconciler) newPod(key scheduler.ReservationKey, requests corev1.ResourceList) *corev1.Pod {
	kind := reservationHome
	if key.Moves {
		kind = reservationMoves
	}
	at := r.podKey(key)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: at.Name, Namespace: at.Namespace,
			Labels: map[string]string{ReservationLabel: kind, "app.kubernetes.io/managed-by": "kubenova"},
			Annotations: map[string]string{"compute.kubenova.io/reserves": "the vCPUs and memory of kubenova's instances on node " +
				key.Node + "; kubenova resizes and deletes it"}},
		Spec: corev1.PodSpec{
			NodeName:          key.Node,
			PriorityClassName: r.PriorityClass,
			// A reservation stands for guests that stay when the node is tainted or cordoned.
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65535),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{
				Name: ReservationContainer, Image: r.Image, ImagePullPolicy: corev1.PullIfNotPresent,
				Resources: corev1.ResourceRequirements{Requests: requests, Limits: requests},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			}},
		},
	}
}

// ownByNode makes the pod's Node its controller, as a static pod's mirror is: kubectl drain
// then evicts it like any managed pod (it refuses to touch pods with no controller unless
// forced), and the pod goes with its Node.
func (r *ReservationReconciler) ownByNode(ctx context.Context, pod *corev1.Pod, node string) {
	n := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, n); err != nil {
		return // no Node (a node being registered): the pod stands alone
	}
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID,
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(false)}}
}

// ReservationDisruptionBudget is the PodDisruptionBudget of each namespace's reservation pods.
const ReservationDisruptionBudget = "kubenova-guests"

// ensureDisruptionBudget makes the namespace's PodDisruptionBudget over reservation pods, once:
// none may be evicted (maxUnavailable 0), so that while the manager's eviction webhook cannot
// answer a drain waits instead of taking the guests' requests from Kubernetes' sight.
func (r *ReservationReconciler) ensureDisruptionBudget(ctx context.Context, namespace string) error {
	pdb := &policyv1.PodDisruptionBudget{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: ReservationDisruptionBudget}, pdb); err == nil {
		return nil
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	pdb = &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: ReservationDisruptionBudget,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "kubenova"}},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: ptr.To(intstr.FromInt32(0)),
			Selector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: ReservationLabel, Operator: metav1.LabelSelectorOpExists}}},
		},
	}
	return client.IgnoreAlreadyExists(r.Create(ctx, pdb))
}

// EnsureReservationPriorityClass creates the reservation pods' PriorityClass if it is missing:
// high, and never preempting (a reservation stands for guests already placed by kubenova; it
// must neither push pods out nor be pushed out by them).
func EnsureReservationPriorityClass(ctx context.Context, c client.Client, name string) error {
	pc := &schedulingv1.PriorityClass{
		ObjectMeta:       metav1.ObjectMeta{Name: name},
		Value:            reservationPriority,
		PreemptionPolicy: ptr.To(corev1.PreemptNever),
		Description:      "kubenova's reservation pods: the vCPUs and memory of the virtual machines on a node",
	}
	if err := c.Create(ctx, pc); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("priority class %s: %w", name, err)
	}
	return nil
}

// SetupWithManager reconciles on Placement's changes and on the reservation pods' own.
func (r *ReservationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.Placement.OnReservationChange(func(keys []scheduler.ReservationKey) {
		for _, k := range keys {
			r.queue.add(r.requestFor(k))
		}
	})
	reservationPods := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[ReservationLabel] != "" })
	return ctrl.NewControllerManagedBy(mgr).
		Named("reservation").
		WatchesRawSource(source.Func(r.queue.start)).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.reservationOfPod), builder.WithPredicates(reservationPods)).
		Complete(r)
}

// reservationOfPod names the reservation a pod carries.
func (r *ReservationReconciler) reservationOfPod(_ context.Context, o client.Object) []reconcile.Request {
	pod := o.(*corev1.Pod)
	if pod.Spec.NodeName == "" {
		return nil
	}
	key := scheduler.ReservationKey{Namespace: pod.Namespace, Node: pod.Spec.NodeName}
	if pod.Labels[ReservationLabel] == reservationMoves {
		key = scheduler.ReservationKey{Node: pod.Spec.NodeName, Moves: true}
	}
	return []reconcile.Request{r.requestFor(key)}
}

// keyQueue hands Placement's changes to the controller's queue, keeping those that come before
// the controller starts.
type keyQueue struct {
	mu      sync.Mutex
	queue   workqueue.TypedRateLimitingInterface[reconcile.Request]
	backlog map[reconcile.Request]struct{}
}

func (q *keyQueue) add(req reconcile.Request) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.queue != nil {
		q.queue.Add(req)
		return
	}
	if q.backlog == nil {
		q.backlog = map[reconcile.Request]struct{}{}
	}
	q.backlog[req] = struct{}{}
}

func (q *keyQueue) start(_ context.Context, queue workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queue = queue
	for req := range q.backlog {
		queue.Add(req)
	}
	q.backlog = nil
	return nil
}
