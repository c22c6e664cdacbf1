package controllers

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// migrationActions maps each Migration type to the action that serves it.
var migrationActions = map[v1.MigrationType]v1.Action{
	v1.MigrationLive: v1.ActionLiveMigrate, v1.MigrationCold: v1.ActionMigrate, v1.MigrationEvacuate: v1.ActionEvacuate,
}

// serveMigration starts the oldest Migration of the instance that waits (the Migration
// controller has found nothing wrong with it: its phase is Pending) once the instance is idle,
// and acknowledges it in status.migrationRequest, where the Migration controller reads what
// became of it. A Migration that cannot be served (the state machine or the lock refuses it,
// no node fits) is acknowledged as Refused, which fails it. It says whether it started a task.
func (r *InstanceReconciler) serveMigration(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	if inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return false, nil
	}
	var list v1.MigrationList
	if err := r.List(ctx, &list, client.InNamespace(inst.Namespace), client.MatchingFields{indexMigrationInstance: inst.Name}); err != nil {
		return false, err
	}
	last := inst.Status.MigrationRequest
	var next *v1.Migration
	for i := range list.Items {
		mig := &list.Items[i]
		if last != nil && last.UID == string(mig.UID) {
			if !migrationFinal(mig) && mig.DeletionTimestamp.IsZero() {
				return false, nil // its outcome is not read yet
			}
			continue
		}
		if mig.Status.Phase != v1.MigrationPending || !mig.DeletionTimestamp.IsZero() {
			continue
		}
		if next == nil || mig.CreationTimestamp.Before(&next.CreationTimestamp) ||
			(mig.CreationTimestamp.Equal(&next.CreationTimestamp) && mig.Name < next.Name) {
			next = mig
		}
	}
	if next == nil {
		return false, nil
	}
	action := migrationActions[next.Spec.Type]
	ack := &v1.ObjectRequestStatus{Name: next.Name, UID: string(next.UID), SourceNode: inst.Status.NodeName}
	refusal := r.check(inst, action)
	switch {
	case refusal == nil && !supportedActions[action]:
		refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonNotSupported,
			Message: fmt.Sprintf("%s migrations are not supported by this version of kubenova yet", next.Spec.Type)}
	case refusal == nil && inst.Spec.Locked && !next.Spec.OverrideLock:
		// A Migration is not a change of the instance's spec, so the lock policy never saw it.
		refusal = &lifecycle.Refusal{Action: action, Reason: v1.ReasonLocked,
			Message: "cannot migrate: the instance is locked; unlock it first, or have an administrator migrate it with spec.overrideLock"}
	case refusal != nil && refusal.Reason == v1.ReasonTaskInProgress:
		return false, nil
	}
	var move *v1.MigrationTask
	var image *v1.AppliedImage
	var cold *v1.ResizeStatus
	if refusal == nil {
		var err error
		switch action {
		case v1.ActionEvacuate:
			move, image, refusal, err = r.planEvacuation(ctx, inst, next)
		case v1.ActionMigrate:
			cold, refusal, err = r.planResize(ctx, inst, action, *inst.Status.Flavor.DeepCopy(), next.Spec.TargetNode)
		default:
			move, refusal, err = r.planLiveMigration(ctx, inst, next)
		}
		if err != nil {
			return false, err
		}
	}
	if refusal != nil {
		ack.Result, ack.Reason, ack.Message = v1.RequestRefused, refusal.Reason, refusal.Message
		inst.Status.MigrationRequest = ack
		r.event(st, inst, corev1.EventTypeWarning, refusal.Reason, string(action), "migration %s: %s", next.Name, refusal.Message)
		return false, nil
	}
	if cold != nil {
		cold.MigrationName, cold.MigrationUID = next.Name, string(next.UID)
		r.beginResize(inst, st, action, cold)
		ack.Result, ack.TaskID, ack.TargetNode = v1.RequestAccepted, inst.Status.Task.ID, cold.TargetNode
		inst.Status.MigrationRequest = ack
		return true, nil
	}
	r.startTask(st, inst, action)
	inst.Status.Task.Migration = move
	ack.Result, ack.TaskID, ack.TargetNode, ack.BlockMigration = v1.RequestAccepted, inst.Status.Task.ID, move.TargetNode, move.BlockMigration
	ack.RebuiltFromImage = move.FromImage
	inst.Status.MigrationRequest = ack
	if action == v1.ActionEvacuate {
		// Nothing runs on the fenced source any more: the target owns the instance from now on.
		inst.Status.NodeName = move.TargetNode
		inst.Status.Task.Image = image
		how := "from its own disk on the shared storage"
		if move.FromImage {
			how = fmt.Sprintf("from %s: the source does not share its storage, so the disk's data is lost", image.ImageReference)
		}
		r.event(st, inst, corev1.EventTypeWarning, ReasonEvacuating, string(action), "migration %s: evacuating from fenced node %s to %s, rebuilt %s",
			next.Name, move.SourceNode, move.TargetNode, how)
		return true, nil
	}
	// The target prepares before the move: its agent watches the instance as the task's peer.
	inst.Status.Task.PeerNode = move.TargetNode
	how := "shared storage: memory only"
	if move.BlockMigration {
		how = "block migration: memory and disks"
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, string(action), "migration %s: live-migrating from %s to %s (%s)",
		next.Name, move.SourceNode, move.TargetNode, how)
	return true, nil
}

