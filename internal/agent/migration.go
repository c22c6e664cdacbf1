package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/scheduler"
	"github.com/kubenova/kubenova/internal/storage"
)

// A live migration runs in three places, as Nova's does: the target's agent prepares what the
// domain needs there (pre_live_migration) and says so in status.peerReport; the source's
// agent then has its libvirtd migrate the domain straight to the target's
// (_live_migration_operation) and reports when the domain has left; the manager moves
// status.nodeName to the target, whose agent checks that the guest runs and reports the
// migration's figures (post_live_migration_at_destination). The source of a block migration
// deletes its copy once the domain has left; other files a move leaves behind go only where
// that cannot hit a live disk (cleanUpLeftBehind).

// migrationRun is a live migration this agent's process started: the driver call blocks until
// the move is over, so it runs beside the reconciles, which look at it.
type migrationRun struct {
	taskID int64
	// deadline is when the move is aborted if it has not ended (timedOut then).
	deadline time.Time
	timedOut bool
	done     bool
	err      error
}

// DefaultMigrationTimeoutPerGiB is Nova's live_migration_completion_timeout: how long a live
// migration may take per GiB it copies (memory, and disk in a block migration) before it is
// aborted, the guest running on at the source.
const DefaultMigrationTimeoutPerGiB = 800 * time.Second

// finalError is a task failure that trying again cannot mend (an abort asked for).
type finalError struct{ error }

func (e finalError) Unwrap() error { return e.error }

// isFinal says whether err ends its task at once, without the usual retries.
func isFinal(err error) bool {
	var f finalError
	return errors.As(err, &f)
}

