// Package controllers holds the manager's reconcilers, one per kind. They decide; the node
// agents carry out and report.
package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	// Images is the image store, where a resize between nodes that do not share storage leaves
	// its copy of the disk until the resize ends; nil leaves such copies alone.
	Images imagestore.Store

	attempts attempts
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances/finalizers,verbs=update
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=flavors;images;clusterimages,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=hypervisors,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=snapshots;migrations,verbs=get;list;watch
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
	// afterWrite holds what waits for the status write, Events and metrics (see event and
	// observe): a reconcile whose write fails tells nothing of what did not happen.
	afterWrite []func()
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
	r.setConditions(inst, st)
	if perr := r.sendAfter(st, r.patchStatus(ctx, orig, inst)); perr != nil {
		return kube.RetryIfStale(ctrl.Result{}, perr)
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

// schedule places a building instance on a node, or says why it cannot yet and retries with
// backoff.
func (r *InstanceReconciler) schedule(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if inst.Status.TaskState != v1.TaskStateScheduling {
		return nil, nil
	}
	flavor := &v1.Flavor{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Spec.Flavor}, flavor); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, err
		}
		st.waiting = &lifecycle.Refusal{Reason: v1.ReasonFlavorNotFound,
			Message: fmt.Sprintf("flavor %q does not exist; create it or change spec.flavor", inst.Spec.Flavor)}
		return &ctrl.Result{}, nil // the Flavor watch brings us back
	}
	image, notReady, err := r.availableImage(ctx, inst.Namespace, inst.Spec.Image)
	if err != nil {
		return nil, err
	}
	if notReady != nil {
		// The Image and ClusterImage watches bring us back when it changes.
		if notReady.Reason == v1.ReasonImageError {
			st.refusal = notReady // only someone's change helps
		} else {
			st.waiting = notReady
		}
		return &ctrl.Result{}, nil
	}
	if missing, err := r.copyUserData(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return &ctrl.Result{RequeueAfter: userDataRetry}, err
	}
	if missing, err := r.networksMissing(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}, err
	}
	if msg := flavorTooSmall(flavor, image); msg != "" {
		// Nova refuses these at the API (FlavorDiskSmallerThanMinDisk, FlavorMemoryTooSmall);
		// only a change of spec.flavor or of the image helps, so the instance is Stalled.
		st.refusal = &lifecycle.Refusal{Action: v1.ActionLaunch, Reason: v1.ReasonFlavorTooSmall, Message: msg}
		return &ctrl.Result{}, nil
	}
	node, res, err := r.placeOrWait(ctx, inst, st, flavor.Spec)
	if node == "" {
		return res, err
	}
	inst.Status.NodeName = node
	inst.Status.Flavor = &v1.AppliedFlavor{Name: flavor.Name, FlavorSpec: flavor.Spec}
	inst.Status.Image = image.AppliedImage
	launch, _ := lifecycle.Lookup(v1.ActionLaunch)
	inst.Status.TaskState, _ = launch.NextTask(v1.TaskStateScheduling)
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, "Schedule", "launching with flavor %s and image %s: placed on node %s",
		flavor.Name, inst.Status.Image.Name, node)
	return nil, nil
}

// scheduleUnshelve places a shelved-offloaded instance anew for its unshelve, as Nova's unshelve
// goes through the scheduler: any node that fits its flavor and spec, not necessarily the old one.
func (r *InstanceReconciler) scheduleUnshelve(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	task := inst.Status.Task
	if task == nil || task.Action != v1.ActionUnshelve || inst.Status.NodeName != "" || inst.Status.TaskState != v1.TaskStateUnshelving {
		return nil, nil
	}
	node, res, err := r.placeOrWait(ctx, inst, st, inst.Status.Flavor.FlavorSpec)
	if node == "" {
		return res, err
	}
	inst.Status.NodeName = node
	unshelve, _ := lifecycle.Lookup(v1.ActionUnshelve)
	inst.Status.TaskState, _ = unshelve.NextTask(v1.TaskStateUnshelving)
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, "Schedule", "unshelving from image %s: placed on node %s",
		task.Image.Name, node)
	return nil, nil
}

// placeOrWait chooses a node that fits flavor and the spec's placement and says so in the
// Scheduled condition, or records why no node fits and when to try again ("" and the result
// to return).
func (r *InstanceReconciler) placeOrWait(ctx context.Context, inst *v1.Instance, st *reconcileState, flavor v1.FlavorSpec) (string, *ctrl.Result, error) {
	request := scheduler.Request{
		Resources:        scheduler.FlavorResources(flavor),
		NodeSelector:     inst.Spec.NodeSelector,
		AvailabilityZone: inst.Spec.AvailabilityZone,
		Networks:         scheduler.NetworksOf(inst),
	}
	node, err := r.place(ctx, inst, request)
	if err != nil {
		var nvh *scheduler.NoValidHost
		if !errors.As(err, &nvh) {
			return "", nil, err
		}
		st.waiting = &lifecycle.Refusal{Reason: v1.ReasonNoValidHost, Message: nvh.Error()}
		meta.SetStatusCondition(&inst.Status.Conditions, metav1.Condition{Type: v1.ConditionScheduled,
			Status: metav1.ConditionFalse, Reason: v1.ReasonNoValidHost, Message: nvh.Error(),
			ObservedGeneration: inst.Generation})
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNoValidHost, "Schedule", "%s", nvh.Error())
		r.observe(st, func() { metrics.CountNoValidHost(nvh.Blamed()) })
		return "", &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}, nil
	}
	r.attempts.forget(inst.UID)
	meta.SetStatusCondition(&inst.Status.Conditions, metav1.Condition{Type: v1.ConditionScheduled,
		Status: metav1.ConditionTrue, Reason: v1.ReasonScheduled, Message: "placed on " + node,
		ObservedGeneration: inst.Generation})
	return node, nil, nil
}

// flavorTooSmall says why a flavor cannot boot an image, or "" when it can.
func flavorTooSmall(flavor *v1.Flavor, image *resolvedImage) string {
	if d := flavor.Spec.DiskGiB; d > 0 && d < image.spec.MinDiskGiB {
		return fmt.Sprintf("flavor %s has a %d GiB disk; %s needs at least %d GiB", flavor.Name, d, image.ImageReference, image.spec.MinDiskGiB)
	}
	if m := flavor.Spec.MemoryMiB; m < image.spec.MinMemoryMiB {
		return fmt.Sprintf("flavor %s has %d MiB of memory; %s needs at least %d MiB", flavor.Name, m, image.ImageReference, image.spec.MinMemoryMiB)
	}
	return ""
}

// userDataRetry is how often an instance waiting for its user data Secret looks again: the
// manager does not watch Secrets (it reads the one it needs, uncached).
const userDataRetry = 10 * time.Second

