package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/storage"
)

// A resize or cold migration on the node's side (see the manager's instance_resize.go): the
// source powers the guest off and sets its disk aside as disk.resize-<task>, beside where the
// disk was (named by the resize's task, so that no other move's leftover is ever taken for it), uploading a standalone copy when the target does not share its storage; the target
// builds its disk from that copy, sized for the new flavor, and boots it. The source's copy
// stays until a confirmation deletes it or a revert puts it back. File names say how far each
// step got, so that an agent that dies anywhere finishes the step when it starts again.

// The files of a resize, beside the root disk.
const (
	// resizeCopySuffix names the target's copy while it is being made.
	resizeCopySuffix = ".resizing"
	// transferSuffix names the standalone copy the source uploads.
	transferSuffix = ".transfer"
)

// stepResized is the target's task mark once the resized instance was defined or booted.
const stepResized = "resized"

// resizeDisks are the paths of the root disk and of the source's disk set aside by the resize
// that rs describes.
func (r *InstanceReconciler) resizeDisks(uid string, rs *v1.ResizeStatus) (disk, aside string, err error) {
	disk, err = r.Storage.RootDisk(uid)
	return disk, asidePath(disk, rs.TaskID), err
}

// asidePath is where the resize of task taskID sets the root disk aside.
func asidePath(disk string, taskID int64) string { return fmt.Sprintf("%s.resize-%d", disk, taskID) }

// setAsideByResize says whether a resize has set the instance's disk aside here: a root disk
// made afresh beside it would boot an empty guest while the data waits for a revert.
func setAsideByResize(disk string) (bool, error) {
	asides, err := filepath.Glob(disk + ".resize-*")
	return len(asides) > 0, err
}

// handOverDisk is the source's part of a resize: power the guest off cleanly (Nova's
// migrate_disk_and_power_off), undefine its domain, set the disk aside, and upload a copy when
// the target does not share this storage. It reports step DiskSent, after which the manager
// hands the task to the target; it never reports the task done itself.
func (r *InstanceReconciler) handOverDisk(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	rs := inst.Status.Resize
	if rs == nil {
		return false, finalError{errors.New("the resize task has no resize context in status")}
	}
	report := inst.Status.AgentReport
	if report.StepTaskID == task.ID && report.Step == v1.StepDiskSent {
		return false, nil // the manager moves the task on
	}
	if off, err := r.stop(ctx, inst, task); err != nil || !off {
		return false, err
	}
	uid := string(inst.UID)
	if err := r.Driver.Destroy(ctx, uid); err != nil {
		return false, err
	}
	disk, aside, err := r.resizeDisks(uid, rs)
	if err != nil {
		return false, err
	}
	if _, err := os.Stat(aside); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(disk, aside); err != nil {
			return false, fmt.Errorf("set the disk aside: %w", err)
		}
	} else if err != nil {
		return false, err
	}
	report.Transfer = nil
	if rs.DiskTransfer == v1.TransferImageStore {
		copyPath := disk + transferSuffix
		began := time.Now()
		if err := r.Storage.ConvertStandalone(ctx, aside, copyPath); err != nil {
			return false, fmt.Errorf("copy the disk for the transfer: %w", err)
		}
		key := v1.ResizeTransferKey(inst.UID, rs.TaskID)
		obj, sum, err := r.Storage.Upload(ctx, key, copyPath)
		if err != nil {
			return false, fmt.Errorf("upload the disk to the image store: %w", err)
		}
		_ = os.Remove(copyPath)
		log.FromContext(ctx).V(1).Info("resize: disk uploaded", "bytes", obj.Size, "took", time.Since(began).String())
		report.Transfer = &v1.AppliedImage{ImageReference: v1.ImageReference{Name: key}, UID: key, SHA256: sum, DiskFormat: v1.DiskFormatQCOW2}
	}
	report.Step, report.StepTaskID = v1.StepDiskSent, task.ID
	return false, nil
}

