package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
)

// SnapshotReconciler carries a Snapshot through its phases: it makes the Image the snapshot
// becomes, lets the instance controller serve the request (the instance's task and
// status.snapshotRequest), and follows the upload until the image service has verified it.
type SnapshotReconciler struct {
	client.Client
	// Reader reads from the API server directly where the cache may lag behind this
	// controller's own writes (the image it just made).
	Reader   client.Reader
	Recorder events.EventRecorder
	// MissingInstanceTimeout is how long a Snapshot waits for the instance it names to exist
	// (DefaultMissingInstanceTimeout when zero).
	MissingInstanceTimeout time.Duration
	// Now is the clock; tests may replace it.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=snapshots,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=snapshots/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=snapshots/finalizers,verbs=update
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=images,verbs=create;delete

// Reasons a snapshot ends or waits.
const (
	// ReasonSnapshotSucceeded: the image is Available.
	ReasonSnapshotSucceeded = "SnapshotSucceeded"
	// ReasonInstanceNotFound: the snapshot names no instance.
	ReasonInstanceNotFound = "InstanceNotFound"
	// ReasonImageExists: an image of the snapshot's image name exists, made by someone else.
	ReasonImageExists = "ImageExists"
	// ReasonImageDeleted: the snapshot's image was deleted before the snapshot finished.
	ReasonImageDeleted = "ImageDeleted"
	// ReasonWaitingForInstance: the instance has not served the snapshot yet.
	ReasonWaitingForInstance = "WaitingForInstance"
)

// snapshotOutcome is what one reconcile found: a failure ends the snapshot.
type snapshotOutcome struct {
	reason, message string
	failed          bool
	// requeueAfter is when to look again though nothing changes (a deadline).
	requeueAfter time.Duration
}

// Reconcile advances the snapshot one step. Status is written once, at the end.
func (r *SnapshotReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	snap := &v1.Snapshot{}
	if err := r.Get(ctx, req.NamespacedName, snap); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = kube.WithOperation(ctx, string(v1.ActionSnapshot))
	if !snap.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, snap)
	}
	if snap.Spec.DeleteImageWithSnapshot && controllerutil.AddFinalizer(snap, v1.FinalizerSnapshot) {
		return ctrl.Result{}, r.Update(ctx, snap)
	}
	if snapshotFinal(snap) {
		return ctrl.Result{}, nil
	}
	orig := snap.DeepCopy()
	if snap.Status.StartTime == nil {
		now := metav1.NewTime(r.now())
		snap.Status.StartTime = &now
	}
	out, err := r.advance(ctx, snap)
	if err != nil {
		return ctrl.Result{}, err
	}
	if out.failed {
		r.fail(ctx, snap, out)
	}
	r.setConditions(snap, out)
	if err := kube.PatchStatus(ctx, r.Client, orig, snap); err != nil {
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	if snap.Status.Phase != orig.Status.Phase {
		switch snap.Status.Phase {
		case v1.SnapshotSucceeded:
			r.event(snap, corev1.EventTypeNormal, ReasonSnapshotSucceeded, "instance %s saved as image %s (%d bytes)",
				snap.Spec.InstanceName, snap.Status.ImageName, snap.Status.SizeBytes)
		case v1.SnapshotFailed:
			r.event(snap, corev1.EventTypeWarning, out.reason, "%s", out.message)
		}
	}
	return ctrl.Result{RequeueAfter: out.requeueAfter}, nil
}