// ReasonEvacuating says an instance is rebuilt elsewhere, its node fenced.
const ReasonEvacuating = "Evacuating"

// ReasonNotFenced says an evacuation waits for its node to be fenced and down.
const ReasonNotFenced = "NotFenced"

// planEvacuation checks that the instance's node is fenced (Hypervisor.spec.forcedDown, or the
// node.kubernetes.io/out-of-service taint) and down (its agent's lease lapsed, or its Node not
// Ready): never while the node may still run the guest. It then chooses the target as a live
// migration does, and decides how the instance is rebuilt there: from its own disk when the
// two nodes share storage, from its image otherwise (which must still be Available, the same
// image the disk was built from).
func (r *InstanceReconciler) planEvacuation(ctx context.Context, inst *v1.Instance, mig *v1.Migration) (*v1.MigrationTask, *v1.AppliedImage, *lifecycle.Refusal, error) {
	refuse := func(reason, format string, args ...any) (*v1.MigrationTask, *v1.AppliedImage, *lifecycle.Refusal, error) {
		return nil, nil, &lifecycle.Refusal{Action: v1.ActionEvacuate, Reason: reason, Message: fmt.Sprintf(format, args...)}, nil
	}
	source := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Status.NodeName}, source); err != nil && !apierrors.IsNotFound(err) {
		return nil, nil, nil, err
	}
	fenced, down, err := r.fencedAndDown(ctx, inst.Status.NodeName)
	if err != nil {
		return nil, nil, nil, err
	}
	switch {
	case !fenced:
		return refuse(ReasonNotFenced, "node %s is not fenced: force it down (kubectl nova evacuate --force-down, Hypervisor spec.forcedDown) or taint it node.kubernetes.io/out-of-service once it is powered off", inst.Status.NodeName)
	case !down:
		return refuse(ReasonNotFenced, "node %s is fenced but its agent still renews its lease: it may still run the guest", inst.Status.NodeName)
	}
	target, refusal, err := r.chooseTarget(ctx, inst, mig, v1.ActionEvacuate)
	if err != nil || refusal != nil {
		return nil, nil, refusal, err
	}
	node := target.Name
	s, t := source.Status, target.Status
	move := &v1.MigrationTask{Name: mig.Name, UID: string(mig.UID), SourceNode: inst.Status.NodeName, TargetNode: node,
		TargetURI: t.MigrationURI, TargetStorageRoot: t.StorageRoot, TargetNetworks: t.Networks}
	if s.StorageID != "" && s.StorageID == t.StorageID {
		return move, nil, nil, nil
	}
	if (s.StorageID == "" || t.StorageID == "") && t.StorageShared {
		// A rebuild from the image on storage that may hold the instance's own disk could
		// destroy the only copy of its data.
		r.Placement.Release(inst.UID)
		return refuse(ReasonStorageMismatch, "cannot tell whether %s shares its storage with %s (no storage ID reported)", node, move.SourceNode)
	}
	move.FromImage = true
	var image *v1.AppliedImage
	if applied := inst.Status.Image; applied != nil {
		img, notReady, err := r.availableImage(ctx, inst.Namespace, applied.ImageReference)
		if err != nil {
			r.Placement.Release(inst.UID)
			return nil, nil, nil, err
		}
		if notReady == nil && img.UID == applied.UID {
			image = img.AppliedImage
		}
	}
	if image == nil {
		r.Placement.Release(inst.UID)
		return refuse(v1.ReasonImageNotFound, "node %s does not share its storage with %s, and the image the instance was built from is no longer available to rebuild it from", move.SourceNode, node)
	}
	return move, image, nil, nil
}