// copyUserData copies the user data that spec.userData names into the instance's own Secret in
// kubenova's namespace (v1.UserDataCopyName), which the agent reads when it makes the guest's
// config drive: agents read no Secret of the users' namespaces. It runs where a config drive is
// made from the spec as it is now (launch, rebuild, unshelve); moves keep the copy, as Nova
// keeps an instance's user_data. It says why the user data cannot be had yet, or nil.
func (r *InstanceReconciler) copyUserData(ctx context.Context, inst *v1.Instance) (*lifecycle.Refusal, error) {
	ud := inst.Spec.UserData
	if ud == nil || r.APIReader == nil {
		return nil, nil
	}
	key := ud.Key
	if key == "" {
		key = "userdata"
	}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: ud.SecretName}, secret); apierrors.IsNotFound(err) {
		return &lifecycle.Refusal{Reason: v1.ReasonUserDataNotFound,
			Message: fmt.Sprintf("user data: secret %s does not exist in namespace %s", ud.SecretName, inst.Namespace)}, nil
	} else if err != nil {
		return nil, err
	}
	data, ok := secret.Data[key]
	if !ok {
		return &lifecycle.Refusal{Reason: v1.ReasonUserDataNotFound,
			Message: fmt.Sprintf("user data: secret %s has no key %q", ud.SecretName, key)}, nil
	}
	copied := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.systemNamespace(), Name: v1.UserDataCopyName(inst.UID),
		Labels:      map[string]string{v1.LabelInstanceUID: string(inst.UID)},
		Annotations: map[string]string{v1.AnnotationInstance: inst.Namespace + "/" + inst.Name}},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{v1.UserDataCopyKey: data}}
	err := r.Create(ctx, copied)
	if !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	existing := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(copied), existing); err != nil {
		return nil, err
	}
	if bytes.Equal(existing.Data[v1.UserDataCopyKey], data) {
		return nil, nil
	}
	existing.Data = copied.Data
	return nil, r.Update(ctx, existing)
}

// ensureUserDataCopy makes the user data copy of an instance placed before the copies existed
// (placed by an older manager), once per run of the manager: a move makes the config drive
// anew from it on the new node.
func (r *InstanceReconciler) ensureUserDataCopy(ctx context.Context, inst *v1.Instance, _ *reconcileState) (*ctrl.Result, error) {
	if inst.Spec.UserData == nil || inst.Status.NodeName == "" || r.APIReader == nil {
		return nil, nil
	}
	if _, checked := r.userDataChecked.Load(inst.UID); checked {
		return nil, nil
	}
	key := types.NamespacedName{Namespace: r.systemNamespace(), Name: v1.UserDataCopyName(inst.UID)}
	if err := r.APIReader.Get(ctx, key, &corev1.Secret{}); apierrors.IsNotFound(err) {
		// A refusal (the user's Secret is gone) is no reason to hold the instance: it runs.
		if _, err := r.copyUserData(ctx, inst); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	r.userDataChecked.Store(inst.UID, true)
	return nil, nil
}

// deleteUserDataCopy deletes the instance's copy of its user data, once its domain is gone.
func (r *InstanceReconciler) deleteUserDataCopy(ctx context.Context, inst *v1.Instance) error {
	if inst.Spec.UserData == nil || r.APIReader == nil {
		return nil
	}
	copied := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: r.systemNamespace(), Name: v1.UserDataCopyName(inst.UID)}}
	return client.IgnoreNotFound(r.Delete(ctx, copied))
}

func (r *InstanceReconciler) systemNamespace() string {
	if r.SystemNamespace == "" {
		return v1.DefaultSystemNamespace
	}
	return r.SystemNamespace
}

// resolvedImage is an Available image: what the instance records of it, and its spec.
type resolvedImage struct {
	*v1.AppliedImage
	spec v1.ImageSpec
}

// availableImage looks up the image a reference names. An image that is missing or not
// Available (yet) gives a Refusal saying so, naming the image: instances wait for their image,
// they do not fail with it. Only an image the image service verified from its own source is
// ever handed to a node.
func (r *InstanceReconciler) availableImage(ctx context.Context, namespace string, ref v1.ImageReference) (*resolvedImage, *lifecycle.Refusal, error) {
	var img v1.ImageObject = &v1.Image{}
	key := types.NamespacedName{Namespace: namespace, Name: ref.Name}
	where := "in namespace " + namespace
	if ref.ImageKindOrDefault() == v1.KindClusterImage {
		img, key, where = &v1.ClusterImage{}, types.NamespacedName{Name: ref.Name}, "in the cluster"
	}
	if err := r.Get(ctx, key, img); apierrors.IsNotFound(err) {
		return nil, &lifecycle.Refusal{Reason: v1.ReasonImageNotFound,
			Message: fmt.Sprintf("%s does not exist %s", ref, where)}, nil
	} else if err != nil {
		return nil, nil, err
	}
	st := img.ImageStatus()
	if st.Phase != v1.ImageAvailable || st.SHA256 == "" {
		phase, why := st.Phase, ""
		if phase == "" {
			phase = v1.ImagePending
		}
		if c := meta.FindStatusCondition(st.Conditions, v1.ConditionReady); c != nil && c.Message != "" {
			why = ": " + c.Message
		}
		if phase == v1.ImageError {
			return nil, &lifecycle.Refusal{Reason: v1.ReasonImageError,
				Message: fmt.Sprintf("%s failed its import%s; fix its source and create it again, or change spec.image", ref, why)}, nil
		}
		return nil, &lifecycle.Refusal{Reason: v1.ReasonImageNotReady,
			Message: fmt.Sprintf("%s is %s%s", ref, phase, why)}, nil
	}
	applied := &v1.AppliedImage{ImageReference: v1.ImageReference{Kind: ref.ImageKindOrDefault(), Name: ref.Name},
		UID: string(img.GetUID()), SHA256: st.SHA256, DiskFormat: img.ImageSpec().DiskFormat}
	if applied.DiskFormat == "" {
		applied.DiskFormat = v1.DiskFormatQCOW2
	}
	return &resolvedImage{AppliedImage: applied, spec: *img.ImageSpec()}, nil, nil
}

// place chooses a node from a snapshot of the allocations (scheduler.Placement.Usage) without
// holding the placement lock, then reserves it (scheduler.Placement.Reserve), which checks again
// under the lock that the node still fits. A choice that lost its room to a decision made
// meanwhile is made again. A decision costs in proportion to the nodes, not the instances.
func (r *InstanceReconciler) place(ctx context.Context, inst *v1.Instance, request scheduler.Request) (string, error) {
	if !r.Placement.Synced() {
		return "", errors.New("the placement has not seen every instance yet; trying again")
	}
	for attempt := 1; ; attempt++ {
		hosts, err := r.candidates(ctx)
		if err != nil {
			return "", err
		}
		used := r.Placement.Usage(inst.UID)
		for i := range hosts {
			hosts[i].Used = used[hosts[i].Name()]
		}
		node, err := scheduler.Select(hosts, request, scheduler.DefaultFilters)
		if err != nil {
			return "", err
		}
		i := slices.IndexFunc(hosts, func(h scheduler.Host) bool { return h.Name() == node })
		if r.Placement.Reserve(inst.UID, inst.ResourceVersion, hosts[i], request) {
			return node, nil
		}
		if attempt == maxPlacementAttempts {
			return "", fmt.Errorf("node %s was taken by other decisions %d times in a row; trying again later", node, attempt)
		}
	}
}

// maxPlacementAttempts bounds how often one reconcile decides again after losing its node to a
// concurrent decision; the next reconcile starts afresh.
const maxPlacementAttempts = 5

