package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Snapshot and shelve, the tasks that upload the root disk to the image store as an image.

// shelve powers the instance off cleanly, as Nova's shelve does (the disk is then quiescent),
// and uploads its root disk to the image store as the shelved image; the domain and the disks
// stay on the node until the offload.
func (r *InstanceReconciler) shelve(ctx context.Context, inst *v1.Instance, task *v1.Task, checkpoint func()) (bool, error) {
	st, err := r.Driver.State(ctx, string(inst.UID))
	if err != nil {
		return false, err
	}
	if st.Active() || st.Power == v1.PowerStateSuspended {
		if done, err := r.stop(ctx, inst, task); err != nil || !done {
			return false, err
		}
	}
	return true, r.snapshot(ctx, inst, task, checkpoint)
}

// snapshot saves the root disk as a standalone qcow2 in the image store, under the key of the
// Image the Snapshot made (Nova's snapshot: ImageSnapshot, then ImageUploading). A running or
// paused guest keeps running while the driver copies its disk as it was at one moment; a
// stopped or suspended one is copied from its disk file, which nothing writes meanwhile. A
// snapshot cut short is made again from the start; one already in the store is done.
func (r *InstanceReconciler) snapshot(ctx context.Context, inst *v1.Instance, task *v1.Task, checkpoint func()) error {
	if task.Snapshot == nil || task.Snapshot.ImageUID == "" {
		return errors.New("the snapshot task names no image to upload to")
	}
	uid, key := string(inst.UID), task.Snapshot.ImageUID
	target, err := r.Storage.SnapshotFile(uid)
	if err != nil {
		return err
	}
	if uploaded, err := r.Storage.Uploaded(ctx, key); err != nil || uploaded {
		_ = os.Remove(target)
		return err
	}
	st, err := r.Driver.State(ctx, uid)
	if err != nil {
		return err
	}
	began := time.Now()
	if st.Active() {
		err = r.Driver.BackupDisk(ctx, uid, target)
	} else {
		var disk string
		if disk, err = r.Storage.RootDisk(uid); err == nil {
			err = r.Storage.ConvertStandalone(ctx, disk, target)
		}
	}
	if err != nil {
		return fmt.Errorf("copy the root disk: %w", err)
	}
	copied := time.Now()
	report := inst.Status.AgentReport
	report.Step, report.StepTaskID = v1.StepUploading, task.ID
	checkpoint()
	obj, _, err := r.Storage.Upload(ctx, key, target)
	if err != nil {
		return fmt.Errorf("upload the snapshot to the image store: %w", err)
	}
	log.FromContext(ctx).V(1).Info("snapshot uploaded", "snapshot", task.Snapshot.Name, "bytes", obj.Size,
		"copy", copied.Sub(began).String(), "upload", time.Since(copied).String(), "running", st.Active())
	return os.Remove(target)
}