// liveMigrate is the source's part of a LiveMigrate task. It is done once the domain has left
// this node: libvirt undefines the source only when the guest runs on the target.
func (r *InstanceReconciler) liveMigrate(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	m := task.Migration
	uid := string(inst.UID)
	report := inst.Status.AgentReport
	st, err := r.Driver.State(ctx, uid)
	if err != nil {
		return false, err
	}
	run := r.migrationRunOf(inst.UID, task.ID)
	if st.Departed() {
		// Gone, or shut off as migrated and about to be undefined: libvirt does either only
		// once the guest runs on the target (the domain event says so before the driver call
		// returns, which no longer matters). An agent that restarted meanwhile sees the same.
		r.dropMigrationRun(inst.UID)
		if m.BlockMigration {
			// The disk this node just handed over: the target runs its own copy, and no other
			// node ran this one. Deleting again after a restart finds nothing.
			if err := r.Storage.DeleteInstanceFiles(uid); err != nil {
				return false, err
			}
		}
		return true, nil
	}
	if m.Abort {
		if err := r.Driver.AbortMigration(ctx, uid); err != nil {
			return false, err
		}
		if run != nil && !run.done {
			return false, nil // libvirt ends the job; the call returns
		}
		// A job an earlier run of this agent started may still be ending, or the move may have
		// finished before the abort: only a domain still here, with no job, failed to move.
		if _, inFlight, err := r.Driver.MigrationProgress(ctx, uid); err != nil || inFlight {
			return false, err
		}
		now, err := r.Driver.State(ctx, uid)
		if err != nil || now.Departed() {
			return false, err // gone after all: the next look says so
		}
		r.dropMigrationRun(inst.UID)
		if !now.Active() {
			return false, finalError{fmt.Errorf("aborted: the Migration was deleted; the guest stays here, %s (%s)", now.Power, now.Reason)}
		}
		return false, finalError{errors.New("aborted: the Migration was deleted; the guest runs on here")}
	}
	deadline := r.migrationDeadline(inst, task)
	if run != nil {
		if !run.done {
			if time.Now().After(deadline) && !run.timedOut {
				r.markTimedOut(inst.UID)
				log.FromContext(ctx).Info("the live migration takes too long; aborting", "deadline", deadline)
				if err := r.Driver.AbortMigration(ctx, uid); err != nil {
					return false, err
				}
			}
			return false, r.followMigration(ctx, inst, task)
		}
		r.dropMigrationRun(inst.UID)
		switch {
		case run.err == nil:
			return false, nil // moved: the domain is about to be gone here; look again
		case run.timedOut:
			return false, moveEndedHere(st, fmt.Errorf("aborted at %s, the completion timeout", deadline.UTC().Format(time.RFC3339)))
		}
		return false, moveEndedHere(st, run.err)
	}
	// A migration that an earlier run of this agent started: libvirtd carries it on, and the
	// deadline counts from the task's start.
	if _, inFlight, err := r.Driver.MigrationProgress(ctx, uid); err != nil || inFlight {
		if err != nil {
			return false, err
		}
		if time.Now().After(deadline) {
			if err := r.Driver.AbortMigration(ctx, uid); err != nil {
				return false, err
			}
		}
		return false, r.followMigration(ctx, inst, task)
	}
	if report.Step == v1.StepMigrating && report.StepTaskID == task.ID {
		// This node began the move, and it ended while this agent was away: its outcome is
		// not this node's to know (and never to begin again); the target says where the
		// guest runs.
		return false, moveEndedHere(st, errors.New("the move this node began ended while its agent was away"))
	}
	if !st.Active() {
		return false, finalError{fmt.Errorf("the domain is %s (%s), not running: only a running guest migrates live", st.Power, st.Reason)}
	}
	if m.BlockMigration && (report.StepTaskID != task.ID || report.RootDiskBytes == 0) {
		// The target makes an empty disk of the same size for the copy.
		disk, err := r.Storage.RootDisk(uid)
		if err != nil {
			return false, err
		}
		size, err := storage.DiskVirtualSize(disk)
		if err != nil {
			return false, err
		}
		report.RootDiskBytes, report.StepTaskID, report.Step = size, task.ID, ""
		return false, nil
	}
	if tr := inst.Status.PeerReport; tr == nil || tr.NodeName != m.TargetNode || tr.StepTaskID != task.ID || tr.Step != v1.StepPrepared {
		return false, nil // the target prepares; its report brings us back
	}
	if time.Now().After(deadline) {
		return false, finalError{fmt.Errorf("the completion timeout passed at %s before the move could begin", deadline.UTC().Format(time.RFC3339))}
	}
	r.startMigration(ctx, inst, task, deadline)
	report.Step, report.StepTaskID = v1.StepMigrating, task.ID
	return false, nil
}

// moveEndedHere is the source's report of a live migration that ended with its domain still
// here, st: final, since a move that libvirt ended with an error may still have left the
// guest running on the target (its reply to the source lost), where a second attempt would
// meet it. The manager records the outcome only once the target has said what it has.
func moveEndedHere(st driver.State, err error) error {
	return finalError{fmt.Errorf("%w; the domain is still here, %s", err, describeDomain(st))}
}

// migrationDeadline is when a live migration is aborted if it has not ended: the completion
// timeout per GiB it copies (memory, and the disk in a block migration), counted from the
// task's start, as Nova's live_migration_completion_timeout scales.
func (r *InstanceReconciler) migrationDeadline(inst *v1.Instance, task *v1.Task) time.Time {
	copied := int64(inst.Status.Flavor.MemoryMiB) << 20
	if task.Migration.BlockMigration && inst.Status.AgentReport != nil {
		copied += inst.Status.AgentReport.RootDiskBytes
	}
	gib := max(1, float64(copied)/(1<<30))
	return task.StartedAt.Add(time.Duration(gib * float64(r.migrationTimeoutPerGiB())))
}

// progressInterval is how often a live migration's progress is written at most. libvirt's
// figures change at every look, and each write wakes this agent, the manager and the
// Migration's controller: written at every look, one move of 5 s cost 61 instance writes (and
// as many of its Migration). Once a second, on the job's own clock, is enough to watch it by.
const progressInterval = time.Second