// candidates are the hosts a decision chooses from: every Hypervisor with its Node. They are
// the cache's own objects, not copies (a decision per instance must not copy every Node): the
// scheduler only reads them.
func (r *InstanceReconciler) candidates(ctx context.Context) ([]scheduler.Host, error) {
	var hvs v1.HypervisorList
	if err := r.List(ctx, &hvs, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	byName := map[string]*corev1.Node{}
	for i := range nodes.Items {
		byName[nodes.Items[i].Name] = &nodes.Items[i]
	}
	hosts := make([]scheduler.Host, 0, len(hvs.Items))
	for i := range hvs.Items {
		hosts = append(hosts, scheduler.Host{Hypervisor: &hvs.Items[i], Node: byName[hvs.Items[i].Name]})
	}
	return hosts, nil
}

// backoff counts a failed attempt to place an instance and returns the wait before the next:
// from 5 s, doubled each time, up to MaxSchedulingBackoff. A change to a Hypervisor, Node,
// Flavor or Image retries at once regardless.
func (r *InstanceReconciler) backoff(uid types.UID) time.Duration {
	limit := r.MaxSchedulingBackoff
	if limit == 0 {
		limit = 5 * time.Minute
	}
	return r.attempts.failed(uid, 5*time.Second, limit)
}

// collectReport finishes the task in flight once the node agent has answered it. A task still
// in flight lets the later steps look too: a hard reboot may interrupt it.
func (r *InstanceReconciler) collectReport(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	task, report := inst.Status.Task, inst.Status.AgentReport
	if task == nil || inst.Status.TaskState == v1.TaskStateScheduling {
		return nil, nil
	}
	if done, err := r.collectMigration(ctx, inst, st); err != nil || done {
		return nil, err
	}
	if done, err := r.collectResize(ctx, inst, st); err != nil || done {
		return nil, err
	}
	if failed, err := r.failTaskOnFencedNode(ctx, inst, st); err != nil || failed {
		return nil, err
	}
	if report == nil || report.TaskID != task.ID || report.NodeName != inst.Status.NodeName {
		followStep(inst)
		return nil, nil // the agent is still at it; its report brings us back
	}
	r.finishTask(ctx, inst, st, report.TaskResult == v1.TaskSucceeded, report.NodeName, report.Message)
	return nil, nil
}

// finishTask ends the task in flight with the outcome a node's agent reported: the vm state
// moves to the table's outcome, the requests the task served learn theirs, and status records
// what the task changed (or the fault).
func (r *InstanceReconciler) finishTask(ctx context.Context, inst *v1.Instance, st *reconcileState, succeeded bool, node, message string) {
	task := inst.Status.Task
	r.observeOperation(st, task, succeeded)
	tr, _ := lifecycle.Lookup(task.Action)
	from := inst.Status.VMState
	wasStopped, rollback := from == v1.VMStateStopped, false
	if rs := inst.Status.Resize; rs != nil {
		wasStopped, rollback = rs.PreviousVMState == v1.VMStateStopped, rs.RollingBack
	}
	inst.Status.VMState = tr.Outcome(from, succeeded, wasStopped)
	inst.Status.TaskState = v1.TaskStateNone
	inst.Status.Task = nil
	inst.Status.PeerReport = nil
	finishRequest(inst.Status.RebootRequest, task.ID, succeeded, message)
	finishRequest(inst.Status.ResizeRequest, task.ID, succeeded, message)
	finishRequest(inst.Status.RebuildRequest, task.ID, succeeded, message)
	finishObjectRequest(inst.Status.SnapshotRequest, task.ID, succeeded, message)
	finishObjectRequest(inst.Status.MigrationRequest, task.ID, succeeded, message)
	if !succeeded {
		switch {
		case task.Action == v1.ActionUnshelve && from == v1.VMStateShelvedOffloaded:
			// The next unshelve goes through the scheduler again; the failed node keeps no claim.
			inst.Status.NodeName = ""
		case task.Action == v1.ActionShelve && inst.Status.PowerState == v1.PowerStateShutdown:
			// The shelve powered the guest off before its upload failed: kubenova did that, so
			// the instance is Stopped, not changed "outside kubenova".
			inst.Status.VMState = v1.VMStateStopped
		}
		if task.Action == v1.ActionLiveMigrate {
			// The guest runs on where it ran, as Nova's rollback leaves it: no fault, and the
			// Migration tells the story.
			r.event(st, inst, corev1.EventTypeWarning, v1.ReasonTaskFailed, string(task.Action), "%s failed on %s: %s; the instance stays on %s",
				task.Action, node, message, inst.Status.NodeName)
			return
		}
		inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: fmt.Sprintf("%s failed: %s", task.Action, message),
			Time: metav1.NewTime(r.now()), Action: task.Action, ObservedGeneration: task.ObservedGeneration}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonTaskFailed, string(task.Action), "%s failed on %s: %s", task.Action, node, message)
		r.finishResizeTask(ctx, inst, st, task, false)
		return
	}
	r.finishResizeTask(ctx, inst, st, task, true)
	switch task.Action {
	case v1.ActionRebuild:
		if task.Image != nil {
			inst.Status.Image = task.Image.DeepCopy()
		}
	case v1.ActionRescue:
		inst.Status.RescueImage = task.Image.DeepCopy()
	case v1.ActionUnrescue:
		inst.Status.RescueImage = nil
	case v1.ActionShelve:
		t := metav1.NewTime(r.now())
		inst.Status.ShelvedAt = &t
	case v1.ActionShelveOffload:
		// Nova frees an offloaded instance from its node: the next unshelve places it anew.
		inst.Status.NodeName = ""
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskSucceeded, string(task.Action),
			"offloaded from node %s: domain and disks removed, resources freed", node)
	}
	if task.Action == v1.ActionLaunch && inst.Status.LaunchedAt == nil {
		t := metav1.NewTime(r.now())
		inst.Status.LaunchedAt = &t
	}
	if inst.Status.VMState != v1.VMStateError && !rollback {
		// (A rollback keeps the fault of the move it undid: the same move is not tried again
		// for the same spec.)
		inst.Status.Fault = nil
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskSucceeded, string(task.Action), "%s done on %s: %s", task.Action, node, inst.Status.VMState)
}

// syncPowerState is Nova's sync_power_states on the manager's side: when the agent reports a
// power state that does not belong to an idle instance's vm state (the guest powered itself
// off, its QEMU died, someone used virsh), the hypervisor is right. The vm state follows it and
// status.powerChange records it; powerHold says what kubenova then does about it.
func (r *InstanceReconciler) syncPowerState(_ context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	report := inst.Status.AgentReport
	if inst.Status.Task != nil || report == nil || report.NodeName != inst.Status.NodeName {
		return nil, nil
	}
	from := inst.Status.VMState
	if found, changed := lifecycle.SyncPowerState(from, inst.Status.PowerState); changed {
		inst.Status.VMState = found
		inst.Status.PowerChange = &v1.PowerChange{FromVMState: from, PowerState: inst.Status.PowerState,
			Reason: report.PowerReason, Time: metav1.NewTime(r.now()), SpecPowerState: lifecycle.Desired(&inst.Spec)}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonPowerStateChanged, "SyncPowerState",
			"node %s reports the domain %s (%s) while the instance was %s: it is %s now", inst.Status.NodeName,
			inst.Status.PowerState, report.PowerReason, from, found)
	}
	if inst.Status.PowerChange != nil && lifecycle.Reached(lifecycle.Desired(&inst.Spec), inst.Status.VMState) {
		inst.Status.PowerChange = nil
	}
	return nil, nil
}