// fencedAndDown says whether a node is fenced (forced down, or tainted out-of-service) and
// whether it is down: its agent stopped renewing its lease (a Node that is only not Ready may
// still run its guests), or it has no Hypervisor.
func (r *InstanceReconciler) fencedAndDown(ctx context.Context, node string) (fenced, down bool, err error) {
	if down, _, err = r.nodeDown(ctx, node); err != nil {
		return false, false, err
	}
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, hv); err == nil {
		fenced = hv.Spec.ForcedDown
	} else if !apierrors.IsNotFound(err) {
		return false, false, err
	}
	n := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, n); err == nil {
		for _, t := range n.Spec.Taints {
			if t.Key == corev1.TaintNodeOutOfService {
				fenced = true
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return false, false, err
	}
	return fenced, down, nil
}

// failTaskOnFencedNode fails the task in flight on a node that is fenced and down: its agent
// will never answer, and an evacuation waits for the instance to be idle. It says whether it
// did.
func (r *InstanceReconciler) failTaskOnFencedNode(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	task := inst.Status.Task
	// (A live migration has its own watch over both its nodes: collectMigration.)
	if task == nil || inst.Status.NodeName == "" || inst.Status.TaskState == v1.TaskStateScheduling ||
		task.Action == v1.ActionTerminate || task.Action == v1.ActionLiveMigrate {
		return false, nil
	}
	fenced, down, err := r.fencedAndDown(ctx, inst.Status.NodeName)
	if err != nil || !fenced || !down {
		return false, err
	}
	r.finishTask(ctx, inst, st, false, inst.Status.NodeName,
		fmt.Sprintf("node %s is fenced and down: the task can never finish there", inst.Status.NodeName))
	return true, nil
}

// planLiveMigration chooses the target (the requested node, checked by the scheduler's filters
// as Nova's live migration to a host is, or the scheduler's choice among the other nodes),
// claims room there, and decides whether the disks move: only memory when both nodes declare
// shared storage and see the same storage (their storage IDs), memory and disks otherwise.
func (r *InstanceReconciler) planLiveMigration(ctx context.Context, inst *v1.Instance, mig *v1.Migration) (*v1.MigrationTask, *lifecycle.Refusal, error) {
	refuse := func(reason, format string, args ...any) (*v1.MigrationTask, *lifecycle.Refusal, error) {
		return nil, &lifecycle.Refusal{Action: v1.ActionLiveMigrate, Reason: reason, Message: fmt.Sprintf(format, args...)}, nil
	}
	source := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Status.NodeName}, source); apierrors.IsNotFound(err) {
		return refuse(v1.ReasonNodeDown, "the instance's node %s has no Hypervisor", inst.Status.NodeName)
	} else if err != nil {
		return nil, nil, err
	}
	if source.Status.State != v1.HypervisorUp {
		return refuse(v1.ReasonNodeDown, "node %s is down: a live migration needs its agent and hypervisor (evacuate instead once it is fenced)", source.Name)
	}
	target, refusal, err := r.chooseTarget(ctx, inst, mig, v1.ActionLiveMigrate)
	if err != nil || refusal != nil {
		return nil, refusal, err
	}
	move, refusal := liveMigrationPlan(inst, mig, source, target)
	if refusal != nil {
		r.Placement.Release(inst.UID)
	}
	return move, refusal, nil
}