// followMigration copies the migration's progress into the report, once per progressInterval.
func (r *InstanceReconciler) followMigration(ctx context.Context, inst *v1.Instance, task *v1.Task) error {
	stats, inFlight, err := r.Driver.MigrationProgress(ctx, string(inst.UID))
	if err != nil || !inFlight {
		return err
	}
	report := inst.Status.AgentReport
	if last := report.Migration; last != nil && report.Step == v1.StepMigrating && report.StepTaskID == task.ID &&
		stats.Elapsed > 0 && stats.Elapsed-time.Duration(last.TotalMillis)*time.Millisecond < progressInterval {
		return nil // written less than a second ago; the next look (guestPoll) writes again
	}
	report.Step, report.StepTaskID = v1.StepMigrating, task.ID
	report.Migration = &v1.MigrationProgress{ProgressPercent: stats.Percent(),
		DataTotalBytes: stats.DataTotal, DataRemainingBytes: stats.DataRemaining, TotalMillis: stats.Elapsed.Milliseconds()}
	return nil
}

// startMigration has the driver migrate the domain, beside the reconciles.
func (r *InstanceReconciler) startMigration(ctx context.Context, inst *v1.Instance, task *v1.Task, deadline time.Time) {
	m := task.Migration
	target := driver.MigrationTarget{URI: m.TargetURI, SourceRoot: r.Storage.Root, TargetRoot: m.TargetStorageRoot,
		Block: m.BlockMigration, SharedStorage: !m.BlockMigration, TLS: r.MigrationTLS, BandwidthMiBs: r.MigrationBandwidthMiBs,
		NICs: targetNICs(inst, m.TargetNetworks)}
	run := &migrationRun{taskID: task.ID, deadline: deadline}
	r.mu.Lock()
	if r.migrations == nil {
		r.migrations = map[types.UID]*migrationRun{}
	}
	r.migrations[inst.UID] = run
	r.mu.Unlock()
	logger := log.FromContext(ctx)
	logger.Info("live-migrating", "target", m.TargetNode, "uri", m.TargetURI, "block", m.BlockMigration, "deadline", deadline)
	uid := inst.UID
	go func() {
		began := time.Now()
		// The call is the hypervisor's to finish: no reconcile's context may cut it short.
		err := r.Driver.MigrateLive(context.Background(), string(uid), target)
		logger.Info("live migration ended", "took", time.Since(began).String(), "error", err)
		r.mu.Lock()
		run.done, run.err = true, err
		r.mu.Unlock()
	}()
}

func (r *InstanceReconciler) migrationRunOf(uid types.UID, taskID int64) *migrationRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	run, ok := r.migrations[uid]
	if !ok || run.taskID != taskID {
		return nil
	}
	copied := *run
	return &copied
}

func (r *InstanceReconciler) markTimedOut(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if run, ok := r.migrations[uid]; ok {
		run.timedOut = true
	}
}

func (r *InstanceReconciler) migrationTimeoutPerGiB() time.Duration {
	if r.MigrationTimeoutPerGiB > 0 {
		return r.MigrationTimeoutPerGiB
	}
	return DefaultMigrationTimeoutPerGiB
}

func (r *InstanceReconciler) dropMigrationRun(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.migrations, uid)
}

// arrive is the target's last part of a LiveMigrate task, once status.nodeName names it: the
// guest must run here; the report carries the migration's figures from libvirt.
func (r *InstanceReconciler) arrive(ctx context.Context, inst *v1.Instance) (bool, error) {
	uid := string(inst.UID)
	st, err := r.Driver.State(ctx, uid)
	if err != nil {
		return false, err
	}
	if !st.Active() {
		return false, fmt.Errorf("the domain is %s on this node after its migration", st.Power)
	}
	stats, found, err := r.Driver.ArrivedMigration(ctx, uid)
	if err != nil {
		return false, err
	}
	if found {
		inst.Status.AgentReport.Migration = &v1.MigrationProgress{ProgressPercent: 100, DataTotalBytes: stats.DataTotal,
			DowntimeMillis: stats.Downtime.Milliseconds(), TotalMillis: stats.Elapsed.Milliseconds()}
	}
	// The files are the running instance's now, not an incoming move's.
	if mark, ok, err := r.Storage.ReadTaskMark(uid); err != nil {
		return false, err
	} else if ok && mark.Step == incomingStep(r.NodeName) {
		if err := r.Storage.WriteTaskMark(uid, storage.TaskMark{TaskID: mark.TaskID, RunID: -1, Step: stepArrived}); err != nil {
			return false, err
		}
	}
	return true, nil
}