// checkPlacement says so when the node an instance runs on no longer matches its spec's node
// selector or zone: kubenova, like Nova, does not move a placed instance by itself (a move is
// a Migration), and a silent ignore would leave the user believing the change took effect.
func (r *InstanceReconciler) checkPlacement(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if inst.Status.NodeName == "" || inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return nil, nil
	}
	node := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Status.NodeName}, node); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	request := scheduler.Request{NodeSelector: inst.Spec.NodeSelector, AvailabilityZone: inst.Spec.AvailabilityZone,
		Networks: scheduler.NetworksOf(inst)}
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: node.Name}, hv); apierrors.IsNotFound(err) {
		// No report of the node's networks to judge by.
		hv, request.Networks = &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: node.Name}}, nil
	} else if err != nil {
		return nil, err
	}
	host := scheduler.Host{Node: node, Hypervisor: hv}
	for _, f := range scheduler.PlacementFilters {
		if !f.Passes(host, request) {
			st.refusal = &lifecycle.Refusal{Action: v1.ActionLiveMigrate, Reason: ReasonPlacementMismatch,
				Message: fmt.Sprintf("node %s no longer matches the spec (%s): kubenova does not move a placed instance by itself; "+
					"migrate it (kubectl nova migrate %s --live) to a node that does", node.Name, f.Name, inst.Name)}
			return nil, nil
		}
	}
	return nil, nil
}

// ReasonPlacementMismatch says an instance's node no longer matches its spec's placement.
const ReasonPlacementMismatch = "PlacementMismatch"

// supportedActions are the actions the node agent of this version carries out; the rest are
// refused with NotSupported rather than left waiting.
var supportedActions = map[v1.Action]bool{
	v1.ActionLaunch: true, v1.ActionTerminate: true,
	v1.ActionStart: true, v1.ActionStop: true, v1.ActionReboot: true, v1.ActionHardReboot: true,
	v1.ActionPause: true, v1.ActionUnpause: true, v1.ActionSuspend: true, v1.ActionResume: true,
	v1.ActionSnapshot: true, v1.ActionRebuild: true, v1.ActionRescue: true, v1.ActionUnrescue: true,
	v1.ActionShelve: true, v1.ActionShelveOffload: true, v1.ActionUnshelve: true,
	v1.ActionLiveMigrate: true, v1.ActionEvacuate: true,
	v1.ActionResize: true, v1.ActionMigrate: true, v1.ActionConfirmResize: true, v1.ActionRevertResize: true,
}

// serveRequests starts what the spec asks for: first a one-shot reboot request (which may
// interrupt a task, as the table says), then the action that closes the gap between the spec
// and the vm state, if the state machine allows it; otherwise it records why not.
func (r *InstanceReconciler) serveRequests(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if r.serveReboot(inst, st) {
		return nil, nil
	}
	r.serveStartRequest(inst)
	if started, err := r.serveRebuildRequest(ctx, inst, st); err != nil || started {
		return nil, err
	}
	if started, err := r.serveSnapshot(ctx, inst, st); err != nil || started {
		return nil, err
	}
	if started, err := r.serveMigration(ctx, inst, st); err != nil || started {
		return nil, err
	}
	confirmLater, started, err := r.serveResize(ctx, inst, st)
	if err != nil || started {
		return nil, err
	}
	if inst.Status.RevertedFlavor != "" && inst.Spec.Flavor != inst.Status.RevertedFlavor {
		inst.Status.RevertedFlavor = "" // the spec moved on
	}
	if inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return nil, nil
	}
	if res, started, err := r.serveOffload(ctx, inst, st); err != nil || started || res != nil {
		return res, err
	}
	// The spec may ask for several changes at once (a new image and Running, say). The first
	// the state machine allows now starts; when none is allowed, the first one's refusal says
	// why, so that a power change that would make a rebuild possible is not held up by it.
	var first *lifecycle.Refusal
	held := false
	for _, action := range specActions(inst) {
		if hold := powerHold(inst, action); hold != nil {
			if first == nil {
				// The PowerStateChanged Event said so when the hypervisor made the change.
				first, held = hold, true
			}
			continue
		}
		refusal := r.refusalOf(inst, action)
		if refusal == nil {
			var err error
			switch action {
			case v1.ActionRebuild:
				_, err = r.startRebuild(ctx, inst, st)
			case v1.ActionRescue:
				err = r.startRescue(ctx, inst, st)
			case v1.ActionShelve:
				return r.startShelve(ctx, inst, st)
			case v1.ActionUnshelve:
				err = r.startUnshelve(ctx, inst, st)
			case v1.ActionResize:
				var started bool
				if started, err = r.startSpecResize(ctx, inst, st); err == nil && !started && st.refusal != nil {
					// Refused for good (a disk too small, say): a power change may still go on.
					if first == nil {
						first = st.refusal
					}
					st.refusal = nil
					continue
				}
			default:
				r.startTask(st, inst, action)
				return nil, nil
			}
			if err == nil && st.waiting != nil {
				// Some waits (a user data Secret, the default rescue image) have no watch to end them.
				return &ctrl.Result{RequeueAfter: userDataRetry}, nil
			}
			return nil, err
		}
		if first == nil {
			first = refusal
		}
	}
	if first == nil {
		st.waiting = resizedWaiting(inst)
		return confirmLater, nil
	}
	st.refusal = first
	// One Event per refusal, not one per reconcile: the Ready condition already says it.
	if ready := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady); !held && (ready == nil ||
		ready.Reason != first.Reason || ready.Message != first.Message) {
		r.event(st, inst, corev1.EventTypeWarning, first.Reason, string(first.Action), "%s", first.Message)
	}
	return nil, nil
}

// refusalOf says why a spec action may not start now, or nil when it may.
func (r *InstanceReconciler) refusalOf(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	refusal := r.check(inst, action)
	if refusal == nil && !supportedActions[action] {
		refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonNotSupported,
			Message: fmt.Sprintf("%s is not supported by this version of kubenova yet", action)}
	}
	if f := inst.Status.Fault; refusal == nil && f != nil && f.Action == action && f.ObservedGeneration == inst.Generation {
		// The same task for the same spec would fail the same way; wait for someone to act.
		refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonTaskFailed,
			Message: f.Message + "; change the spec to try again"}
	}
	if refusal == nil && action == v1.ActionResize && inst.Spec.Flavor == inst.Status.RevertedFlavor {
		refusal = &lifecycle.Refusal{Action: action, Reason: ReasonResizeReverted,
			Message: fmt.Sprintf("the resize to flavor %s was reverted; the instance keeps flavor %s: set spec.flavor to %s, or to another flavor and back, to resize again",
				inst.Spec.Flavor, inst.Status.Flavor.Name, inst.Status.Flavor.Name)}
	}
	if refusal != nil && refusal.Action == "" {
		refusal.Action = action
	}
	return refusal
}

