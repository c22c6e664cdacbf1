package agent

import (
	"context"
	"errors"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/storage"
)

// What the agent remembers of each instance: the task it works on and its failed attempts, the
// task marks on the node's disk, the UIDs it saw, and the status versions its own writes replaced.

// taskProgress is what the agent remembers of the task it works on for one instance. It is
// memory only: an agent that restarts tries again from the beginning, which every task allows.
type taskProgress struct {
	taskID   int64
	failures int
	// waitingSince is when the agent started waiting for the guest; pressed is when it last
	// pressed the power button.
	waitingSince, pressed time.Time
	// storeMissingSince is when the task first found the image store unavailable;
	// hypervisorDownSince when a failed attempt first found the hypervisor not answering.
	storeMissingSince, hypervisorDownSince time.Time
	// held is the outcome of a task carried out whose report waits for the domain's state.
	held *heldOutcome
}

// heldOutcome is a finished task's result, kept until it can be reported with a power state.
type heldOutcome struct {
	result  v1.TaskResult
	message string
}

// holdOutcome keeps a finished task's outcome until the report can say the domain's state.
func (r *InstanceReconciler) holdOutcome(uid types.UID, taskID int64, result v1.TaskResult, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.progressOf(uid, taskID).held = &heldOutcome{result: result, message: message}
}

// heldOutcome returns the outcome holdOutcome kept for the task, if any.
func (r *InstanceReconciler) heldOutcome(uid types.UID, taskID int64) (heldOutcome, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.progressOf(uid, taskID); p.held != nil {
		return *p.held, true
	}
	return heldOutcome{}, false
}

// DefaultImageStoreWait is how long a task waits for an unavailable image store (an NFS
// mount not there yet) before its attempts count as failures.
const DefaultImageStoreWait = 5 * time.Minute

// imageStorePoll is how often a task waiting for the image store tries again.
const imageStorePoll = 10 * time.Second

// waitForImageStore says whether a task whose attempt failed with err waits for the image
// store, and how long until it tries again: only while the store is unavailable, and for
// ImageStoreWait from the first time it was.
func (r *InstanceReconciler) waitForImageStore(uid types.UID, taskID int64, err error) (time.Duration, bool) {
	if !errors.Is(err, imagestore.ErrUnavailable) {
		return 0, false
	}
	return imageStorePoll, r.stillWaiting(uid, taskID, r.ImageStoreWait, DefaultImageStoreWait,
		func(p *taskProgress) *time.Time { return &p.storeMissingSince })
}

// DefaultHypervisorWait is how long a task whose attempts fail while the hypervisor does not
// answer (libvirtd restarting) waits for it before its attempts count as failures: a daemon
// restart must not send an instance to Error.
const DefaultHypervisorWait = 5 * time.Minute

// hypervisorPoll is how often a task waiting for the hypervisor tries again.
const hypervisorPoll = 2 * time.Second

// waitForHypervisor says whether a task whose attempt just failed waits for the hypervisor,
// and how long until it tries again: only while the hypervisor does not answer a ping, and
// for HypervisorWait from the first failed attempt that found it so.
func (r *InstanceReconciler) waitForHypervisor(ctx context.Context, uid types.UID, taskID int64) (time.Duration, bool) {
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if r.Driver.Ping(pingCtx) == nil {
		return 0, false
	}
	return hypervisorPoll, r.stillWaiting(uid, taskID, r.HypervisorWait, DefaultHypervisorWait,
		func(p *taskProgress) *time.Time { return &p.hypervisorDownSince })
}

// stillWaiting starts a task's wait clock (the field since picks) if it has not started, and
// says whether limit (fallback when zero) has not passed since.
func (r *InstanceReconciler) stillWaiting(uid types.UID, taskID int64, limit, fallback time.Duration, since func(*taskProgress) *time.Time) bool {
	if limit == 0 {
		limit = fallback
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	began := since(r.progressOf(uid, taskID))
	if began.IsZero() {
		*began = time.Now()
	}
	return time.Since(*began) < limit
}

// waitInsteadOfFailing says whether a task whose attempt failed with err waits for the image
// store or the hypervisor to come back rather than count the attempt, and for how long.
func (r *InstanceReconciler) waitInsteadOfFailing(ctx context.Context, uid types.UID, taskID int64, err error) (time.Duration, string, bool) {
	if wait, ok := r.waitForImageStore(uid, taskID, err); ok {
		return wait, "the image store", true
	}
	if isFinal(err) {
		return 0, "", false
	}
	if wait, ok := r.waitForHypervisor(ctx, uid, taskID); ok {
		return wait, "the hypervisor", true
	}
	return 0, "", false
}

// taskMark returns the instance's mark for task taskID, a fresh one (fresh is true) when the
// mark is of another task.
func (r *InstanceReconciler) taskMark(uid string, taskID int64) (mark storage.TaskMark, fresh bool, err error) {
	mark, ok, err := r.Storage.ReadTaskMark(uid)
	if err != nil {
		return mark, false, err
	}
	if ok && mark.TaskID == taskID {
		return mark, false, nil
	}
	return storage.TaskMark{TaskID: taskID, RunID: -1}, true, nil
}

// progressOf returns the progress of task taskID of an instance, starting it afresh when the
// instance has moved on to another task (a hard reboot interrupting a soft one). Call with
// r.mu held.
func (r *InstanceReconciler) progressOf(uid types.UID, taskID int64) *taskProgress {
	if r.progress == nil {
		r.progress = map[types.UID]*taskProgress{}
	}
	p, ok := r.progress[uid]
	if !ok || p.taskID != taskID {
		p = &taskProgress{taskID: taskID}
		r.progress[uid] = p
	}
	return p
}

// failed counts a failed attempt of a task and says whether another is due.
func (r *InstanceReconciler) failed(uid types.UID, taskID int64) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.progressOf(uid, taskID)
	p.failures++
	return p.failures, p.failures < attemptsBeforeFailing
}

// wrote records that the agent's status write replaced version rv of an instance; "" forgets
// the instance.
func (r *InstanceReconciler) wrote(key types.NamespacedName, rv string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rv == "" {
		delete(r.overwritten, key)
		return
	}
	if r.overwritten == nil {
		r.overwritten = map[types.NamespacedName]string{}
	}
	r.overwritten[key] = rv
}

// cacheBehind says whether the cache still shows the version of inst that the agent's own
// last write replaced.
func (r *InstanceReconciler) cacheBehind(inst *v1.Instance) bool {
	key := client.ObjectKeyFromObject(inst)
	r.mu.Lock()
	defer r.mu.Unlock()
	rv, ok := r.overwritten[key]
	if ok && rv != inst.ResourceVersion {
		delete(r.overwritten, key)
		return false
	}
	return ok
}

// remember records the UID of an instance the agent reconciles.
func (r *InstanceReconciler) remember(key types.NamespacedName, uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.uids == nil {
		r.uids = map[types.NamespacedName]types.UID{}
	}
	r.uids[key] = uid
}

// forgetUID returns and forgets the UID remembered for an instance.
func (r *InstanceReconciler) forgetUID(key types.NamespacedName) (types.UID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	uid, ok := r.uids[key]
	delete(r.uids, key)
	return uid, ok
}

func (r *InstanceReconciler) forget(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.progress, uid)
}