// finishResize is the target's part: build the disk from the source's copy (copied beside it
// on storage both see, else downloaded from the image store and verified), sized for the new
// flavor, then boot it, or only define it for an instance that was stopped, as Nova's
// finish_migration does.
func (r *InstanceReconciler) finishResize(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	rs := inst.Status.Resize
	if rs == nil {
		return false, finalError{errors.New("the resize task has no resize context in status")}
	}
	uid := string(inst.UID)
	mark, fresh, err := r.taskMark(uid, task.ID)
	if err != nil {
		return false, err
	}
	if mark.Step == stepResized {
		return true, nil
	}
	disk, aside, err := r.resizeDisks(uid, rs)
	if err != nil {
		return false, err
	}
	if fresh {
		// A disk here now is not the instance's (the source set its own aside, or does not
		// share this storage): an older leftover, kept aside for people rather than booted.
		if _, err := os.Stat(disk); err == nil {
			if err := os.Rename(disk, fmt.Sprintf("%s.stale-%d", disk, task.ID)); err != nil {
				return false, err
			}
		}
		if err := r.Storage.WriteOwner(uid, storage.Owner{Namespace: inst.Namespace, Name: inst.Name}); err != nil {
			return false, err
		}
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return false, err
		}
	}
	if _, err := os.Stat(disk); errors.Is(err, os.ErrNotExist) {
		if err := r.buildResizedDisk(ctx, rs, disk, aside); err != nil {
			return false, err
		}
	} else if err != nil {
		return false, err
	}
	if rs.PreviousVMState == v1.VMStateStopped {
		err = r.define(ctx, inst)
	} else {
		err = r.spawn(ctx, inst)
	}
	if err != nil {
		return false, err
	}
	mark.Step = stepResized
	return true, r.Storage.WriteTaskMark(uid, mark)
}

