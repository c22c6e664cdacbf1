// Package agent is the node agent's logic: it carries out the tasks the manager gives the
// instances placed on its node, reports what the hypervisor really has, and renews the node's
// heartbeat. It owns what only the node can know; it never decides placement or vm states.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/storage"
)

// DomainName is the libvirt name of an instance's domain.
func DomainName(uid types.UID) string { return "kubenova-" + string(uid) }

// attemptsBeforeFailing is how often a task is tried before the agent reports it failed; the
// retries, retryStep apart and more each time, absorb passing trouble such as a libvirtd restart.
const attemptsBeforeFailing = 3

// retryStep is the wait after the first failed attempt; the n-th waits n times as long.
const retryStep = 2 * time.Second

// resyncPeriod is how often the agent compares each instance with its domain even when
// nothing changed (Nova's sync_power_states); libvirt's lifecycle events bring it sooner.
const resyncPeriod = time.Minute

// guestPoll is how often a task that waits for the guest looks again, in case an event is lost.
const guestPoll = time.Second

// DefaultWorkers is how many instances of the node the agent works on at once. A spawn mostly
// waits (for libvirtd and QEMU, qemu-img, the API server), so a storm of launches must not
// queue behind a few workers: with 4, the twentieth of twenty launches 100 ms apart waited for
// the sixteen before it (test/bench/storm). Tasks that wait for a guest hold no worker: they
// look again later.
const DefaultWorkers = 16

// InstanceReconciler carries out tasks on one node. Its cache holds only the instances placed on
// this node (a field selector on status.nodeName).
type InstanceReconciler struct {
	Client client.Client
	// Reader reads what the cache does not hold: the Secrets that hold user data.
	Reader   client.Reader
	Recorder events.EventRecorder
	Driver   driver.Driver
	Storage  *storage.Node
	// Disks fetches images and makes root disks; nil means Storage.
	Disks     Disks
	NodeName  string
	VirtTypes *VirtTypeChooser
	// Networks are the networks this node has, by the names instances use.
	Networks []v1.HypervisorNetwork
	// UserDataNamespace is where the manager keeps the copies of the instances' user data
	// (default kubenova-system).
	UserDataNamespace string
	// ARPTablePath is the node's neighbour table, /proc/net/arp when empty: the agent must see
	// the node's network namespace (hostNetwork in its DaemonSet).
	ARPTablePath string
	// ShutdownTimeout is how long a guest has to power off after the ACPI power button before
	// the agent powers it off (DefaultShutdownTimeout when zero).
	ShutdownTimeout time.Duration
	// RebootTimeout is how long a guest has to answer a soft reboot before the agent reboots it
	// hard (DefaultRebootTimeout when zero).
	RebootTimeout time.Duration
	// Workers is how many instances are reconciled at once (DefaultWorkers when zero).
	Workers int
	// Incoming holds the instances whose task names this node its peer (a field selector on
	// status.task.peerNode) while they live on another node; nil for none.
	Incoming cache.Cache
	// MigrationTLS encrypts the data of the live migrations this node sends.
	MigrationTLS bool
	// SharedStorage: the node declares its storage root shared with other nodes; files there
	// are never removed on the strength of storage IDs alone.
	SharedStorage bool
	// MigrationBandwidthMiBs caps the data rate of the live migrations this node sends, in
	// MiB/s (Nova's live_migration_bandwidth); 0 is no cap.
	MigrationBandwidthMiBs uint64
	// MigrationTimeoutPerGiB bounds a live migration's time per GiB it copies
	// (DefaultMigrationTimeoutPerGiB when zero).
	MigrationTimeoutPerGiB time.Duration
	// ImageStoreWait is how long a task waits for an unavailable image store before it
	// fails (DefaultImageStoreWait when zero).
	ImageStoreWait time.Duration
	// HypervisorWait is how long a task waits for a hypervisor that does not answer before its
	// failed attempts count (DefaultHypervisorWait when zero).
	HypervisorWait time.Duration
	// TaskAttemptTimeout bounds one attempt of a task step (DefaultTaskAttemptTimeout when
	// zero).
	TaskAttemptTimeout time.Duration

	mu sync.Mutex
	// migrations are the live migrations this process started, by instance.
	migrations map[types.UID]*migrationRun
	// uids remembers the UID of each instance reconciled, so that one that leaves the caches
	// can be looked for in the node's storage.
	uids     map[types.NamespacedName]types.UID
	progress map[types.UID]*taskProgress
	// addressWatch is when the agent first looked for each running guest's addresses.
	addressWatch map[types.UID]time.Time
	// overwritten is, per instance, the resourceVersion the agent's last status write replaced.
	// Until the cache shows a newer one, it is older than what the agent knows: a reconcile
	// then (a domain event right after a spawn brings one) would only lose a race with its own
	// write, costing the API server a refused write. Keyed by name, so that a deleted
	// instance's entry goes with it.
	overwritten map[types.NamespacedName]string
}

