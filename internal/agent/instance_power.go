package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/storage"
)

// The power tasks that wait for the guest: a clean stop and the soft and hard reboots, with the
// ACPI power button and the timeouts after which the agent powers off or hard-reboots the domain.

// powerButtonRepeat is how often the ACPI power button is pressed again while the agent waits
// for a guest to power off: a guest may miss a press early in its boot (Nova retries too).
const powerButtonRepeat = 10 * time.Second

// Defaults of the guest timeouts, Nova's shutdown_timeout and wait_soft_reboot_seconds.
const (
	DefaultShutdownTimeout = 60 * time.Second
	DefaultRebootTimeout   = 120 * time.Second
)

// stop is Nova's clean power off: press the ACPI power button (again every
// powerButtonRepeat), and power the domain off if the guest has not gone down within
// ShutdownTimeout. A guest that is not running cannot hear the button and is powered off at once.
func (r *InstanceReconciler) stop(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	uid := string(inst.UID)
	st, err := r.Driver.State(ctx, uid)
	if err != nil {
		return false, err
	}
	if !st.Active() && st.Power != v1.PowerStateSuspended {
		return true, nil
	}
	if !hearsPowerButton(st) {
		return true, r.Driver.PowerOff(ctx, uid)
	}
	expired, err := r.pressPowerButton(ctx, inst.UID, task.ID, r.shutdownTimeout())
	if err != nil || !expired {
		return false, err
	}
	r.event(inst, corev1.EventTypeWarning, v1.ReasonShutdownTimedOut, "Stop",
		"the guest did not power off within %s of the ACPI power button; powered it off", r.shutdownTimeout())
	return true, r.Driver.PowerOff(ctx, uid)
}

// softReboot is Nova's soft reboot: a clean shutdown, then a fresh start of the domain, so that
// the reboot is seen to happen. A guest that has not shut down within RebootTimeout is rebooted
// hard, and an Event says so. A guest that is not running is rebooted hard at once.
//
// The task mark records the domain's run when the task began; a newer run means the reboot
// happened, so an agent that died in the middle neither reboots twice nor reports too early.
func (r *InstanceReconciler) softReboot(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	uid := string(inst.UID)
	st, mark, err := r.beginRebootingTask(ctx, uid, task.ID)
	if err != nil {
		return false, err
	}
	switch {
	case st.Active() && st.RunID != mark.RunID:
		return true, nil // booted anew since the task began
	case mark.RunID < 0 || st.Power == v1.PowerStateCrashed:
		return true, r.powerCycle(ctx, inst) // it was not running: only a hard reboot helps
	case !st.Active():
		return true, r.spawn(ctx, inst) // the guest shut down as asked: boot it again
	case !hearsPowerButton(st):
		return true, r.powerCycle(ctx, inst) // paused: it cannot hear the button
	}
	expired, err := r.pressPowerButton(ctx, inst.UID, task.ID, r.rebootTimeout())
	if err != nil || !expired {
		return false, err
	}
	r.event(inst, corev1.EventTypeWarning, v1.ReasonRebootFellBackToHard, "Reboot",
		"the guest did not shut down within %s of the ACPI reboot request; rebooted it hard", r.rebootTimeout())
	return true, r.powerCycle(ctx, inst)
}

// hardReboot is Nova's hard reboot: power the domain off, whatever it is doing (saved state
// included), and boot it again from its disk.
func (r *InstanceReconciler) hardReboot(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	st, mark, err := r.beginRebootingTask(ctx, string(inst.UID), task.ID)
	if err != nil {
		return false, err
	}
	if st.Power == v1.PowerStateRunning && st.RunID != mark.RunID {
		return true, nil // booted anew since the task began
	}
	return true, r.powerCycle(ctx, inst)
}

// hearsPowerButton says whether a domain's guest can act on the ACPI power button: it runs
// (which includes a guest already going down, which must not be cut short).
func hearsPowerButton(st driver.State) bool {
	return st.Active() && st.Power == v1.PowerStateRunning
}

// beginRebootingTask returns the domain's state and the task's mark, writing the mark first
// when this task has none yet.
func (r *InstanceReconciler) beginRebootingTask(ctx context.Context, uid string, taskID int64) (driver.State, storage.TaskMark, error) {
	st, err := r.Driver.State(ctx, uid)
	if err != nil {
		return st, storage.TaskMark{}, err
	}
	mark, ok, err := r.Storage.ReadTaskMark(uid)
	if err != nil {
		return st, mark, err
	}
	if !ok || mark.TaskID != taskID {
		mark = storage.TaskMark{TaskID: taskID, RunID: st.RunID}
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return st, mark, fmt.Errorf("record task %d: %w", taskID, err)
		}
	}
	return st, mark, nil
}

// powerCycle powers the domain off and boots it again from its disk.
func (r *InstanceReconciler) powerCycle(ctx context.Context, inst *v1.Instance) error {
	if err := r.Driver.PowerOff(ctx, string(inst.UID)); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return err
	}
	return r.spawn(ctx, inst)
}

// pressPowerButton presses the guest's ACPI power button when it is due and says whether the
// guest has had timeout since the first press to go down.
func (r *InstanceReconciler) pressPowerButton(ctx context.Context, uid types.UID, taskID int64, timeout time.Duration) (bool, error) {
	now := time.Now()
	r.mu.Lock()
	p := r.progressOf(uid, taskID)
	if p.waitingSince.IsZero() {
		p.waitingSince = now
	}
	expired := now.Sub(p.waitingSince) >= timeout
	due := !expired && (p.pressed.IsZero() || now.Sub(p.pressed) >= powerButtonRepeat)
	if due {
		p.pressed = now
	}
	r.mu.Unlock()
	if due {
		if err := r.Driver.RequestShutdown(ctx, string(uid)); err != nil {
			return false, err
		}
	}
	return expired, nil
}

func (r *InstanceReconciler) shutdownTimeout() time.Duration {
	if r.ShutdownTimeout > 0 {
		return r.ShutdownTimeout
	}
	return DefaultShutdownTimeout
}

func (r *InstanceReconciler) rebootTimeout() time.Duration {
	if r.RebootTimeout > 0 {
		return r.RebootTimeout
	}
	return DefaultRebootTimeout
}