// serveReboot answers a new spec.rebootRequest exactly once: it starts the reboot, or waits for
// the task in flight to end, or acknowledges the request as refused or ignored so that it never
// hides a later request. It says whether the instance is busy with the reboot (started now or
// waiting its turn), in which case nothing else is started.
func (r *InstanceReconciler) serveReboot(inst *v1.Instance, st *reconcileState) bool {
	req := inst.Spec.RebootRequest
	if req == nil || acknowledged(inst.Status.RebootRequest, req.RequestedAt) {
		return false
	}
	action := v1.ActionReboot
	if req.Type == v1.RebootHard {
		action = v1.ActionHardReboot
	}
	ack := &v1.RequestStatus{RequestedAt: req.RequestedAt}
	if predates(inst, req.RequestedAt) {
		ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
		ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
		inst.Status.RebootRequest = ack
		r.event(st, inst, corev1.EventTypeNormal, ack.Reason, string(action), "%s", ack.Message)
		return false
	}
	refusal := r.check(inst, action)
	switch {
	case refusal == nil:
		if task := inst.Status.Task; task != nil {
			r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskInProgress, string(action), "%s interrupts task %s", action, inst.Status.TaskState)
		}
		r.startTask(st, inst, action)
		ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
		inst.Status.RebootRequest = ack
		return true
	case refusal.Reason == v1.ReasonTaskInProgress:
		return true // served when the task in flight ends
	default:
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.RebootRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(action), "%s", refusal.Message)
		return false
	}
}

// serveRebuildRequest answers a new spec.rebuildRequest exactly once: it starts a rebuild onto
// spec.image, or waits for the task in flight (or for the image) to end, or acknowledges the
// request as refused or ignored. It says whether it started a task.
func (r *InstanceReconciler) serveRebuildRequest(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	req := inst.Spec.RebuildRequest
	if req == nil || acknowledged(inst.Status.RebuildRequest, req.RequestedAt) {
		return false, nil
	}
	ack := &v1.RequestStatus{RequestedAt: req.RequestedAt}
	if predates(inst, req.RequestedAt) {
		ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
		ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
		inst.Status.RebuildRequest = ack
		return false, nil
	}
	if inst.Status.VMState == v1.VMStateBuilding {
		return false, nil // served once the launch is done
	}
	refusal := r.check(inst, v1.ActionRebuild)
	switch {
	case refusal == nil:
		started, err := r.startRebuild(ctx, inst, st)
		if err != nil || !started {
			return false, err
		}
		ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
		inst.Status.RebuildRequest = ack
		return true, nil
	case refusal.Reason == v1.ReasonTaskInProgress:
		return false, nil
	default:
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.RebuildRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(v1.ActionRebuild), "%s", refusal.Message)
		return false, nil
	}
}

// startRebuild gives the instance a Rebuild task onto spec.image, once that image is Available
// and fits the flavor; otherwise it records why it waits. It says whether it started the task.
func (r *InstanceReconciler) startRebuild(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	image, notReady, err := r.availableImage(ctx, inst.Namespace, inst.Spec.Image)
	if err != nil {
		return false, err
	}
	if notReady != nil {
		notReady.Action = v1.ActionRebuild
		if notReady.Reason == v1.ReasonImageError {
			st.refusal = notReady
		} else {
			st.waiting = notReady
		}
		return false, nil
	}
	if f := inst.Status.Flavor; f != nil {
		flavor := &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: f.Name}, Spec: f.FlavorSpec}
		if msg := flavorTooSmall(flavor, image); msg != "" {
			st.refusal = &lifecycle.Refusal{Action: v1.ActionRebuild, Reason: v1.ReasonFlavorTooSmall, Message: msg}
			return false, nil
		}
	}
	// A rebuild makes the guest's config drive anew, from the spec as it is now.
	if missing, err := r.copyUserData(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return false, err
	}
	r.startTask(st, inst, v1.ActionRebuild)
	inst.Status.Task.Image = image.AppliedImage
	return true, nil
}

// startRescue gives the instance a Rescue task once its rescue image is Available: the one
// spec.rescue names, else the cluster's default rescue image, else the instance's own image
// (Nova's default). Otherwise it records why it waits.
func (r *InstanceReconciler) startRescue(ctx context.Context, inst *v1.Instance, st *reconcileState) error {
	ref := r.rescueImage(inst)
	image, notReady, err := r.availableImage(ctx, inst.Namespace, ref)
	if err != nil {
		return err
	}
	if notReady != nil {
		notReady.Action = v1.ActionRescue
		notReady.Message = "rescue image: " + notReady.Message
		if notReady.Reason == v1.ReasonImageError {
			st.refusal = notReady
		} else {
			st.waiting = notReady
		}
		return nil
	}
	r.startTask(st, inst, v1.ActionRescue)
	inst.Status.Task.Image = image.AppliedImage
	return nil
}

// rescueImage is the image a rescue of the instance boots.
func (r *InstanceReconciler) rescueImage(inst *v1.Instance) v1.ImageReference {
	switch {
	case inst.Spec.Rescue != nil && inst.Spec.Rescue.Image != nil:
		return *inst.Spec.Rescue.Image
	case r.DefaultRescueImage != "":
		return v1.ImageReference{Kind: v1.KindClusterImage, Name: r.DefaultRescueImage}
	case inst.Status.Image != nil:
		return inst.Status.Image.ImageReference
	}
	return inst.Spec.Image
}

// shelvedImageName is the Image a shelve of the instance saves its root disk as (Nova's
// "<server>-shelved").
func shelvedImageName(inst *v1.Instance) string { return inst.Name + "-shelved" }

// startShelve gives the instance a Shelve task: its agent powers it off cleanly, then uploads its
// root disk as the Image <name>-shelved, which the instance owns. A leftover of an earlier
// shelve is deleted first, so that an unshelve boots exactly this shelve's disk.
func (r *InstanceReconciler) startShelve(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	name := shelvedImageName(inst)
	img := &v1.Image{}
	err := r.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: name}, img)
	switch {
	case apierrors.IsNotFound(err):
		img = &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: name,
			Labels:          map[string]string{v1.LabelShelvedInstance: inst.Name},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(inst, v1.GroupVersion.WithKind("Instance"))}},
			Spec: v1.ImageSpec{Source: v1.ImageSource{ShelvedInstance: inst.Name}, DiskFormat: v1.DiskFormatQCOW2}}
		if f := inst.Status.Flavor; f != nil {
			img.Spec.MinDiskGiB = f.DiskGiB
		}
		if err := r.Create(ctx, img); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case !metav1.IsControlledBy(img, inst):
		st.refusal = &lifecycle.Refusal{Action: v1.ActionShelve, Reason: ReasonImageExists,
			Message: fmt.Sprintf("cannot shelve: image %s exists and does not belong to this instance; rename or delete it", name)}
		return nil, nil
	default:
		// Left by a shelve that did not end in an unshelve (a crash, a failed task): start afresh.
		// Unless the cache is behind: the API server may show the Shelve task that uploads to it.
		if r.APIReader != nil {
			current := &v1.Instance{}
			if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(inst), current); err != nil {
				return nil, err
			}
			if t := current.Status.Task; t != nil && t.Snapshot != nil && t.Snapshot.ImageUID == string(img.UID) {
				return &ctrl.Result{RequeueAfter: kube.StaleRetry}, nil
			}
		}
		if img.DeletionTimestamp.IsZero() {
			if err := r.Delete(ctx, img); client.IgnoreNotFound(err) != nil {
				return nil, err
			}
		}
		st.waiting = &lifecycle.Refusal{Action: v1.ActionShelve, Reason: v1.ReasonTaskInProgress,
			Message: "removing the image of an earlier shelve before shelving again"}
		return &ctrl.Result{RequeueAfter: time.Second}, nil
	}
	r.startTask(st, inst, v1.ActionShelve)
	inst.Status.Task.Snapshot = &v1.SnapshotTask{Name: name, ImageUID: string(img.UID)}
	inst.Status.ShelvedImage = &v1.ImageReference{Kind: v1.KindImage, Name: name}
	return nil, nil
}