// chooseTarget picks a move's target (the scheduler's filters, with the source excluded, or
// the requested node as the only candidate, as Nova's moves to a host are checked) and claims
// room there; the caller releases the claim if it does not start the move after all.
func (r *InstanceReconciler) chooseTarget(ctx context.Context, inst *v1.Instance, mig *v1.Migration, action v1.Action) (*v1.Hypervisor, *lifecycle.Refusal, error) {
	request := scheduler.Request{
		Resources:        scheduler.FlavorResources(inst.Status.Flavor.FlavorSpec),
		NodeSelector:     inst.Spec.NodeSelector,
		AvailabilityZone: inst.Spec.AvailabilityZone,
		Networks:         scheduler.NetworksOf(inst),
		Exclude:          []string{inst.Status.NodeName},
		Host:             mig.Spec.TargetNode,
	}
	node, err := r.place(ctx, inst, request)
	if err != nil {
		var nvh *scheduler.NoValidHost
		if errors.As(err, &nvh) {
			metrics.CountNoValidHost(nvh.Blamed())
			return nil, &lifecycle.Refusal{Action: action, Reason: v1.ReasonNoValidHost, Message: nvh.Error()}, nil
		}
		return nil, nil, err
	}
	target := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: node}, target); err != nil {
		r.Placement.Release(inst.UID)
		return nil, nil, err
	}
	return target, nil, nil
}