// stepArrived is the target's task mark once an incoming move arrived.
const stepArrived = "arrived"

// incomingStep is the task mark of files that node made for an incoming move: named, since
// other nodes may see them on shared storage.
func incomingStep(node string) string { return "incoming to " + node }

// preparedHere says whether this node made the instance's files for an incoming move that has
// not arrived (its task mark says so).
func (r *InstanceReconciler) preparedHere(uid string) bool {
	return preparedFor(r.Storage, r.NodeName, uid)
}

func preparedFor(own *storage.Node, node, uid string) bool {
	mark, ok, err := own.ReadTaskMark(uid)
	return err == nil && ok && mark.Step == incomingStep(node)
}

// reconcileIncoming serves the instances whose task names this node its peer: a confirmation
// that deletes this source's copy of a resized disk, and the target's first part of a
// LiveMigrate task while the instance still lives on its source: make what the domain needs
// here, and say so in status.peerReport.
func (r *InstanceReconciler) reconcileIncoming(ctx context.Context, inst *v1.Instance) (ctrl.Result, error) {
	task := inst.Status.Task
	if task != nil && task.Action == v1.ActionConfirmResize && task.PeerNode == r.NodeName && inst.Status.NodeName != r.NodeName {
		return r.reconcilePeerConfirm(ctx, inst)
	}
	if task == nil || task.Migration == nil || task.Action != v1.ActionLiveMigrate ||
		task.Migration.TargetNode != r.NodeName || inst.Status.NodeName == r.NodeName {
		return ctrl.Result{}, nil
	}
	orig := inst.DeepCopy()
	if tr := inst.Status.PeerReport; tr == nil || tr.NodeName != r.NodeName {
		inst.Status.PeerReport = &v1.AgentReport{NodeName: r.NodeName}
	}
	tr := inst.Status.PeerReport
	if tr.TaskID == task.ID || (tr.StepTaskID == task.ID && tr.Step == v1.StepMigrated) {
		return ctrl.Result{}, nil // answered
	}
	if err := r.storageReady(ctx); err != nil {
		log.FromContext(ctx).Info("the incoming move waits for the storage root", "reason", err.Error())
		return ctrl.Result{RequeueAfter: storageRecheck}, nil
	}
	if tr.StepTaskID == task.ID && tr.Step == v1.StepPrepared {
		return r.reportArrival(ctx, orig, inst)
	}
	next := time.Duration(0)
	ready, err := r.prepareIncoming(ctx, inst, task)
	switch {
	case err != nil:
		if wait, what, ok := r.waitInsteadOfFailing(ctx, inst.UID, task.ID, err); ok {
			log.FromContext(ctx).Info("waiting for "+what, "action", task.Action, "error", err.Error())
			return ctrl.Result{RequeueAfter: wait}, nil
		}
		if attempt, again := r.failed(inst.UID, task.ID); again && !isFinal(err) {
			log.FromContext(ctx).Error(err, "preparing for an incoming migration failed; retrying", "attempt", attempt)
			return ctrl.Result{RequeueAfter: time.Duration(attempt) * retryStep}, nil
		}
		tr.TaskID, tr.TaskResult, tr.Message = task.ID, v1.TaskFailed, err.Error()
		r.forget(inst.UID)
	case ready:
		tr.Step, tr.StepTaskID = v1.StepPrepared, task.ID
		r.forget(inst.UID)
	default:
		next = guestPoll
	}
	if err := kube.PatchStatus(ctx, r.Client, orig, inst); err != nil {
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	if kube.Changed(orig, inst) {
		r.wrote(client.ObjectKeyFromObject(inst), orig.ResourceVersion)
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// reportArrival says in status.peerReport when the guest runs on this node while its source
// has not said it left: should the source's node fail right then, the manager still knows
// where the guest is. It looks every few seconds while the move runs. Once the source says the
// move ended with its domain still there, this node's word decides the outcome: the guest runs
// here (libvirt's reply to the source was lost: the manager finds it on both nodes, or only
// here), or it did not arrive.
func (r *InstanceReconciler) reportArrival(ctx context.Context, orig, inst *v1.Instance) (ctrl.Result, error) {
	st, err := r.Driver.State(ctx, string(inst.UID))
	if err != nil {
		return ctrl.Result{}, err
	}
	task, tr := inst.Status.Task, inst.Status.PeerReport
	switch {
	case ranHere(st):
		tr.Step = v1.StepMigrated
	case sourceEndedMove(inst, task):
		tr.TaskID, tr.TaskResult = task.ID, v1.TaskFailed
		tr.Message = fmt.Sprintf("the guest did not arrive on %s: its domain there is %s", r.NodeName, describeDomain(st))
	default:
		return ctrl.Result{RequeueAfter: arrivalPoll}, nil
	}
	if err := kube.PatchStatus(ctx, r.Client, orig, inst); err != nil {
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	r.wrote(client.ObjectKeyFromObject(inst), orig.ResourceVersion)
	return ctrl.Result{}, nil
}

// ranHere says whether an incoming guest has run on this node: libvirt starts its vCPUs only
// once the move is complete, so a copy that is paused for the move (or starting up) never ran,
// while one running, or paused for any other reason, did.
func ranHere(st driver.State) bool {
	switch st.Power {
	case v1.PowerStateRunning:
		return true
	case v1.PowerStatePaused:
		return st.Reason != driver.ReasonPausedForMigration && st.Reason != driver.ReasonStartingUp
	}
	return false
}

// sourceEndedMove says whether the source's agent reported the live migration of task over
// with the domain still on the source (a failure from its own view).
func sourceEndedMove(inst *v1.Instance, task *v1.Task) bool {
	rep := inst.Status.AgentReport
	return rep != nil && rep.NodeName == task.Migration.SourceNode && rep.TaskID == task.ID && rep.TaskResult == v1.TaskFailed
}

// describeDomain says what a domain state is, for people.
func describeDomain(st driver.State) string {
	if st.Power == v1.PowerStateNoState {
		return "absent"
	}
	if st.Reason == "" {
		return string(st.Power)
	}
	return fmt.Sprintf("%s (%s)", st.Power, st.Reason)
}

// arrivalPoll is how often a target looks for the guest it prepared for.
const arrivalPoll = 5 * time.Second

// prepareIncoming makes the instance's files on the target: nothing but the owner record on
// storage shared with the source (the disk is there already), an empty disk of the source
// disk's size for a block migration to copy into, and the config drive, which libvirt does not
// copy (it is read-only) and which is made here from the spec, as at any first boot on a node.
// It says whether all is ready; a block migration waits for the source to report its disk's
// size.
func (r *InstanceReconciler) prepareIncoming(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	m := task.Migration
	uid := string(inst.UID)
	disk, err := r.Storage.RootDisk(uid)
	if err != nil {
		return false, err
	}
	rel, err := r.storageRelationTo(ctx, m.SourceNode)
	if err != nil {
		return false, err
	}
	if !m.BlockMigration {
		if rel != storageShared {
			return false, finalError{fmt.Errorf("node %s is not known to share its storage with %s: the guest's disk is not here, so only a block migration can move it", r.NodeName, m.SourceNode)}
		}
		if _, err := os.Stat(disk); err != nil {
			return false, fmt.Errorf("the shared root disk is not visible here: %w", err)
		}
		return true, nil
	}
	if rel != storageSeparate {
		// A blank disk here could be written over the disk the guest runs from.
		return false, finalError{fmt.Errorf("nodes %s and %s may share their storage: a block migration could overwrite the disk it copies", m.SourceNode, r.NodeName)}
	}
	if _, err := os.Stat(disk); err == nil && r.SharedStorage && !r.preparedHere(uid) {
		// On shared storage a disk at this path may be some node's live disk, whatever the
		// storage IDs say; unless this node made it for an earlier move that did not happen.
		return false, finalError{fmt.Errorf("a disk exists at %s on this node's shared storage: it may be in use, so the block migration does not replace it", disk)}
	}
	src := inst.Status.AgentReport
	if src == nil || src.NodeName != m.SourceNode || src.StepTaskID != task.ID || src.RootDiskBytes == 0 {
		return false, nil // the source reports its disk's size first
	}
	if err := r.Storage.WriteOwner(uid, storage.Owner{Namespace: inst.Namespace, Name: inst.Name}); err != nil {
		return false, err
	}
	if err := r.Storage.CreateBlankDisk(ctx, disk, src.RootDiskBytes); err != nil {
		return false, err
	}
	// Recorded so that this node knows these files for its own should the move not happen.
	if err := r.Storage.WriteTaskMark(uid, storage.TaskMark{TaskID: task.ID, RunID: -1, Step: incomingStep(r.NodeName)}); err != nil {
		return false, err
	}
	if drive, err := r.Storage.ConfigDrive(uid); err == nil {
		_ = os.Remove(drive) // made again from the spec, like the first boot's
	}
	if _, err := r.configDrive(ctx, inst); err != nil {
		return false, err
	}
	return true, nil
}

// storageRelation is what an agent can tell of another node's storage beside its own.
type storageRelation int

const (
	// storageUnknown: no Hypervisor, or no storage ID on one side: it may be the same storage.
	storageUnknown storageRelation = iota
	// storageShared: both report the same storage ID (the node itself, too).
	storageShared
	// storageSeparate: both report storage IDs, and they differ.
	storageSeparate
)

// storageRelationTo compares this node's storage with node's, from the storage IDs both
// report (storage.Node.StorageID, written into the storage itself once). An instance placed nowhere
// ("") holds no node's storage.
func (r *InstanceReconciler) storageRelationTo(ctx context.Context, node string) (storageRelation, error) {
	return compareStorage(ctx, r.Reader, r.Storage, r.NodeName, node)
}

func compareStorage(ctx context.Context, reader client.Reader, own *storage.Node, me, node string) (storageRelation, error) {
	switch node {
	case "":
		return storageSeparate, nil
	case me:
		return storageShared, nil
	}
	// Read, never written: a root that lost its ID is refused, not given another.
	mine, err := own.ReadStorageID()
	if err != nil {
		return storageUnknown, err
	}
	hv := &v1.Hypervisor{}
	if err := reader.Get(ctx, types.NamespacedName{Name: node}, hv); apierrors.IsNotFound(err) {
		return storageUnknown, nil
	} else if err != nil {
		return storageUnknown, err
	}
	switch {
	case mine == "" || hv.Status.StorageID == "":
		return storageUnknown, nil
	case hv.Status.StorageID == mine:
		return storageShared, nil
	}
	return storageSeparate, nil
}

// mayRemoveMovedFiles says whether this node may remove the files an instance that lives
// elsewhere left in its storage: only from storage it declares its own (not --shared-storage),
// which no node the instance involves (its node, its migration's target) is known to share.
// Files left on shared storage stay: there, a storage ID read while an export was not mounted
// could make a live disk look like a leftover, and a leftover costs only space.
func mayRemoveMovedFiles(ctx context.Context, reader client.Reader, own *storage.Node, me string, sharedStorage bool, inst *v1.Instance) (bool, error) {
	if sharedStorage {
		return false, nil
	}
	for _, node := range nodesOf(inst) {
		rel, err := compareStorage(ctx, reader, own, me, node)
		if err != nil || rel != storageSeparate {
			return false, err
		}
	}
	return true, nil
}

// cleanUpLeftBehind tidies what an instance that no longer concerns this node left here, as
// soon as it leaves this node (a live read saying it lives on another node, and is no
// migration's target here). A domain of it is destroyed at once, never started: the instance
// was evacuated while this node was cut off, and its guest must not run on two nodes a moment
// longer. Files go only from storage this node does not share (mayRemoveMovedFiles) or that
// it made itself for a move that did not arrive (preparedHere): the disk of a source after a
// block migration, or the disk a target made for a migration that failed. The disk of an
// instance an evacuation rebuilt from its image elsewhere is the last copy of its data: it goes
// to quarantine instead.
func (r *InstanceReconciler) cleanUpLeftBehind(ctx context.Context, key types.NamespacedName, uid types.UID) error {
	inst := &v1.Instance{}
	if err := r.Reader.Get(ctx, key, inst); err != nil {
		// A deleted instance's files are its terminate task's, or the orphan cleanup's.
		return client.IgnoreNotFound(err)
	}
	if inst.UID != uid || !r.livesElsewhere(inst) {
		return nil
	}
	st, err := r.Driver.State(ctx, string(uid))
	if err != nil {
		return err
	}
	switch staleGuestActionFor(inst, r.NodeName, st.Power) {
	case pauseStaleGuest:
		log.FromContext(ctx).Info("pausing the copy of a guest that ran on two nodes; the instance is recorded elsewhere", "node", inst.Status.NodeName)
		if err := r.Driver.Pause(ctx, string(uid)); err != nil {
			return err
		}
		r.event(inst, corev1.EventTypeWarning, ReasonStaleGuestKept, "Cleanup",
			"its guest ran on %s and on %s after a failed live migration: the copy on %s is paused and kept for a person to decide", r.NodeName, inst.Status.NodeName, r.NodeName)
		return nil
	case keepStaleGuest:
		log.FromContext(ctx).Info("keeping a running guest of an instance recorded elsewhere: nothing says its guest runs there", "node", inst.Status.NodeName)
		r.event(inst, corev1.EventTypeWarning, ReasonStaleGuestKept, "Cleanup",
			"its guest runs on %s, yet it is recorded on %s without a record that its guest runs there: kept for a person to decide", r.NodeName, inst.Status.NodeName)
		return nil
	}
	if st.Power != v1.PowerStateNoState {
		log.FromContext(ctx).Info("destroying at once the domain of an instance that now lives elsewhere; its disks stay", "node", inst.Status.NodeName)
		if err := r.Driver.Destroy(ctx, string(uid)); err != nil {
			return err
		}
	}
	if err := r.storageReady(ctx); err != nil {
		log.FromContext(ctx).Info("the files an instance that moved away left here stay: the storage root is refused", "reason", err.Error())
		return nil // the sweep looks again once the root is back
	}
	dir, err := r.Storage.InstanceDir(string(uid))
	if err != nil {
		return nil
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	may, err := mayRemoveMovedFiles(ctx, r.Reader, r.Storage, r.NodeName, r.SharedStorage, inst)
	if err != nil || (!may && !r.preparedHere(string(uid))) {
		return err
	}
	if lastCopyAfterEvacuation(inst, r.NodeName) {
		if err := r.Storage.QuarantineInstanceFiles(string(uid), evacuatedRecord(inst, r.NodeName)); err != nil {
			return err
		}
		r.event(inst, corev1.EventTypeWarning, ReasonInstanceFilesQuarantined, "Quarantine",
			"node %s kept the old disk in quarantine: the evacuation rebuilt the instance from its image on %s", r.NodeName, inst.Status.NodeName)
		return nil
	}
	log.FromContext(ctx).Info("removing the files an instance that moved away left here", "node", inst.Status.NodeName)
	return r.Storage.DeleteInstanceFiles(string(uid))
}

// livesElsewhere says whether an instance has nothing to do with this node now: placed on
// another node (or none), and no move in flight or awaiting confirmation involves this node.
func (r *InstanceReconciler) livesElsewhere(inst *v1.Instance) bool {
	return inst.Status.NodeName != r.NodeName && !scheduler.Involves(inst, r.NodeName)
}

// evacuate rebuilds the instance on this node after its own node was fenced (Nova's rebuild on
// another host): from its own disk when this node shares the old node's storage, else from its
// image on a fresh disk (whatever this node kept of the instance before is older than that
// image, and goes first, once: the task mark says so). A stopped instance is stopped again, as
// Nova's evacuate leaves it. QEMU's disk locking refuses to open a shared disk that a QEMU on
// the old node still writes: a guard beside the fencing.
func (r *InstanceReconciler) evacuate(ctx context.Context, inst *v1.Instance, task *v1.Task) (bool, error) {
	m := task.Migration
	if m == nil {
		return false, errors.New("the evacuation task names no move")
	}
	uid := string(inst.UID)
	mark, fresh, err := r.taskMark(uid, task.ID)
	if err != nil {
		return false, err
	}
	if mark.Step != rebuildBooted {
		if m.FromImage {
			if fresh {
				if err := r.setAsideOldFiles(ctx, inst, m.SourceNode, task.ID); err != nil {
					return false, err
				}
				if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
					return false, err
				}
			}
		} else {
			disk, err := r.Storage.RootDisk(uid)
			if err != nil {
				return false, err
			}
			if _, err := os.Stat(disk); err != nil {
				return false, finalError{fmt.Errorf("the instance's disk is not on this node's storage, which the fenced node %s was said to share: %w", m.SourceNode, err)}
			}
		}
		if err := r.spawn(ctx, inst); err != nil {
			return false, err
		}
		mark.Step = rebuildBooted
		if err := r.Storage.WriteTaskMark(uid, mark); err != nil {
			return false, err
		}
	}
	if inst.Status.VMState != v1.VMStateStopped {
		return true, nil
	}
	return r.stop(ctx, inst, task)
}

// setAsideOldFiles clears the way for an evacuation's fresh disk: whatever this node kept of
// the instance is older than the image, and nothing says it is unwanted (it may be the newest
// copy left if the fenced node's disk is lost). On storage this node does not share, and does
// not share with the fenced node, it goes to quarantine; elsewhere it is renamed aside
// (instances/<uid>.replaced-<task>), for people to look at: it may be the disk the old node ran.
func (r *InstanceReconciler) setAsideOldFiles(ctx context.Context, inst *v1.Instance, source string, taskID int64) error {
	uid := string(inst.UID)
	dir, err := r.Storage.InstanceDir(uid)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	rel, err := r.storageRelationTo(ctx, source)
	if err != nil {
		return err
	}
	if rel == storageShared {
		return finalError{fmt.Errorf("this node shares its storage with %s: the evacuation was to boot the instance's own disk", source)}
	}
	if rel == storageSeparate && !r.SharedStorage {
		return r.Storage.QuarantineInstanceFiles(uid, storage.QuarantineRecord{Namespace: inst.Namespace, Name: inst.Name,
			Node: r.NodeName, Reason: reasonReplacedByEvacuation, Since: time.Now().UTC()})
	}
	return os.Rename(dir, fmt.Sprintf("%s.replaced-%d", dir, taskID))
}

// nodesOf lists every node an instance involves: its own, a move's target, its task's peer, a
// resize's source and target.
func nodesOf(inst *v1.Instance) []string {
	nodes := []string{inst.Status.NodeName, scheduler.MigrationTarget(inst)}
	if t := inst.Status.Task; t != nil && t.PeerNode != "" {
		nodes = append(nodes, t.PeerNode)
	}
	if rs := inst.Status.Resize; rs != nil {
		nodes = append(nodes, rs.SourceNode, rs.TargetNode)
	}
	return nodes
}