// serveOffload offloads a shelved instance once --shelved-offload-time has passed since it was
// shelved and its shelved image is Available (verified in the image store): only then are its
// domain and disks removed from the node. It says whether it started the task, or when to look
// again.
func (r *InstanceReconciler) serveOffload(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, bool, error) {
	if inst.Status.VMState != v1.VMStateShelved || lifecycle.Desired(&inst.Spec) != v1.DesiredShelved ||
		r.ShelvedOffloadTime < 0 || inst.Status.ShelvedImage == nil {
		return nil, false, nil
	}
	if at := inst.Status.ShelvedAt; at != nil {
		if wait := at.Add(r.ShelvedOffloadTime).Sub(r.now()); wait > 0 {
			return &ctrl.Result{RequeueAfter: wait}, false, nil
		}
	}
	img := &v1.Image{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: inst.Status.ShelvedImage.Name}, img); err != nil {
		if apierrors.IsNotFound(err) {
			st.refusal = &lifecycle.Refusal{Action: v1.ActionShelveOffload, Reason: v1.ReasonImageNotFound,
				Message: fmt.Sprintf("the shelved image %s is gone, so the instance keeps its disks on node %s", img.Name, inst.Status.NodeName)}
			return nil, false, nil
		}
		return nil, false, err
	}
	switch img.Status.Phase {
	case v1.ImageAvailable:
		r.startTask(st, inst, v1.ActionShelveOffload)
		return nil, true, nil
	case v1.ImageError:
		st.refusal = &lifecycle.Refusal{Action: v1.ActionShelveOffload, Reason: v1.ReasonImageError,
			Message: fmt.Sprintf("the shelved image %s failed its verification, so the instance keeps its disks on node %s", img.Name, inst.Status.NodeName)}
	default:
		st.waiting = &lifecycle.Refusal{Action: v1.ActionShelveOffload, Reason: v1.ReasonImageNotReady,
			Message: fmt.Sprintf("offloading once the image service has verified the shelved image %s", img.Name)}
	}
	return nil, false, nil
}

// startUnshelve gives a shelved instance an Unshelve task. One still on its node boots its own
// disk there; an offloaded one boots from its shelved image (which must be Available) on a node
// the scheduler chooses anew (scheduleUnshelve).
func (r *InstanceReconciler) startUnshelve(ctx context.Context, inst *v1.Instance, st *reconcileState) error {
	if inst.Status.VMState == v1.VMStateShelved {
		r.startTask(st, inst, v1.ActionUnshelve)
		return nil
	}
	if inst.Status.ShelvedImage == nil {
		st.refusal = &lifecycle.Refusal{Action: v1.ActionUnshelve, Reason: v1.ReasonImageNotFound,
			Message: "the instance has no shelved image to unshelve from"}
		return nil
	}
	image, notReady, err := r.availableImage(ctx, inst.Namespace, *inst.Status.ShelvedImage)
	if err != nil {
		return err
	}
	if notReady != nil {
		notReady.Action = v1.ActionUnshelve
		notReady.Message = "shelved image: " + notReady.Message
		st.refusal = notReady
		return nil
	}
	// The new node makes the guest's config drive anew.
	if missing, err := r.copyUserData(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return err
	}
	r.startTask(st, inst, v1.ActionUnshelve)
	inst.Status.Task.Image = image.AppliedImage
	return nil
}

// cleanUpShelvedImage deletes the shelved image once the instance is no longer shelved (Nova
// deletes it after an unshelve) or its shelve failed: nothing will boot from it.
func (r *InstanceReconciler) cleanUpShelvedImage(ctx context.Context, inst *v1.Instance, _ *reconcileState) (*ctrl.Result, error) {
	ref := inst.Status.ShelvedImage
	task := inst.Status.Task
	if ref == nil || inst.Status.VMState == v1.VMStateShelved || inst.Status.VMState == v1.VMStateShelvedOffloaded ||
		(task != nil && (task.Action == v1.ActionShelve || task.Action == v1.ActionUnshelve)) {
		return nil, nil
	}
	if err := r.deleteShelvedImage(ctx, inst); err != nil {
		return nil, err
	}
	inst.Status.ShelvedImage, inst.Status.ShelvedAt = nil, nil
	return nil, nil
}

// deleteShelvedImage deletes the instance's shelved image, if it is the instance's own.
func (r *InstanceReconciler) deleteShelvedImage(ctx context.Context, inst *v1.Instance) error {
	img := &v1.Image{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: shelvedImageName(inst)}, img); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(img, inst) {
		return nil
	}
	return client.IgnoreNotFound(r.Delete(ctx, img))
}

// serveSnapshot starts the oldest Snapshot of the instance that waits, once the instance is
// idle, and acknowledges it in status.snapshotRequest, where the Snapshot controller reads what
// became of it; a Snapshot the state machine refuses is acknowledged as Refused, which fails
// it. One Snapshot is served at a time, and the next only once the Snapshot controller has read
// the outcome of the last (its Snapshot is finished or gone). It says whether it started a task.
func (r *InstanceReconciler) serveSnapshot(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	if inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return false, nil
	}
	var list v1.SnapshotList
	if err := r.List(ctx, &list, client.InNamespace(inst.Namespace), client.MatchingFields{indexSnapshotInstance: inst.Name}); err != nil {
		return false, err
	}
	last := inst.Status.SnapshotRequest
	var next *v1.Snapshot
	for i := range list.Items {
		snap := &list.Items[i]
		if last != nil && last.UID == string(snap.UID) {
			if !snapshotFinal(snap) {
				return false, nil // its outcome is not read yet
			}
			continue
		}
		if snapshotFinal(snap) || snap.Status.ImageUID == "" || !snap.DeletionTimestamp.IsZero() {
			continue
		}
		if next == nil || snap.CreationTimestamp.Before(&next.CreationTimestamp) ||
			(snap.CreationTimestamp.Equal(&next.CreationTimestamp) && snap.Name < next.Name) {
			next = snap
		}
	}
	if next == nil {
		return false, nil
	}
	ack := &v1.ObjectRequestStatus{Name: next.Name, UID: string(next.UID)}
	refusal := r.check(inst, v1.ActionSnapshot)
	if refusal == nil && inst.Spec.Locked && !next.Spec.OverrideLock {
		// A Snapshot is not a change of the instance's spec, so the lock policy never saw it;
		// an administrator's Snapshot says so with spec.overrideLock, which only they may set.
		refusal = &lifecycle.Refusal{Action: v1.ActionSnapshot, Reason: v1.ReasonLocked,
			Message: "cannot snapshot: the instance is locked; unlock it first, or have an administrator snapshot it with spec.overrideLock"}
	}
	switch {
	case refusal == nil:
		r.startTask(st, inst, v1.ActionSnapshot)
		inst.Status.Task.Snapshot = &v1.SnapshotTask{Name: next.Name, ImageUID: next.Status.ImageUID}
		ack.Result, ack.TaskID = v1.RequestAccepted, inst.Status.Task.ID
		inst.Status.SnapshotRequest = ack
		return true, nil
	case refusal.Reason == v1.ReasonTaskInProgress:
		return false, nil
	default:
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.SnapshotRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(v1.ActionSnapshot), "snapshot %s: %s", next.Name, refusal.Message)
		return false, nil
	}
}