// advance reads the instance and the image and sets the phase they say.
func (r *SnapshotReconciler) advance(ctx context.Context, snap *v1.Snapshot) (snapshotOutcome, error) {
	// An image the image service verified is the snapshot, whatever became of the instance
	// since (deleted right after the upload, say): it must never be thrown away.
	if snap.Status.ImageUID != "" {
		img := &v1.Image{}
		err := r.Get(ctx, types.NamespacedName{Namespace: snap.Namespace, Name: snapshotImageName(snap)}, img)
		if err == nil && string(img.UID) == snap.Status.ImageUID && img.Status.Phase == v1.ImageAvailable {
			snap.Status.Phase, snap.Status.SizeBytes = v1.SnapshotSucceeded, img.Status.SizeBytes
			return snapshotOutcome{reason: ReasonSnapshotSucceeded, message: fmt.Sprintf("image %s is Available", img.Name)}, nil
		} else if client.IgnoreNotFound(err) != nil {
			return snapshotOutcome{}, err
		}
	}
	inst := &v1.Instance{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: snap.Namespace, Name: snap.Spec.InstanceName}, inst); apierrors.IsNotFound(err) {
		left, msg := missingInstance(snap.CreationTimestamp, r.now(), r.MissingInstanceTimeout, snap.Namespace, snap.Spec.InstanceName)
		if left > 0 && (snap.Status.Phase == "" || snap.Status.Phase == v1.SnapshotPending) { // not taken yet
			return snapshotOutcome{reason: ReasonInstanceNotFound, message: msg, requeueAfter: left}, nil
		}
		return snapshotOutcome{failed: true, reason: ReasonInstanceNotFound, message: msg}, nil
	} else if err != nil {
		return snapshotOutcome{}, err
	}
	img, out, err := r.ensureImage(ctx, snap, inst)
	if err != nil || out.failed {
		return out, err
	}
	ack := inst.Status.SnapshotRequest
	if ack == nil || ack.UID != string(snap.UID) {
		snap.Status.Phase = v1.SnapshotPending
		msg := fmt.Sprintf("waiting for instance %s (%s) to take the snapshot", inst.Name, orDefaultState(inst))
		return snapshotOutcome{reason: ReasonWaitingForInstance, message: msg}, nil
	}
	switch ack.Result {
	case v1.RequestAccepted:
		snap.Status.Phase = v1.SnapshotSnapshotting
		if inst.Status.TaskState == v1.TaskStateImageUploading {
			snap.Status.Phase = v1.SnapshotUploading
		}
		return snapshotOutcome{reason: v1.ReasonTaskInProgress,
			message: fmt.Sprintf("node %s is %s", inst.Status.NodeName, map[v1.SnapshotPhase]string{
				v1.SnapshotSnapshotting: "copying the root disk", v1.SnapshotUploading: "uploading the copy"}[snap.Status.Phase])}, nil
	case v1.RequestSucceeded:
		switch img.Status.Phase {
		case v1.ImageAvailable:
			snap.Status.Phase, snap.Status.SizeBytes = v1.SnapshotSucceeded, img.Status.SizeBytes
			return snapshotOutcome{reason: ReasonSnapshotSucceeded,
				message: fmt.Sprintf("image %s is Available", img.Name)}, nil
		case v1.ImageError:
			c := meta.FindStatusCondition(img.Status.Conditions, v1.ConditionReady)
			if c != nil && retryable(c.Reason) {
				break // the image service tries the verification again
			}
			msg := "the image service refused the upload"
			if c != nil {
				msg += ": " + c.Message
			}
			return snapshotOutcome{failed: true, reason: v1.ReasonImageError, message: msg}, nil
		}
		snap.Status.Phase = v1.SnapshotUploading
		return snapshotOutcome{reason: v1.ReasonImporting, message: "the image service verifies the upload"}, nil
	default:
		reason := ack.Reason
		if reason == "" {
			reason = v1.ReasonTaskFailed
		}
		return snapshotOutcome{failed: true, reason: reason, message: ack.Message}, nil
	}
}

