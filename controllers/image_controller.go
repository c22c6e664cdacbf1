package controllers

import (
	"context"
	"errors"
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
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/kube"
)

// DefaultImportTimeout bounds one import: 64 GiB at 20 MB/s.
const DefaultImportTimeout = time.Hour

// DefaultImageWorkers is how many images the image service imports at once. An import holds a
// worker while it copies the bytes, so a few large downloads must not hold back the rest.
const DefaultImageWorkers = 4

// ImageReconciler is the image service, Glance's role, for one kind (Image or ClusterImage): it
// imports each image's bytes from its source into the image store, verifies them and says in
// status whether instances can boot from them. A node fetches only what it made available.
type ImageReconciler struct {
	client.Client
	Recorder events.EventRecorder
	Importer *imagestore.Importer
	// Kind is the kind reconciled: v1.KindImage or v1.KindClusterImage.
	Kind v1.ImageKind
	// Now is the clock; tests may replace it.
	Now func() time.Time
	// MaxRetryBackoff caps the wait between imports of an image whose source did not answer.
	MaxRetryBackoff time.Duration
	// ImportTimeout bounds one import, download included (DefaultImportTimeout when zero).
	ImportTimeout time.Duration

	attempts attempts
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=images;clusterimages,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=images/status;clusterimages/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=images/finalizers;clusterimages/finalizers,verbs=update

// Reconcile imports the image if its bytes are not in the store yet, and removes them when the
// image is deleted. Status is written once, at the end.
func (r *ImageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	img := r.newObject()
	if err := r.Get(ctx, req.NamespacedName, img); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = kube.WithOperation(ctx, "ImageImport")
	if !img.GetDeletionTimestamp().IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, img)
	}
	if controllerutil.AddFinalizer(img, v1.FinalizerImage) {
		// Stored before any byte is, so that no import outlives its image in the store.
		return ctrl.Result{}, r.Update(ctx, img)
	}
	orig := img.DeepCopyObject().(v1.ImageObject)
	// writeStatus writes what status says so far, over the version last read or written.
	writeStatus := func() error {
		img.ImageStatus().ObservedGeneration = img.GetGeneration()
		if err := kube.PatchStatus(ctx, r.Client, orig, img); err != nil {
			return err
		}
		orig = img.DeepCopyObject().(v1.ImageObject)
		return nil
	}
	result, err := r.reconcileImport(ctx, img, writeStatus)
	if perr := writeStatus(); perr != nil {
		return kube.RetryIfStale(ctrl.Result{}, perr)
	}
	return result, err
}