// finishObjectRequest records the outcome of the task that serves an accepted Snapshot or
// Migration.
func finishObjectRequest(ack *v1.ObjectRequestStatus, taskID int64, succeeded bool, message string) {
	if ack == nil || ack.Result != v1.RequestAccepted || ack.TaskID != taskID {
		return
	}
	ack.Result, ack.Message = v1.RequestSucceeded, ""
	if !succeeded {
		ack.Result, ack.Message = v1.RequestFailed, message
	}
}

// followStep moves the task state on when the agent reports a step of a task of several: a
// snapshot whose copy is made is uploading (Nova's image_snapshot, then image_uploading).
func followStep(inst *v1.Instance) {
	task, report := inst.Status.Task, inst.Status.AgentReport
	if task == nil || report == nil || report.StepTaskID != task.ID || report.NodeName != inst.Status.NodeName {
		return
	}
	if report.Step == v1.StepUploading && inst.Status.TaskState == v1.TaskStateImageSnapshot {
		inst.Status.TaskState = v1.TaskStateImageUploading
	}
}

// serveStartRequest acknowledges a new spec.startRequest. The request itself needs no task: it
// lifts the hold on an instance that went down outside kubenova (see powerHold), and
// spec.powerState then decides.
func (r *InstanceReconciler) serveStartRequest(inst *v1.Instance) {
	req := inst.Spec.StartRequest
	if req == nil || acknowledged(inst.Status.StartRequest, req.RequestedAt) {
		return
	}
	ack := &v1.RequestStatus{RequestedAt: req.RequestedAt, Result: v1.RequestAccepted,
		Message: fmt.Sprintf("the instance moves toward spec.powerState %s again", lifecycle.Desired(&inst.Spec))}
	if predates(inst, req.RequestedAt) {
		ack.Result, ack.Reason = v1.RequestIgnored, v1.ReasonRequestPredatesInstance
		ack.Message = "the request was stamped before the instance was created, so it is not for this instance"
	} else {
		inst.Status.PowerChange = nil // the user asked again: no hold
	}
	inst.Status.StartRequest = ack
}

// acknowledged says whether status already answered the request stamped at.
func acknowledged(ack *v1.RequestStatus, at metav1.MicroTime) bool {
	return ack != nil && ack.RequestedAt.Equal(&at)
}

// predates says whether a request was stamped before the instance existed: an instance
// restored from Git (or copied from another cluster) must not act on old requests. The
// creation time has whole seconds, so a request from the second of creation counts as new.
func predates(inst *v1.Instance, at metav1.MicroTime) bool {
	return at.Time.Before(inst.CreationTimestamp.Time)
}

// finishRequest records the outcome of the task that serves an accepted request.
func finishRequest(ack *v1.RequestStatus, taskID int64, succeeded bool, message string) {
	if ack == nil || ack.Result != v1.RequestAccepted || ack.TaskID != taskID {
		return
	}
	ack.Result, ack.Message = v1.RequestSucceeded, ""
	if !succeeded {
		ack.Result, ack.Message = v1.RequestFailed, message
	}
}

// powerHold refuses a power action while a guest that went down outside kubenova (powered
// off, crashed, paused, suspended) rests there and neither spec.powerState nor a start request
// asked again since: Nova's policy, a guest that powered itself off stays off. A guest started
// behind kubenova's back is not held: the spec wins, as Nova force-stops an instance it finds
// running against its database.
func powerHold(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	pc := inst.Status.PowerChange
	if pc == nil || pc.PowerState == v1.PowerStateRunning || pc.SpecPowerState != lifecycle.Desired(&inst.Spec) {
		return nil
	}
	return &lifecycle.Refusal{Action: action, Reason: v1.ReasonPowerStateChanged,
		Message: fmt.Sprintf("the domain went %s (%s) outside kubenova at %s, leaving the instance %s; kubenova does not undo that by itself: "+
			"run kubectl nova start, or change spec.powerState, to have it %s again",
			pc.PowerState, pc.Reason, pc.Time.UTC().Format(time.RFC3339), inst.Status.VMState, lifecycle.Desired(&inst.Spec))}
}

// check asks the state machine whether action may start now. The lock is not its business
// here: the API server's lock policy (config/admission) already refused every change of a
// locked instance's spec but an administrator's, so whatever the spec asks was allowed, and an
// administrator's override is carried out as Nova's is.
func (r *InstanceReconciler) check(inst *v1.Instance, action v1.Action) *lifecycle.Refusal {
	if hold := resizeHold(inst, action); hold != nil {
		return hold
	}
	return lifecycle.Check(action, lifecycle.Situation{VMState: inst.Status.VMState, TaskState: inst.Status.TaskState})
}

// specActions are the actions the lasting fields of the spec ask for now, most pressing first:
// rescue or unrescue, resize, rebuild, then the power state.
func specActions(inst *v1.Instance) []v1.Action {
	var actions []v1.Action
	switch {
	case inst.Spec.Rescue != nil && inst.Status.VMState != v1.VMStateRescued:
		actions = append(actions, v1.ActionRescue)
	case inst.Spec.Rescue == nil && inst.Status.VMState == v1.VMStateRescued:
		actions = append(actions, v1.ActionUnrescue)
	}
	if f := inst.Status.Flavor; f != nil && inst.Spec.Flavor != f.Name && inst.Status.VMState != v1.VMStateResized {
		actions = append(actions, v1.ActionResize)
	}
	if img := inst.Status.Image; img != nil && !inst.Spec.Image.SameImage(img.ImageReference) {
		actions = append(actions, v1.ActionRebuild)
	}
	if a, due := lifecycle.PowerAction(lifecycle.Desired(&inst.Spec), inst.Status.VMState); due {
		actions = append(actions, a)
	}
	return actions
}

// startTask gives the instance a new task with a fresh ID.
func (r *InstanceReconciler) startTask(st *reconcileState, inst *v1.Instance, action v1.Action) {
	tr, _ := lifecycle.Lookup(action)
	inst.Status.LastTaskID++
	inst.Status.Task = &v1.Task{ID: inst.Status.LastTaskID, Action: action, StartedAt: metav1.NewTime(r.now()),
		ObservedGeneration: inst.Generation}
	inst.Status.TaskState = tr.FirstTask()
	switch action {
	case v1.ActionLaunch, v1.ActionTerminate:
		// A launch is told by its placement's Event (a thousand launches at once cost a
		// thousand Events fewer), a terminate by Terminating.
	default:
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTaskStarted, string(action), "%s started (task %d)", action, inst.Status.LastTaskID)
	}
}

// desiredReached says whether the instance rests where its spec asks: Rescued while spec.rescue
// is set (a rescue system runs whatever spec.powerState says), else in spec.powerState.
func desiredReached(inst *v1.Instance) bool {
	if inst.Spec.Rescue != nil {
		return inst.Status.VMState == v1.VMStateRescued
	}
	return lifecycle.Reached(lifecycle.Desired(&inst.Spec), inst.Status.VMState)
}