// ensureImage finds the Image the snapshot becomes, creating it first. An Image of that name
// that another made is never taken over.
func (r *SnapshotReconciler) ensureImage(ctx context.Context, snap *v1.Snapshot, inst *v1.Instance) (*v1.Image, snapshotOutcome, error) {
	name := snapshotImageName(snap)
	img := &v1.Image{}
	err := r.Get(ctx, types.NamespacedName{Namespace: snap.Namespace, Name: name}, img)
	switch {
	case apierrors.IsNotFound(err) && snap.Status.ImageUID != "":
		// The cache may not show the image this controller just made: ask the API server.
		if err := r.reader().Get(ctx, types.NamespacedName{Namespace: snap.Namespace, Name: name}, img); err == nil {
			return img, snapshotOutcome{}, nil
		} else if !apierrors.IsNotFound(err) {
			return nil, snapshotOutcome{}, err
		}
		return nil, snapshotOutcome{failed: true, reason: ReasonImageDeleted,
			message: fmt.Sprintf("image %s was deleted before the snapshot finished", name)}, nil
	case apierrors.IsNotFound(err):
		img = &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: snap.Namespace, Name: name,
			Labels:      map[string]string{v1.LabelSnapshot: snap.Name},
			Annotations: map[string]string{v1.AnnotationSnapshotUID: string(snap.UID)}},
			Spec: v1.ImageSpec{Source: v1.ImageSource{Snapshot: snap.Name}, DiskFormat: v1.DiskFormatQCOW2}}
		// The copy is as large as the root disk: a smaller flavor could not hold it.
		if f := inst.Status.Flavor; f != nil {
			img.Spec.MinDiskGiB = f.DiskGiB
		}
		if err := r.Create(ctx, img); err != nil {
			return nil, snapshotOutcome{}, err
		}
	case err != nil:
		return nil, snapshotOutcome{}, err
	case img.Annotations[v1.AnnotationSnapshotUID] != string(snap.UID):
		return nil, snapshotOutcome{failed: true, reason: ReasonImageExists,
			message: fmt.Sprintf("image %s exists already and was not made by this snapshot; set spec.imageName to a free name", name)}, nil
	}
	snap.Status.ImageName, snap.Status.ImageUID = name, string(img.UID)
	return img, snapshotOutcome{}, nil
}

// fail ends the snapshot. The image it made holds nothing (an Available one was taken as the
// snapshot's success before) and goes with it; a failure to delete it is logged, as the
// snapshot has failed either way.
func (r *SnapshotReconciler) fail(ctx context.Context, snap *v1.Snapshot, out snapshotOutcome) {
	snap.Status.Phase, snap.Status.Message = v1.SnapshotFailed, out.message
	if out.reason != ReasonImageExists {
		if err := r.deleteOwnImage(ctx, snap, false); err != nil {
			log.FromContext(ctx).Error(err, "delete the image of a failed snapshot", "image", snapshotImageName(snap))
		}
	}
}

// deleteOwnImage deletes the image the snapshot made, if it still has one; an Available one
// only when evenAvailable.
func (r *SnapshotReconciler) deleteOwnImage(ctx context.Context, snap *v1.Snapshot, evenAvailable bool) error {
	img := &v1.Image{}
	// Uncached: the cache may not show an image made a moment ago.
	if err := r.reader().Get(ctx, types.NamespacedName{Namespace: snap.Namespace, Name: snapshotImageName(snap)}, img); err != nil {
		return client.IgnoreNotFound(err)
	}
	if img.Annotations[v1.AnnotationSnapshotUID] != string(snap.UID) || (img.Status.Phase == v1.ImageAvailable && !evenAvailable) {
		return nil
	}
	return client.IgnoreNotFound(r.Delete(ctx, img))
}

// reader reads from the API server directly, or from the cache when no reader was given.
func (r *SnapshotReconciler) reader() client.Reader {
	if r.Reader != nil {
		return r.Reader
	}
	return r.Client
}

// setConditions: Ready when Succeeded, Stalled when Failed, Reconciling in between.
func (r *SnapshotReconciler) setConditions(snap *v1.Snapshot, out snapshotOutcome) {
	snap.Status.ObservedGeneration = snap.Generation
	if snapshotFinal(snap) {
		now := metav1.NewTime(r.now())
		snap.Status.CompletionTime = &now
	}
	setOutcomeConditions(&snap.Status.Conditions, snap.Generation, snap.Status.Phase == v1.SnapshotSucceeded,
		snap.Status.Phase == v1.SnapshotFailed, out.reason, out.message)
}