// Reconcile carries out the instance's task if the agent has not answered it yet, then reports
// the domain's power state. It writes only status.powerState and status.agentReport, and only
// when something changed.
func (r *InstanceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	inst := &v1.Instance{}
	err := r.Client.Get(ctx, req.NamespacedName, inst)
	if apierrors.IsNotFound(err) && r.Incoming != nil {
		if err = r.Incoming.Get(ctx, req.NamespacedName, inst); err == nil {
			ctx = kube.WithOperation(ctx, kube.InstanceOperation(inst))
			r.remember(req.NamespacedName, inst.UID)
			if r.cacheBehind(inst) {
				return ctrl.Result{RequeueAfter: guestPoll}, nil
			}
			return r.reconcileIncoming(ctx, inst)
		}
	}
	if apierrors.IsNotFound(err) {
		r.wrote(req.NamespacedName, "")
		if uid, ok := r.forgetUID(req.NamespacedName); ok {
			r.forgetAddressWatch(uid)
			return ctrl.Result{}, r.cleanUpLeftBehind(ctx, req.NamespacedName, uid)
		}
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if inst.Status.NodeName != r.NodeName {
		return ctrl.Result{}, nil
	}
	ctx = kube.WithOperation(ctx, kube.InstanceOperation(inst))
	r.remember(req.NamespacedName, inst.UID)
	if r.cacheBehind(inst) {
		// The informer brings the newer version within moments, and a reconcile with it.
		return ctrl.Result{RequeueAfter: guestPoll}, nil
	}
	orig := inst.DeepCopy()
	if inst.Status.AgentReport == nil || inst.Status.AgentReport.NodeName != r.NodeName {
		inst.Status.AgentReport = &v1.AgentReport{NodeName: r.NodeName}
	}
	report := inst.Status.AgentReport
	report.DomainName = DomainName(inst.UID)
	if logPath, err := r.Storage.ConsoleLog(string(inst.UID)); err == nil {
		report.ConsoleLogPath = logPath
	}

	// checkpoint writes what status says so far in the middle of a task of several steps.
	checkpoint := func() { orig = r.writeProgress(ctx, orig, inst) }
	next := resyncPeriod
	finished := false
	if task := inst.Status.Task; task != nil && task.ID != report.TaskID && inst.Status.TaskState != v1.TaskStateScheduling {
		if err := r.storageReady(ctx); err != nil {
			// No task touches a root that is not the node's storage: it would find disks
			// missing, or make them in the wrong place. The Hypervisor says why.
			log.FromContext(ctx).Info("task waits for the storage root", "action", task.Action, "reason", err.Error())
			return ctrl.Result{RequeueAfter: storageRecheck}, nil
		}
		if held, ok := r.heldOutcome(inst.UID, task.ID); ok {
			// Carried out already; its report waited for a power state to go with it.
			report.TaskID, report.TaskResult, report.Message = task.ID, held.result, held.message
			finished = true
		} else {
			var again time.Duration
			var stop *ctrl.Result
			finished, again, stop = r.carryOutTask(ctx, inst, task, checkpoint)
			if stop != nil {
				return *stop, nil
			}
			if again > 0 {
				next = again
			}
		}
	}

	// A failure to read the domain's state holds back only a finished task's result (below);
	// otherwise what is known is reported, and the state looked at again.
	looked := time.Now()
	state, stateErr := r.Driver.State(ctx, string(inst.UID))
	if stateErr == nil {
		inst.Status.PowerState = state.Power
		report.PowerReason = state.Reason
		// The addresses stay in the report while the guest is off, as its lease stays.
		if state.Power == v1.PowerStateRunning {
			if again := r.observeInterfaces(ctx, inst, report); again > 0 && (next == 0 || again < next) {
				next = again
			}
		} else {
			r.forgetAddressWatch(inst.UID)
		}
	}
	stateLookedAt := time.Now()
	if finished && stateErr != nil {
		// The task is over, but the power state it left cannot be read (libvirtd just went
		// away): reported with it, the power state from before the task (a start reported as
		// shut off) would read to the manager as a change outside kubenova. The outcome waits in
		// memory for a state to go with it; the task is not carried out again.
		r.holdOutcome(inst.UID, report.TaskID, report.TaskResult, report.Message)
		log.FromContext(ctx).Info("the task's outcome waits for the domain's state", "task", report.TaskID, "error", stateErr.Error())
		return ctrl.Result{RequeueAfter: hypervisorPoll}, nil
	}
	writing := kube.Changed(orig, inst)
	if writing {
		now := metav1.Now()
		report.LastSyncTime = &now
	}
	if err := kube.PatchStatus(ctx, r.Client, orig, inst); err != nil {
		// A lost race with the manager: the task is idempotent, so it is safe to look again.
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	if writing {
		r.wrote(req.NamespacedName, orig.ResourceVersion)
	}
	if finished {
		r.forget(inst.UID)
		log.FromContext(ctx).V(1).Info("reported", "task", report.TaskID, "result", report.TaskResult,
			"state", stateLookedAt.Sub(looked).String(), "write", time.Since(stateLookedAt).String())
	}
	if stateErr != nil {
		return ctrl.Result{}, fmt.Errorf("state of %s: %w", req.NamespacedName, stateErr)
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// carryOutTask makes one attempt at the task and records its outcome in the report. It says
// whether the task finished, when to look again while it goes on, and, when the reconcile must
// stop here (waiting for the image store or libvirtd, or retrying), what to return.
func (r *InstanceReconciler) carryOutTask(ctx context.Context, inst *v1.Instance, task *v1.Task, checkpoint func()) (finished bool, next time.Duration, stop *ctrl.Result) {
	report := inst.Status.AgentReport
	done, err := r.attempt(ctx, inst, task, checkpoint)
	switch {
	case err != nil:
		if wait, what, ok := r.waitInsteadOfFailing(ctx, inst.UID, task.ID, err); ok {
			log.FromContext(ctx).Info("waiting for "+what, "action", task.Action, "error", err.Error())
			return false, 0, &ctrl.Result{RequeueAfter: wait}
		}
		if attempt, again := r.failed(inst.UID, task.ID); again && !isFinal(err) {
			log.FromContext(ctx).Error(err, "task failed; retrying", "action", task.Action, "attempt", attempt)
			return false, 0, &ctrl.Result{RequeueAfter: time.Duration(attempt) * retryStep}
		}
		report.TaskID, report.TaskResult, report.Message = task.ID, v1.TaskFailed, err.Error()
		r.removeTaskLeftovers(ctx, inst)
		return true, 0, nil
	case done:
		report.TaskID, report.TaskResult, report.Message = task.ID, v1.TaskSucceeded, ""
		return true, 0, nil
	}
	return false, guestPoll, nil
}

// DefaultTaskAttemptTimeout bounds one attempt of a task step: an image fetch, a disk copy,
// an upload, a libvirt call. Waits for the guest are not attempts: they return and look again.
const DefaultTaskAttemptTimeout = 30 * time.Minute

// attempt carries out one step of a task within TaskAttemptTimeout. A step cut short by it
// fails like any other (three attempts, then the task fails), saying so: a hung storage mount
// or libvirt call holds one worker for that long, not for ever.
func (r *InstanceReconciler) attempt(ctx context.Context, inst *v1.Instance, task *v1.Task, checkpoint func()) (bool, error) {
	limit := r.TaskAttemptTimeout
	if limit <= 0 {
		limit = DefaultTaskAttemptTimeout
	}
	attemptCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	done, err := r.carryOut(attemptCtx, inst, task, checkpoint)
	if err != nil && errors.Is(attemptCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%s did not finish within %s (--task-attempt-timeout): %w", task.Action, limit, err)
	}
	return done, err
}

// writeProgress writes inst's status over orig in the middle of a task of several steps and
// returns what the API server now holds; a write that loses its race is left to the final
// one, which then retries the task.
func (r *InstanceReconciler) writeProgress(ctx context.Context, orig, inst *v1.Instance) *v1.Instance {
	// Nothing new to say (a task tried again reaches the same step): no write, and so no
	// version replaced. Recording one would make the agent wait for its own write forever.
	if !kube.Changed(orig, inst) {
		return orig
	}
	if err := kube.PatchStatus(ctx, r.Client, orig, inst); err != nil {
		log.FromContext(ctx).V(1).Info("intermediate status write failed", "error", err.Error())
		return orig
	}
	r.wrote(client.ObjectKeyFromObject(inst), orig.ResourceVersion)
	return inst.DeepCopy()
}

// carryOut performs one step of a task and says whether the task is done. Every branch is
// idempotent: repeating a task that was cut short finishes it. Tasks that wait for the guest
// return false and are looked at again when the domain changes or guestPoll has passed.
// checkpoint writes status in the middle of a task of several steps.
func (r *InstanceReconciler) carryOut(ctx context.Context, inst *v1.Instance, task *v1.Task, checkpoint func()) (bool, error) {
	uid := string(inst.UID)
	log.FromContext(ctx).V(1).Info("carrying out task", "action", task.Action, "task", task.ID,
		"sinceGiven", time.Since(task.StartedAt.Time).String())
	switch task.Action {
	case v1.ActionLaunch, v1.ActionStart:
		return true, r.spawn(ctx, inst)
	case v1.ActionTerminate:
		return true, r.terminate(ctx, inst)
	case v1.ActionStop:
		return r.stop(ctx, inst, task)
	case v1.ActionReboot:
		return r.softReboot(ctx, inst, task)
	case v1.ActionHardReboot:
		return r.hardReboot(ctx, inst, task)
	case v1.ActionPause:
		return true, r.Driver.Pause(ctx, uid)
	case v1.ActionUnpause:
		return true, r.Driver.Unpause(ctx, uid)
	case v1.ActionSuspend:
		return true, r.Driver.Suspend(ctx, uid)
	case v1.ActionResume:
		return true, r.Driver.Resume(ctx, uid)
	case v1.ActionSnapshot:
		return true, r.snapshot(ctx, inst, task, checkpoint)
	case v1.ActionRebuild:
		return r.rebuild(ctx, inst, task)
	case v1.ActionShelve:
		return r.shelve(ctx, inst, task, checkpoint)
	case v1.ActionShelveOffload:
		return true, r.terminate(ctx, inst)
	case v1.ActionUnshelve:
		return true, r.spawn(ctx, inst)
	case v1.ActionRescue:
		return true, r.rescue(ctx, inst, task)
	case v1.ActionUnrescue:
		return true, r.unrescue(ctx, inst, task)
	case v1.ActionEvacuate:
		return r.evacuate(ctx, inst, task)
	case v1.ActionResize, v1.ActionMigrate:
		if inst.Status.TaskState == v1.TaskStateResizeFinish {
			return r.finishResize(ctx, inst, task)
		}
		return r.handOverDisk(ctx, inst, task)
	case v1.ActionConfirmResize:
		return r.confirmResize(ctx, inst)
	case v1.ActionRevertResize:
		if rs := inst.Status.Resize; rs != nil && rs.SourceNode != r.NodeName {
			return r.removeResized(ctx, inst, task)
		}
		return r.revertResize(ctx, inst)
	case v1.ActionLiveMigrate:
		if task.Migration == nil {
			return false, errors.New("the live migration task names no target")
		}
		if task.Migration.TargetNode == r.NodeName {
			return r.arrive(ctx, inst)
		}
		return r.liveMigrate(ctx, inst, task)
	default:
		return false, fmt.Errorf("this agent does not carry out %s yet", task.Action)
	}
}

// terminate destroys the domain and deletes the instance's own files.
func (r *InstanceReconciler) terminate(ctx context.Context, inst *v1.Instance) error {
	if err := r.Driver.Destroy(ctx, string(inst.UID)); err != nil {
		return err
	}
	return r.Storage.DeleteInstanceFiles(string(inst.UID))
}

// removeTaskLeftovers deletes what a task that failed for good made for itself and no longer
// needs: a snapshot's copy, a rebuild's new disk. Never the root disk or one set aside.
func (r *InstanceReconciler) removeTaskLeftovers(ctx context.Context, inst *v1.Instance) {
	uid := string(inst.UID)
	var leftovers []string
	if snap, err := r.Storage.SnapshotFile(uid); err == nil {
		leftovers = append(leftovers, snap)
	}
	if disk, err := r.Storage.RootDisk(uid); err == nil {
		leftovers = append(leftovers, disk+".rebuild", disk+resizeCopySuffix, disk+transferSuffix)
	}
	for _, f := range leftovers {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.FromContext(ctx).Error(err, "remove what a failed task left", "file", f)
		}
	}
}

func (r *InstanceReconciler) disks() Disks {
	if r.Disks != nil {
		return r.Disks
	}
	return r.Storage
}

func (r *InstanceReconciler) event(inst *v1.Instance, eventType, reason, action, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(inst, nil, eventType, reason, action, note, args...)
	}
}

// SetupWithManager watches the node's instances and the hypervisor's domain events.
func (r *InstanceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	workers := r.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("agent-instance").
		For(&v1.Instance{}).
		WatchesRawSource(source.Func(r.domainEvents))
	if r.Incoming != nil {
		b = b.WatchesRawSource(source.Kind(r.Incoming, &v1.Instance{}, &handler.TypedEnqueueRequestForObject[*v1.Instance]{}))
	}
	return b.
		// A simulated fleet runs one of these per node in one process, under the same name.
		WithOptions(controller.Options{MaxConcurrentReconciles: workers, SkipNameValidation: ptr.To(true)}).
		Complete(r)
}

// domainEvents turns the driver's domain events into reconciles of the instances they concern,
// so that status follows the hypervisor within moments instead of at the next resync.
func (r *InstanceReconciler) domainEvents(ctx context.Context, queue workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case e := <-r.Driver.Events():
				for _, req := range r.instancesOf(ctx, e) {
					queue.Add(req)
				}
			}
		}
	}()
	return nil
}

// instancesOf lists the node's instances an event concerns: the one whose UID is the domain's
// UUID, or all of them for an event without a UUID.
func (r *InstanceReconciler) instancesOf(ctx context.Context, e driver.Event) []reconcile.Request {
	var list v1.InstanceList
	if err := r.Client.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "list instances for a domain event")
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if e.UUID == "" || string(list.Items[i].UID) == e.UUID {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}