// liveMigrationPlan decides how the instance moves from source to target, or why it cannot.
func liveMigrationPlan(inst *v1.Instance, mig *v1.Migration, source, target *v1.Hypervisor) (*v1.MigrationTask, *lifecycle.Refusal) {
	refuse := func(reason, format string, args ...any) (*v1.MigrationTask, *lifecycle.Refusal) {
		return nil, &lifecycle.Refusal{Action: v1.ActionLiveMigrate, Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	s, t := source.Status, target.Status
	if t.MigrationURI == "" || t.StorageRoot == "" {
		return refuse(v1.ReasonNotSupported, "node %s has not reported its migration URI and storage root yet", target.Name)
	}
	sameStorage := s.StorageID != "" && s.StorageID == t.StorageID
	if sameStorage && (!s.StorageShared || !t.StorageShared) {
		// Two agents on one filesystem that do not say so: moving the disk would overwrite it,
		// and telling libvirt it is shared would be a guess.
		return refuse(ReasonStorageMismatch, "nodes %s and %s see the same storage but do not both declare it shared (the agents' --shared-storage)", source.Name, target.Name)
	}
	block := !sameStorage
	switch mig.Spec.BlockMigration {
	case v1.BlockMigrationEnabled:
		if sameStorage {
			return refuse(ReasonStorageMismatch, "nodes %s and %s share their storage: a block migration would copy the disk onto itself; use blockMigration Auto or Disabled", source.Name, target.Name)
		}
	case v1.BlockMigrationDisabled:
		if !sameStorage {
			return refuse(ReasonStorageMismatch, "nodes %s and %s do not share their storage: only a block migration can move the disk", source.Name, target.Name)
		}
	}
	return &v1.MigrationTask{Name: mig.Name, UID: string(mig.UID), SourceNode: source.Name, TargetNode: target.Name,
		TargetURI: t.MigrationURI, TargetStorageRoot: t.StorageRoot, TargetNetworks: t.Networks, BlockMigration: block}, nil
}

// ReasonStorageMismatch says the migration's disk handling does not fit the nodes' storage.
const ReasonStorageMismatch = "StorageMismatch"

// collectMigration reads the reports of a live migration's two agents. The source's success
// means the domain has left it: status.nodeName moves to the target, whose agent then checks
// the guest and finishes the task. A target that could not prepare fails the task. It says
// whether it finished the task's step itself (the generic collection must not look then).
func (r *InstanceReconciler) collectMigration(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	task := inst.Status.Task
	if task == nil || task.Migration == nil || task.Action != v1.ActionLiveMigrate {
		return false, nil
	}
	m := task.Migration
	if inst.Status.NodeName == m.SourceNode {
		if !m.Abort {
			aborted, err := r.migrationWithdrawn(ctx, inst, m)
			if err != nil {
				return false, err
			}
			if aborted {
				m.Abort = true
				r.event(st, inst, corev1.EventTypeWarning, ReasonAborting, string(task.Action), "migration %s was deleted: aborting the move to %s", m.Name, m.TargetNode)
			}
		}
		tr := inst.Status.PeerReport
		if tr != nil && (tr.NodeName != m.TargetNode || (tr.TaskID != task.ID && tr.StepTaskID != task.ID)) {
			tr = nil // another node's, or another task's
		}
		rep := inst.Status.AgentReport
		if rep != nil && (rep.NodeName != m.SourceNode || (rep.TaskID != task.ID && rep.StepTaskID != task.ID)) {
			rep = nil
		}
		if moveEndedOnSource(task, rep, tr) {
			return r.settleEndedMove(ctx, inst, st, rep, tr)
		}
		if tr != nil && tr.TaskID == task.ID && tr.TaskResult == v1.TaskFailed {
			r.finishTask(ctx, inst, st, false, m.TargetNode, "the target could not prepare: "+tr.Message)
			return true, nil
		}
		if rep != nil && rep.TaskID == task.ID && rep.TaskResult == v1.TaskSucceeded {
			r.moveToTarget(inst, st, "the domain left %s and runs on %s", m.SourceNode, m.TargetNode)
			return true, nil
		}
		return r.watchMoveEnds(ctx, inst, st, tr, rep)
	}
	return false, nil
}

// moveToTarget makes the migration's target the instance's node: its agent finishes the task.
func (r *InstanceReconciler) moveToTarget(inst *v1.Instance, st *reconcileState, format string, args ...any) {
	task := inst.Status.Task
	inst.Status.NodeName = task.Migration.TargetNode
	inst.Status.PeerReport = nil
	task.PeerNode = ""
	r.event(st, inst, corev1.EventTypeNormal, ReasonMigrating, string(task.Action), format, args...)
}

// watchMoveEnds ends a live migration that one of its two nodes can no longer finish. A source
// that is fenced and down cannot report: if the target says the guest runs there, the move
// happened, else it failed (libvirt ends an incoming move whose source went away). A target
// that went down before the move began fails it too; once the move runs, libvirt fails it on
// the source, which reports so. It says whether it ended the task's step.
func (r *InstanceReconciler) watchMoveEnds(ctx context.Context, inst *v1.Instance, st *reconcileState, tr, rep *v1.AgentReport) (bool, error) {
	m := inst.Status.Task.Migration
	fenced, down, err := r.fencedAndDown(ctx, m.SourceNode)
	if err != nil {
		return false, err
	}
	if fenced && down {
		if tr != nil && tr.Step == v1.StepMigrated {
			r.moveToTarget(inst, st, "node %s went down, but the domain had arrived on %s and runs there", m.SourceNode, m.TargetNode)
			return true, nil
		}
		r.finishTask(ctx, inst, st, false, m.SourceNode, fmt.Sprintf("node %s is fenced and down, and the guest never arrived on %s", m.SourceNode, m.TargetNode))
		return true, nil
	}
	if rep != nil && rep.Step == v1.StepMigrating {
		return false, nil
	}
	target := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: m.TargetNode}, target); apierrors.IsNotFound(err) || (err == nil && target.Status.State == v1.HypervisorDown) {
		r.finishTask(ctx, inst, st, false, m.TargetNode, fmt.Sprintf("node %s went down before the move began", m.TargetNode))
		return true, nil
	} else if err != nil {
		return false, err
	}
	return false, nil
}

// ReasonAborting says a move is being aborted.
const ReasonAborting = "Aborting"

// migrationWithdrawn says whether the Migration a move serves was deleted (or is being).
func (r *InstanceReconciler) migrationWithdrawn(ctx context.Context, inst *v1.Instance, m *v1.MigrationTask) (bool, error) {
	mig := &v1.Migration{}
	err := r.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: m.Name}, mig)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return string(mig.UID) != m.UID || !mig.DeletionTimestamp.IsZero(), nil
}

// instanceOfMigration names the instance a Migration moves.
func instanceOfMigration(_ context.Context, o client.Object) []reconcile.Request {
	mig := o.(*v1.Migration)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: mig.Namespace, Name: mig.Spec.InstanceName}}}
}