// reconcileImport brings the store in line with the image: nothing to do when it holds the
// verified bytes, an import otherwise.
func (r *ImageReconciler) reconcileImport(ctx context.Context, img v1.ImageObject, writeStatus func() error) (ctrl.Result, error) {
	spec, st := img.ImageSpec(), img.ImageStatus()
	key := string(img.GetUID())
	_, statErr := r.Importer.Store.Stat(ctx, key)
	if errors.Is(statErr, imagestore.ErrUnavailable) {
		return r.waitForStore(img, statErr), nil
	}
	switch st.Phase {
	case v1.ImageAvailable:
		if statErr == nil {
			r.attempts.forget(img.GetUID())
			return ctrl.Result{}, nil
		}
		if !errors.Is(statErr, imagestore.ErrNotFound) {
			return ctrl.Result{}, statErr
		}
		if uploaded(spec.Source) {
			r.setPhase(img, v1.ImageError, ReasonImageLost, "the image store lost the uploaded bytes of this image, and they cannot be uploaded again")
			return ctrl.Result{}, nil
		}
		r.event(img, corev1.EventTypeWarning, ReasonImageLost, "Import",
			"the image store no longer holds the image's bytes; importing them again from the source")
	case v1.ImageError:
		if c := meta.FindStatusCondition(st.Conditions, v1.ConditionStalled); c != nil && c.Status == metav1.ConditionTrue &&
			!retryable(c.Reason) && c.ObservedGeneration == img.GetGeneration() {
			// The source and the checksum are immutable: the same import fails the same way.
			return ctrl.Result{}, nil
		}
	}
	if uploaded(spec.Source) {
		return ctrl.Result{}, r.reconcileUpload(ctx, img)
	}
	if st.Phase != v1.ImageError {
		// Say so before the copy, which may take minutes, not after.
		r.setPhase(img, v1.ImageImporting, v1.ReasonImporting, "importing the image from "+describeSource(spec.Source))
		if err := writeStatus(); err != nil {
			return kube.RetryIfStale(ctrl.Result{}, err)
		}
	}

	timeout := r.ImportTimeout
	if timeout <= 0 {
		timeout = DefaultImportTimeout
	}
	importCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	imported, err := r.Importer.Import(importCtx, key, *spec)
	var ie *imagestore.ImportError
	if err != nil && !errors.As(err, &ie) {
		// The store itself failed (full, unmounted): nothing wrong with the image.
		ie = &imagestore.ImportError{Reason: ReasonStoreUnavailable, Retryable: true,
			Message: fmt.Sprintf("the image store failed: %v", err)}
	}
	if ie != nil {
		msg := ie.Message
		var result ctrl.Result
		if ie.Retryable {
			result.RequeueAfter = r.backoff(img.GetUID())
			msg = fmt.Sprintf("%s; trying again in %s", msg, result.RequeueAfter)
		}
		if c := meta.FindStatusCondition(st.Conditions, v1.ConditionReady); c == nil || c.Reason != ie.Reason {
			r.event(img, corev1.EventTypeWarning, ie.Reason, "Import", "%s", ie.Message)
		}
		r.setPhase(img, v1.ImageError, ie.Reason, msg)
		return result, nil
	}
	r.attempts.forget(img.GetUID())
	now := metav1.NewTime(r.now())
	st.SizeBytes, st.VirtualSizeBytes, st.Format = imported.Size, imported.Info.VirtualSize, imported.Info.Format
	st.SHA256, st.Location, st.ImportedAt = imported.SHA256, key, &now
	r.setPhase(img, v1.ImageAvailable, v1.ReasonAvailable,
		fmt.Sprintf("%d bytes of %s, sha256 verified; instances can boot from it", imported.Size, imported.Info.Format))
	r.event(img, corev1.EventTypeNormal, v1.ReasonAvailable, "Import", "imported %d bytes of %s from %s",
		imported.Size, imported.Info.Format, describeSource(spec.Source))
	return ctrl.Result{}, nil
}

// storePoll is how often an image waiting for an unavailable store looks again: nothing
// tells when a mount comes back, and a backoff would leave images waiting long after it did.
const storePoll = 10 * time.Second

// waitForStore leaves the image as it is while the store cannot say what it holds (not
// mounted yet, most likely): an Available image stays Available, since nothing shows its
// bytes are gone, and any other waits for the store. It looks again every storePoll.
func (r *ImageReconciler) waitForStore(img v1.ImageObject, err error) ctrl.Result {
	msg := fmt.Sprintf("%v; looking again every %s", err, storePoll)
	st := img.ImageStatus()
	if ready := meta.FindStatusCondition(st.Conditions, v1.ConditionReady); ready == nil || ready.Reason != ReasonStoreUnavailable {
		r.event(img, corev1.EventTypeWarning, ReasonStoreUnavailable, "Import", "%s", msg)
	}
	if st.Phase != v1.ImageAvailable {
		r.setPhase(img, v1.ImagePending, ReasonStoreUnavailable, msg)
	}
	return ctrl.Result{RequeueAfter: storePoll}
}

// uploaded says whether an image's bytes are uploaded by a node (a snapshot's, a shelved
// instance's) rather than imported from a source.
func uploaded(s v1.ImageSource) bool { return s.Snapshot != "" || s.ShelvedInstance != "" }

