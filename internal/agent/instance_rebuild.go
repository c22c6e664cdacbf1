package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// Rebuild and rescue, the tasks that give the domain another disk: a fresh root disk from a new
// image, or a rescue disk booted before it, each step recorded in the task mark.

// The steps of a rebuild that its task mark records.
const rebuildBooted = "booted"

// rebuild gives the instance a fresh root disk from task.image, on the same node, keeping its
// name, UID and domain (Nova's rebuild). The new disk is made beside the old one, the domain is
// powered off, the two are swapped by renames, and the domain boots the new disk; only then is
// the old disk deleted. A new disk that does not boot is swapped back, so a failed rebuild
// leaves the instance its old disk. An instance that was stopped is stopped again cleanly, as
// Nova's rebuild does. Every step can be cut short: the file names say how far it got.
func (r *InstanceReconciler) rebuild(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	if task.Image == nil {
		return false, errors.New("the rebuild task names no image")
	}
	uid := string(inst.UID)
	mark, fresh, err := r.taskMark(uid, task.ID)
	if err != nil {
		return false, err
	}
	_, old, err := r.rebuildDisks(uid)
	if err != nil {
		return false, err
	}
	if fresh {
		// An old disk set aside by an earlier rebuild that could not swap it back is the
		// instance's disk: put it back before anything else, then record this task.
		if err := r.swapBackOldDisk(ctx, uid); err != nil {
			return false, err
		}
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return false, err
		}
	}
	if mark.Step != rebuildBooted {
		if err := r.swapInNewDisk(ctx, inst, task); err != nil {
			return false, err
		}
		if err := r.spawn(ctx, inst); err != nil {
			return false, errors.Join(fmt.Errorf("boot the rebuilt disk: %w", err), r.swapBackOldDisk(ctx, uid))
		}
		// Recorded before the old disk goes, so that a restart neither rebuilds again nor
		// keeps the old disk.
		mark.Step = rebuildBooted
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return false, err
		}
	}
	if err := os.Remove(old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if inst.Status.VMState != v1.VMStateStopped {
		return true, nil
	}
	return r.stop(ctx, inst, task)
}

// The steps of a rescue and an unrescue that their task marks record.
const (
	rescueBooted   = "rescued"
	unrescueBooted = "unrescued"
)

// rescue boots the instance from a fresh disk of the rescue image with its own root disk
// attached second, so that the rescue system can read and repair it (Nova's rescue). The
// domain keeps its name and UUID; only its definition changes until unrescue.
func (r *InstanceReconciler) rescue(ctx context.Context, inst *v1.Instance, task *v1.Task) error {
	if task.Image == nil {
		return errors.New("the rescue task names no rescue image")
	}
	uid := string(inst.UID)
	mark, fresh, err := r.taskMark(uid, task.ID)
	if err != nil || mark.Step == rescueBooted {
		return err
	}
	rescueDisk, err := r.rescueDisk(uid)
	if err != nil {
		return err
	}
	if fresh {
		// A rescue disk left by an earlier rescue holds that rescue system's changes.
		if err := os.Remove(rescueDisk); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// Recorded now, so that a restart of this task keeps the disk it makes.
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return err
		}
	}
	disks := r.disks()
	base, err := disks.EnsureImage(ctx, *task.Image)
	if err != nil {
		return err
	}
	if err := disks.CreateDisk(ctx, rescueDisk, base, task.Image.DiskFormat, 0); err != nil {
		return err
	}
	if err := r.Driver.PowerOff(ctx, uid); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return err
	}
	if err := r.spawnWith(ctx, inst, rescueDisk); err != nil {
		return fmt.Errorf("boot the rescue image: %w", err)
	}
	mark.Step = rescueBooted
	return r.Storage.WriteTaskMark(uid, mark)
}

// unrescue boots the instance from its own root disk again, with whatever the rescue system
// wrote to it, and deletes the rescue disk.
func (r *InstanceReconciler) unrescue(ctx context.Context, inst *v1.Instance, task *v1.Task) error {
	uid := string(inst.UID)
	mark, _, err := r.taskMark(uid, task.ID)
	if err != nil {
		return err
	}
	rescueDisk, err := r.rescueDisk(uid)
	if err != nil {
		return err
	}
	if mark.Step != unrescueBooted {
		if err := r.Driver.PowerOff(ctx, uid); err != nil && !errors.Is(err, driver.ErrNotFound) {
			return err
		}
		if err := r.spawn(ctx, inst); err != nil {
			return err
		}
		mark.Step = unrescueBooted
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return err
		}
	}
	if err := os.Remove(rescueDisk); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// rescueDisk is the path of an instance's rescue disk.
func (r *InstanceReconciler) rescueDisk(uid string) (string, error) {
	dir, err := r.Storage.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "disk.rescue"), nil
}

// rebuildDisks are the paths of the root disk and of the old disk a rebuild keeps until the
// new one boots.
func (r *InstanceReconciler) rebuildDisks(uid string) (disk, old string, err error) {
	disk, err = r.Storage.RootDisk(uid)
	return disk, disk + ".old", err
}

// swapInNewDisk makes the new root disk and puts it in the old one's place, the domain powered
// off. The old disk is kept as disk.old.
func (r *InstanceReconciler) swapInNewDisk(ctx context.Context, inst *v1.Instance, task *v1.Task) error {
	uid := string(inst.UID)
	disk, old, err := r.rebuildDisks(uid)
	if err != nil {
		return err
	}
	next := disk + ".rebuild"
	if _, err := os.Stat(old); err == nil {
		// Swapped, or halfway: the old disk is safe aside; finish putting the new one in place.
		if _, err := os.Stat(disk); errors.Is(err, os.ErrNotExist) {
			return os.Rename(next, disk)
		}
		return nil
	}
	// Not swapped yet. A new disk left by an attempt cut short may be of another image: make it
	// afresh.
	_ = os.Remove(next)
	disks := r.disks()
	base, err := disks.EnsureImage(ctx, *task.Image)
	if err != nil {
		return err
	}
	if err := disks.CreateDisk(ctx, next, base, task.Image.DiskFormat, inst.Status.Flavor.DiskGiB); err != nil {
		return err
	}
	if err := r.Driver.PowerOff(ctx, uid); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return err
	}
	// The config drive is made anew at the boot, from the spec as it is now (Nova's rebuild
	// regenerates it too).
	if drive, err := r.Storage.ConfigDrive(uid); err == nil {
		if err := os.Remove(drive); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if _, err := os.Stat(disk); err == nil {
		if err := os.Rename(disk, old); err != nil {
			return err
		}
	}
	return os.Rename(next, disk)
}

// swapBackOldDisk undoes swapInNewDisk after the new disk failed to boot.
func (r *InstanceReconciler) swapBackOldDisk(ctx context.Context, uid string) error {
	disk, old, err := r.rebuildDisks(uid)
	if err != nil {
		return err
	}
	if _, err := os.Stat(old); err != nil {
		return nil // nothing set aside
	}
	if err := r.Driver.PowerOff(ctx, uid); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return err
	}
	_ = os.Remove(disk)
	if err := os.Rename(old, disk); err != nil {
		return fmt.Errorf("put the old disk back: %w", err)
	}
	return nil
}