// buildResizedDisk makes the target's root disk from the source's copy, whole or not at all.
func (r *InstanceReconciler) buildResizedDisk(ctx context.Context, rs *v1.ResizeStatus, disk, aside string) error {
	if rs.DiskTransfer == v1.TransferImageStore {
		if rs.Transfer == nil {
			return finalError{errors.New("the resize names no copy of the disk in the image store")}
		}
		disks := r.disks()
		base, err := disks.EnsureImage(ctx, *rs.Transfer)
		if err != nil {
			return fmt.Errorf("download the disk from the image store: %w", err)
		}
		return disks.CreateDisk(ctx, disk, base, v1.DiskFormatQCOW2, rs.Flavor.DiskGiB)
	}
	if _, err := os.Stat(aside); err != nil {
		return finalError{fmt.Errorf("the source's disk is not on this node's storage: %w", err)}
	}
	tmp := disk + resizeCopySuffix
	_ = os.Remove(tmp)
	if out, err := storage.Command(ctx, "cp", "--sparse=always", aside, tmp).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("copy the disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := growDisk(ctx, tmp, rs.Flavor.DiskGiB); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, disk)
}

// growDisk enlarges a qcow2 disk to sizeGiB if it is smaller; the guest grows its filesystem
// (cloud-init's growpart) at its next boot.
func growDisk(ctx context.Context, path string, sizeGiB int32) error {
	size, err := storage.DiskVirtualSize(path)
	if err != nil {
		return err
	}
	want := int64(sizeGiB) << 30
	if sizeGiB <= 0 || size >= want {
		return nil
	}
	if out, err := storage.Command(ctx, "qemu-img", "resize", "-q", path, fmt.Sprint(want)).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img resize: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// confirmResize deletes the source's copy of the disk (Nova's confirm_resize). On a resize in
// place this agent is the source; after a move it is, as the task's peer, and it removes the
// instance's whole directory from storage the target does not share. The target has nothing to
// do: its agent waits for the manager to read the source's answer.
func (r *InstanceReconciler) confirmResize(ctx context.Context, inst *v1.Instance) (bool, error) {
	rs := inst.Status.Resize
	if rs == nil {
		return true, nil
	}
	if rs.SourceNode != r.NodeName {
		return false, nil
	}
	uid := string(inst.UID)
	if rs.TargetNode != r.NodeName {
		if err := r.Driver.Destroy(ctx, uid); err != nil {
			return false, err
		}
		rel, err := r.storageRelationTo(ctx, rs.TargetNode)
		if err != nil {
			return false, err
		}
		if rel == storageSeparate && !r.SharedStorage {
			return true, r.Storage.DeleteInstanceFiles(uid)
		}
	}
	_, aside, err := r.resizeDisks(uid, rs)
	if err != nil {
		return false, err
	}
	if err := os.Remove(aside); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	return true, nil
}

// removeResized is the target's part of a revert: destroy the resized domain and remove the
// copy of the disk made for it (the whole directory on storage the source does not share).
// It reports step Removed; the source then boots its own copy.
func (r *InstanceReconciler) removeResized(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	rs := inst.Status.Resize
	report := inst.Status.AgentReport
	if report.StepTaskID == task.ID && report.Step == v1.StepRemoved {
		return false, nil
	}
	// The source boots its own copy next; while it is not up, the copy here is the one that
	// answers, and the guest keeps it. The manager refuses a revert then; one given before the
	// source went down waits here.
	if up, err := hypervisorUp(ctx, r.Reader, rs.SourceNode); err != nil || !up {
		if err == nil {
			log.FromContext(ctx).Info("the revert waits: the source is not up, and the copy here may be the only one left", "source", rs.SourceNode)
		}
		return false, err
	}
	uid := string(inst.UID)
	if err := r.Driver.Destroy(ctx, uid); err != nil {
		return false, err
	}
	rel, err := r.storageRelationTo(ctx, rs.SourceNode)
	if err != nil {
		return false, err
	}
	if rel == storageSeparate && !r.SharedStorage {
		if err := r.Storage.DeleteInstanceFiles(uid); err != nil {
			return false, err
		}
	} else {
		// The source set its disk aside before this one was made: the disk here is the copy.
		disk, _, err := r.resizeDisks(uid, rs)
		if err != nil {
			return false, err
		}
		if err := os.Remove(disk); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
	}
	report.Step, report.StepTaskID = v1.StepRemoved, task.ID
	return false, nil
}

// revertResize is the source's part of a revert, and all of a revert in place or of a rollback
// before the disk left: put the disk set aside back (the resized copy goes first, on a resize
// in place) and boot it with the old flavor, or only define it for an instance that was
// stopped. An instance whose disk was never set aside boots the disk it has.
func (r *InstanceReconciler) revertResize(ctx context.Context, inst *v1.Instance) (bool, error) {
	rs := inst.Status.Resize
	if rs == nil {
		return false, finalError{errors.New("the revert has no resize context in status")}
	}
	uid := string(inst.UID)
	disk, aside, err := r.resizeDisks(uid, rs)
	if err != nil {
		return false, err
	}
	if _, err := os.Stat(aside); err == nil {
		if err := r.Driver.Destroy(ctx, uid); err != nil {
			return false, err
		}
		if err := os.Remove(disk); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
		if err := os.Rename(aside, disk); err != nil {
			return false, fmt.Errorf("put the disk back: %w", err)
		}
	} else if _, err := os.Stat(disk); err != nil {
		return false, finalError{fmt.Errorf("neither the disk nor its copy set aside is on this node: %w", err)}
	}
	if rs.PreviousVMState == v1.VMStateStopped {
		return true, r.define(ctx, inst)
	}
	return true, r.spawn(ctx, inst)
}

// reconcilePeerConfirm is the source's part of a confirmation after a move, as the task's
// peer: delete its copy of the disk and answer in status.peerReport.
func (r *InstanceReconciler) reconcilePeerConfirm(ctx context.Context, inst *v1.Instance) (ctrl.Result, error) {
	task := inst.Status.Task
	orig := inst.DeepCopy()
	if pr := inst.Status.PeerReport; pr == nil || pr.NodeName != r.NodeName {
		inst.Status.PeerReport = &v1.AgentReport{NodeName: r.NodeName}
	}
	pr := inst.Status.PeerReport
	if pr.TaskID == task.ID {
		return ctrl.Result{}, nil
	}
	// The copy this node deletes is the last one that answers while the instance's node does
	// not: the manager refuses a confirmation then, and one given before the node went away
	// waits here until it is back.
	if up, err := hypervisorUp(ctx, r.Reader, inst.Status.NodeName); err != nil || !up {
		if err == nil {
			log.FromContext(ctx).Info("the confirmation waits: the resized instance's node is not up, and this node's copy may be the only one left", "node", inst.Status.NodeName)
		}
		return ctrl.Result{RequeueAfter: storageRecheck}, err
	}
	if err := r.storageReady(ctx); err != nil {
		log.FromContext(ctx).Info("the confirmation waits for the storage root", "reason", err.Error())
		return ctrl.Result{RequeueAfter: storageRecheck}, nil
	}
	if _, err := r.confirmResize(ctx, inst); err != nil {
		if wait, what, ok := r.waitInsteadOfFailing(ctx, inst.UID, task.ID, err); ok {
			log.FromContext(ctx).Info("waiting for "+what, "action", task.Action, "error", err.Error())
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		if attempt, again := r.failed(inst.UID, task.ID); again && !isFinal(err) {
			log.FromContext(ctx).Error(err, "confirming a resize failed; retrying", "attempt", attempt)
			return ctrl.Result{RequeueAfter: time.Duration(attempt) * retryStep}, nil
		}
		pr.TaskID, pr.TaskResult, pr.Message = task.ID, v1.TaskFailed, err.Error()
	} else {
		pr.TaskID, pr.TaskResult, pr.Message = task.ID, v1.TaskSucceeded, ""
	}
	r.forget(inst.UID)
	if err := kube.PatchStatus(ctx, r.Client, orig, inst); err != nil {
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	r.wrote(client.ObjectKeyFromObject(inst), orig.ResourceVersion)
	return ctrl.Result{}, nil
}

// hypervisorUp says whether the manager counts node up (its agent reports).
func hypervisorUp(ctx context.Context, reader client.Reader, node string) (bool, error) {
	hv := &v1.Hypervisor{}
	if err := reader.Get(ctx, types.NamespacedName{Name: node}, hv); apierrors.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return hv.Status.State == v1.HypervisorUp, nil
}