// reconcileUpload verifies the bytes a snapshot or a shelve uploaded, once they are in the
// store: the image service checks them as it checks a download (a standalone qcow2), and the
// digest in status is the one it computed. Until then the image waits for the upload.
func (r *ImageReconciler) reconcileUpload(ctx context.Context, img v1.ImageObject) error {
	source := img.ImageSpec().Source.Snapshot
	if r.Kind == v1.KindClusterImage {
		r.setPhase(img, v1.ImageError, imagestore.ReasonInvalidImage,
			"a ClusterImage cannot be made from a snapshot or a shelved instance, which belong to one namespace; make an Image, or a ClusterImage from a url or file")
		return nil
	}
	key := string(img.GetUID())
	_, err := r.Importer.Store.Stat(ctx, key)
	if errors.Is(err, imagestore.ErrNotFound) && img.ImageSpec().Source.ShelvedInstance != "" {
		r.setPhase(img, v1.ImagePending, ReasonWaitingForUpload,
			fmt.Sprintf("waiting for instance %s's shelve to upload the image", img.ImageSpec().Source.ShelvedInstance))
		return nil
	}
	if errors.Is(err, imagestore.ErrNotFound) {
		snap := &v1.Snapshot{}
		err := r.Get(ctx, types.NamespacedName{Namespace: img.GetNamespace(), Name: source}, snap)
		switch {
		case apierrors.IsNotFound(err):
			r.setPhase(img, v1.ImageError, ReasonSnapshotNotFound, fmt.Sprintf("snapshot %s does not exist, so nothing uploads this image", source))
		case err != nil:
			return err
		case snap.Status.ImageUID != "" && snap.Status.ImageUID != key:
			r.setPhase(img, v1.ImageError, ReasonSnapshotNotFound, fmt.Sprintf("snapshot %s uploads another image, not this one", source))
		case snap.Status.Phase == v1.SnapshotFailed:
			r.setPhase(img, v1.ImageError, ReasonSnapshotNotFound, fmt.Sprintf("snapshot %s failed: %s", source, snap.Status.Message))
		default:
			r.setPhase(img, v1.ImagePending, ReasonWaitingForUpload, fmt.Sprintf("waiting for snapshot %s to upload the image", source))
		}
		return nil
	} else if err != nil {
		return err
	}
	var info imagestore.Info
	obj, sum, err := r.Importer.Store.Verify(ctx, key, func(path, _ string) error {
		var err error
		if info, err = imagestore.Inspect(ctx, path); err != nil {
			return &imagestore.ImportError{Reason: imagestore.ReasonInspectFailed, Retryable: true,
				Message: fmt.Sprintf("qemu-img could not read the upload: %v", err)}
		}
		if err := imagestore.CheckStandalone(info, v1.DiskFormatQCOW2); err != nil {
			return &imagestore.ImportError{Reason: imagestore.ReasonInvalidImage, Message: err.Error()}
		}
		return nil
	})
	var ie *imagestore.ImportError
	if errors.As(err, &ie) {
		r.setPhase(img, v1.ImageError, ie.Reason, ie.Message)
		if ie.Retryable {
			return fmt.Errorf("verify the upload of image %s: %w", img.GetName(), err) // retried with backoff
		}
		return nil
	} else if err != nil {
		return err
	}
	st := img.ImageStatus()
	now := metav1.NewTime(r.now())
	st.SizeBytes, st.VirtualSizeBytes, st.Format = obj.Size, info.VirtualSize, info.Format
	st.SHA256, st.Location, st.ImportedAt = sum, key, &now
	from := describeSource(img.ImageSpec().Source)
	r.setPhase(img, v1.ImageAvailable, v1.ReasonAvailable,
		fmt.Sprintf("%d bytes of %s uploaded by %s, verified; instances can boot from it", obj.Size, info.Format, from))
	r.event(img, corev1.EventTypeNormal, v1.ReasonAvailable, "Import", "verified %d bytes of %s uploaded by %s", obj.Size, info.Format, from)
	return nil
}

// setPhase sets the phase and the conditions kstatus reads: Ready when Available, Reconciling
// while importing, Stalled on failure.
func (r *ImageReconciler) setPhase(img v1.ImageObject, phase v1.ImagePhase, reason, message string) {
	st := img.ImageStatus()
	st.Phase = phase
	gen := img.GetGeneration()
	ready := metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason, Message: message, ObservedGeneration: gen}
	reconciling := metav1.Condition{Type: v1.ConditionReconciling, Status: metav1.ConditionFalse, Reason: "Idle", ObservedGeneration: gen}
	stalled := metav1.Condition{Type: v1.ConditionStalled, Status: metav1.ConditionFalse, Reason: "Idle", ObservedGeneration: gen}
	switch phase {
	case v1.ImageAvailable:
		ready.Status = metav1.ConditionTrue
	case v1.ImageError:
		stalled.Status, stalled.Reason, stalled.Message = metav1.ConditionTrue, reason, message
	default:
		reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, reason, message
	}
	for _, c := range []metav1.Condition{ready, reconciling, stalled} {
		meta.SetStatusCondition(&st.Conditions, c)
	}
}

