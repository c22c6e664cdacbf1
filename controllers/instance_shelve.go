package controllers

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// Shelve, offload and unshelve: the shelved image the instance owns (<name>-shelved), the
// offload once that image is verified, the unshelve from it, and its clean-up. It is apart
// because a shelve spans several tasks and reconciles, held together by that image.

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