// setConditions summarises the instance in Ready, Reconciling and Stalled.
func (r *InstanceReconciler) setConditions(inst *v1.Instance, st *reconcileState) {
	actionDue := len(specActions(inst)) > 0
	obs := lifecycle.Observation{
		VMState:        inst.Status.VMState,
		TaskState:      inst.Status.TaskState,
		DesiredReached: desiredReached(inst) && !actionDue,
		Refusal:        st.refusal,
		Waiting:        st.waiting,
		Fault:          inst.Status.Fault,
	}
	for _, c := range lifecycle.Health(obs) {
		c.ObservedGeneration = inst.Generation
		meta.SetStatusCondition(&inst.Status.Conditions, c)
	}
	inst.Status.ObservedGeneration = inst.Generation
}

// reconcileDelete terminates the instance on its node, then lets the object go. When the node
// is gone or down, it deletes locally as Nova does: the record goes at once and the returning
// agent removes the domain and disks of instances that no longer exist. As in Reconcile, its
// Events are sent once the write that goes with them has landed.
func (r *InstanceReconciler) reconcileDelete(ctx context.Context, inst *v1.Instance) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(inst, v1.FinalizerInstance) {
		return ctrl.Result{}, nil
	}
	st := &reconcileState{}
	if inst.Status.NodeName == "" {
		return ctrl.Result{}, r.releaseAndTell(ctx, inst, st)
	}
	if down, why, err := r.nodeDown(ctx, inst.Status.NodeName); err != nil {
		return ctrl.Result{}, err
	} else if down {
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNodeDown, "Terminate",
			"node %s is down (%s): deleted locally; its agent removes the domain and disks when it returns", inst.Status.NodeName, why)
		return ctrl.Result{}, r.releaseAndTell(ctx, inst, st)
	}
	orig := inst.DeepCopy()
	task := inst.Status.Task
	if task == nil || task.Action != v1.ActionTerminate {
		r.startTask(st, inst, v1.ActionTerminate)
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTerminating, "Terminate", "terminating on node %s", inst.Status.NodeName)
		return kube.RetryIfStale(ctrl.Result{}, r.sendAfter(st, r.patchStatus(ctx, orig, inst)))
	}
	report := inst.Status.AgentReport
	if report == nil || report.TaskID != task.ID {
		// The agent is at it. Come back now and then in case its node goes down meanwhile.
		return ctrl.Result{RequeueAfter: 30 * time.Second}, nil
	}
	if report.TaskResult == v1.TaskFailed {
		// Keep the object so nothing is left behind unseen, and give the agent a new terminate
		// task (a new ID) once the retry interval has passed since the failed one started.
		retry := r.TerminateRetry
		if retry == 0 {
			retry = 30 * time.Second
		}
		if wait := task.StartedAt.Add(retry).Sub(r.now()); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonTaskFailed, "Terminate", "terminate failed on %s: %s; trying again", report.NodeName, report.Message)
		r.observeOperation(st, task, false)
		r.startTask(st, inst, v1.ActionTerminate)
		return kube.RetryIfStale(ctrl.Result{}, r.sendAfter(st, r.patchStatus(ctx, orig, inst)))
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonTerminated, "Terminate", "domain and disks removed from node %s", report.NodeName)
	r.observeOperation(st, task, true)
	return ctrl.Result{}, r.releaseAndTell(ctx, inst, st)
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

// nodeDown says whether an instance's node can no longer act: its Hypervisor or Node object is
// gone, or its agent stopped renewing its lease.
func (r *InstanceReconciler) nodeDown(ctx context.Context, node string) (bool, string, error) {
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, hv); apierrors.IsNotFound(err) {
		return true, "no Hypervisor object", nil
	} else if err != nil {
		return false, "", err
	}
	if hv.Status.State == v1.HypervisorDown {
		return true, "its agent stopped renewing its lease", nil
	}
	n := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, n); apierrors.IsNotFound(err) {
		return true, "no Node object", nil
	} else if err != nil {
		return false, "", err
	}
	return false, "", nil
}

// release drops the instance's claim, its shelved image (the garbage collector would too, as
// its owner goes), the copy of its disk a resize left in the image store, and its finalizer.
func (r *InstanceReconciler) release(ctx context.Context, inst *v1.Instance) error {
	if inst.Status.ShelvedImage != nil {
		if err := r.deleteShelvedImage(ctx, inst); err != nil {
			return err
		}
	}
	r.deleteTransfer(ctx, inst)
	if err := r.deleteUserDataCopy(ctx, inst); err != nil {
		return err
	}
	r.userDataChecked.Delete(inst.UID)
	r.Placement.Release(inst.UID)
	r.attempts.forget(inst.UID)
	if controllerutil.RemoveFinalizer(inst, v1.FinalizerInstance) {
		if err := r.Update(ctx, inst); apierrors.IsNotFound(err) {
			return errAlreadyReleased
		} else if err != nil {
			return err
		}
	}
	return nil
}

// errAlreadyReleased: another reconcile, on fresher data, released the instance first.
var errAlreadyReleased = errors.New("the instance was released already")

// releaseAndTell releases the instance, and sends the reconcile's Events and metrics only if
// its own write removed the finalizer: a reconcile of a stale copy tells nothing twice.
func (r *InstanceReconciler) releaseAndTell(ctx context.Context, inst *v1.Instance, st *reconcileState) error {
	err := r.release(ctx, inst)
	if errors.Is(err, errAlreadyReleased) {
		return nil
	}
	return r.sendAfter(st, err)
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

// SetupWithManager watches Instances, and the Flavors, Images, Hypervisors and Nodes that can
// unblock an instance waiting to be placed. The Placement follows the Instance informer.
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

	waiting := handler.EnqueueRequestsFromMapFunc(r.waitingInstances)
	workers := r.Workers
	if workers <= 0 {
		workers = DefaultInstanceWorkers
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Instance{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Watches(&v1.Flavor{}, waiting).
		Watches(&v1.Image{}, handler.EnqueueRequestsFromMapFunc(r.instancesUsingImage)).
		Watches(&v1.ClusterImage{}, handler.EnqueueRequestsFromMapFunc(r.instancesUsingImage)).
		Watches(&v1.Snapshot{}, handler.EnqueueRequestsFromMapFunc(instanceOfSnapshot)).
		Watches(&v1.Migration{}, handler.EnqueueRequestsFromMapFunc(instanceOfMigration)).
		Watches(&v1.Hypervisor{}, waiting, builder.WithPredicates(predicate.Funcs{UpdateFunc: hypervisorMayTakeMore})).
		Watches(&corev1.Node{}, waiting, builder.WithPredicates(predicate.Funcs{UpdateFunc: nodePlacementChanged})).
		Complete(r)
}

// instanceOfSnapshot names the instance a Snapshot asks to save.
func instanceOfSnapshot(_ context.Context, o client.Object) []reconcile.Request {
	snap := o.(*v1.Snapshot)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: snap.Namespace, Name: snap.Spec.InstanceName}}}
}

// hypervisorMayTakeMore says whether a Hypervisor's change may let a waiting instance fit: not
// the many changes in which it only takes on more instances.
func hypervisorMayTakeMore(e event.UpdateEvent) bool {
	old, hv := e.ObjectOld.(*v1.Hypervisor), e.ObjectNew.(*v1.Hypervisor)
	return old.Generation != hv.Generation || old.Status.State != hv.Status.State ||
		old.Status.Capacity != hv.Status.Capacity || old.Status.Reserved != hv.Status.Reserved ||
		hv.Status.Instances < old.Status.Instances || !slices.Equal(old.Status.Networks, hv.Status.Networks)
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
	out := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return out
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
	out := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return out
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