// reconcileDelete removes the image's bytes from the store, then lets the object go. Nodes
// keep their cached copies for the instances built on them, as Nova's do when a Glance image
// is deleted.
func (r *ImageReconciler) reconcileDelete(ctx context.Context, img v1.ImageObject) error {
	if !controllerutil.ContainsFinalizer(img, v1.FinalizerImage) {
		return nil
	}
	if err := r.Importer.Store.Delete(ctx, string(img.GetUID())); err != nil {
		return err
	}
	r.attempts.forget(img.GetUID())
	controllerutil.RemoveFinalizer(img, v1.FinalizerImage)
	return client.IgnoreNotFound(r.Update(ctx, img))
}

// retryable says whether an import that failed with reason may succeed if tried again
// unchanged: only when the source or the store did not answer.
func retryable(reason string) bool {
	return reason == imagestore.ReasonSourceUnreachable || reason == ReasonStoreUnavailable || reason == imagestore.ReasonInspectFailed
}

// backoff counts a failed import of an image and returns the wait before the next: from 10 s,
// doubled each time, up to MaxRetryBackoff (10 minutes by default).
func (r *ImageReconciler) backoff(uid types.UID) time.Duration {
	limit := r.MaxRetryBackoff
	if limit == 0 {
		limit = 10 * time.Minute
	}
	return r.attempts.failed(uid, 10*time.Second, limit)
}

func (r *ImageReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *ImageReconciler) event(img v1.ImageObject, eventType, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(img, nil, eventType, reason, action, note, args...)
	}
}

func (r *ImageReconciler) newObject() v1.ImageObject {
	if r.Kind == v1.KindClusterImage {
		return &v1.ClusterImage{}
	}
	return &v1.Image{}
}

// imageOfSnapshot names the image a snapshot makes.
func imageOfSnapshot(_ context.Context, o client.Object) []reconcile.Request {
	snap := o.(*v1.Snapshot)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: snap.Namespace, Name: snapshotImageName(snap)}}}
}

// shelvedImageOf names the image a shelved instance's disk is uploaded as.
func shelvedImageOf(_ context.Context, o client.Object) []reconcile.Request {
	inst := o.(*v1.Instance)
	if inst.Status.ShelvedImage == nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: inst.Namespace, Name: inst.Status.ShelvedImage.Name}}}
}

func describeSource(s v1.ImageSource) string {
	switch {
	case s.URL != "":
		return s.URL
	case s.Snapshot != "":
		return "snapshot " + s.Snapshot
	case s.ShelvedInstance != "":
		return "the shelve of instance " + s.ShelvedInstance
	}
	return s.File
}

// Reasons of the image service that the imagestore package does not name.
const (
	// ReasonStoreUnavailable: the image store could not be written or read.
	ReasonStoreUnavailable = "StoreUnavailable"
	// ReasonImageLost: the store lost an available image's bytes.
	ReasonImageLost = "ImageLost"
	// ReasonWaitingForUpload: a snapshot's image waits for the snapshot to upload its bytes.
	ReasonWaitingForUpload = "WaitingForUpload"
	// ReasonSnapshotNotFound: no snapshot will upload the image's bytes.
	ReasonSnapshotNotFound = "SnapshotNotFound"
)

// SetupWithManager watches the kind.
func (r *ImageReconciler) SetupWithManager(mgr ctrl.Manager) error {
	name := "image"
	if r.Kind == v1.KindClusterImage {
		name = "clusterimage"
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(r.newObject()).
		WithOptions(controller.Options{MaxConcurrentReconciles: DefaultImageWorkers})
	if r.Kind != v1.KindClusterImage {
		// A snapshot's progress, or a shelved instance's, tells its image when the upload is
		// there.
		b = b.Watches(&v1.Snapshot{}, handler.EnqueueRequestsFromMapFunc(imageOfSnapshot)).
			Watches(&v1.Instance{}, handler.EnqueueRequestsFromMapFunc(shelvedImageOf))
	}
	return b.Complete(r)
}