// setOutcomeConditions sets Ready, Reconciling and Stalled, as kstatus reads them, of an object
// that records one piece of work (a Snapshot, a Migration): Ready once it succeeded, Stalled
// once it failed, Reconciling in between, each with the reason and message of where it is.
func setOutcomeConditions(conds *[]metav1.Condition, gen int64, succeeded, failed bool, reason, message string) {
	ready := metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason, Message: message, ObservedGeneration: gen}
	reconciling := metav1.Condition{Type: v1.ConditionReconciling, Status: metav1.ConditionFalse, Reason: "Idle", ObservedGeneration: gen}
	stalled := metav1.Condition{Type: v1.ConditionStalled, Status: metav1.ConditionFalse, Reason: "Idle", ObservedGeneration: gen}
	switch {
	case succeeded:
		ready.Status = metav1.ConditionTrue
	case failed:
		stalled.Status, stalled.Reason, stalled.Message = metav1.ConditionTrue, reason, message
	default:
		reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, reason, message
	}
	for _, c := range []metav1.Condition{ready, reconciling, stalled} {
		meta.SetStatusCondition(conds, c)
	}
}

// reconcileDelete deletes the snapshot's image when spec.deleteImageWithSnapshot asks.
func (r *SnapshotReconciler) reconcileDelete(ctx context.Context, snap *v1.Snapshot) error {
	if !controllerutil.ContainsFinalizer(snap, v1.FinalizerSnapshot) {
		return nil
	}
	if err := r.deleteOwnImage(ctx, snap, true); err != nil {
		return err
	}
	controllerutil.RemoveFinalizer(snap, v1.FinalizerSnapshot)
	return client.IgnoreNotFound(r.Update(ctx, snap))
}

func snapshotFinal(snap *v1.Snapshot) bool {
	return snap.Status.Phase == v1.SnapshotSucceeded || snap.Status.Phase == v1.SnapshotFailed
}

func snapshotImageName(snap *v1.Snapshot) string {
	if snap.Spec.ImageName != "" {
		return snap.Spec.ImageName
	}
	return snap.Name
}

func orDefaultState(inst *v1.Instance) string {
	if inst.Status.TaskState != v1.TaskStateNone {
		return fmt.Sprintf("%s, task %s", inst.Status.VMState, inst.Status.TaskState)
	}
	if inst.Status.VMState == "" {
		return "not launched yet"
	}
	return string(inst.Status.VMState)
}

func (r *SnapshotReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *SnapshotReconciler) event(snap *v1.Snapshot, eventType, reason, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(snap, nil, eventType, reason, "Snapshot", note, args...)
	}
}

// The manager's cache indexes snapshots by their instance.
const indexSnapshotInstance = "spec.instanceName"

// IndexSnapshots adds the manager's Snapshot index to its cache.
func IndexSnapshots(ctx context.Context, mgr ctrl.Manager) error {
	return mgr.GetFieldIndexer().IndexField(ctx, &v1.Snapshot{}, indexSnapshotInstance, func(o client.Object) []string {
		return []string{o.(*v1.Snapshot).Spec.InstanceName}
	})
}

// SetupWithManager watches Snapshots, their instances and their images.
func (r *SnapshotReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Snapshot{}).
		Watches(&v1.Instance{}, handler.EnqueueRequestsFromMapFunc(r.snapshotsOfInstance)).
		Watches(&v1.Image{}, handler.EnqueueRequestsFromMapFunc(snapshotOfImage)).
		Complete(r)
}

// snapshotsOfInstance lists the unfinished snapshots of an instance.
func (r *SnapshotReconciler) snapshotsOfInstance(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.SnapshotList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexSnapshotInstance: o.GetName()},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if !snapshotFinal(&list.Items[i]) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}

// snapshotOfImage names the snapshot that made an image.
func snapshotOfImage(_ context.Context, o client.Object) []reconcile.Request {
	name, ok := o.GetLabels()[v1.LabelSnapshot]
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
}
