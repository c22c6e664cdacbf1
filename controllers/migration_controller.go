package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/kube"
	"github.com/kubenova/kubenova/internal/metrics"
)

// MigrationReconciler gives every Migration a status: it refuses at once what can never be
// served (no such instance, a move to the node the instance is on, a second move of the same
// instance), then follows the instance controller, which serves the Migration as the
// instance's task (status.migrationRequest), and copies the move's progress and outcome. A
// Migration deleted in flight keeps its finalizer until the instance's move has been aborted.
type MigrationReconciler struct {
	client.Client
	Recorder events.EventRecorder
	// MissingInstanceTimeout is how long a Migration waits for the instance it names to exist
	// (DefaultMissingInstanceTimeout when zero).
	MissingInstanceTimeout time.Duration
	// Now is the clock; tests may replace it.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=compute.kubenova.io,resources=migrations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=migrations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=migrations/finalizers,verbs=update

// Reasons a migration ends or waits.
const (
	// ReasonMigrationSucceeded: the instance runs on the target.
	ReasonMigrationSucceeded = "MigrationSucceeded"
	// ReasonMigrationInProgress: another migration of the instance came first.
	ReasonMigrationInProgress = "MigrationInProgress"
	// ReasonInvalidTarget: the target is the node the instance is on.
	ReasonInvalidTarget = "InvalidTarget"
	// ReasonPreparing: the target prepares for the instance.
	ReasonPreparing = "Preparing"
	// ReasonMigrating: the domain moves.
	ReasonMigrating = "Migrating"
)

// migrationOutcome is what one reconcile found.
type migrationOutcome struct {
	reason, message string
	// requeueAfter is when to look again though nothing changes (a deadline).
	requeueAfter time.Duration
}

// Reconcile advances the migration one step. Status is written once, at the end.
func (r *MigrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mig := &v1.Migration{}
	if err := r.Get(ctx, req.NamespacedName, mig); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	ctx = kube.WithOperation(ctx, "Migration"+string(mig.Spec.Type))
	if !mig.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, mig)
	}
	if migrationFinal(mig) {
		if controllerutil.RemoveFinalizer(mig, v1.FinalizerMigration) {
			return ctrl.Result{}, client.IgnoreNotFound(r.Update(ctx, mig))
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(mig, v1.FinalizerMigration) {
		// Stored before the move can start, so that a deletion in flight aborts it.
		return ctrl.Result{}, r.Update(ctx, mig)
	}
	orig := mig.DeepCopy()
	if mig.Status.StartTime == nil {
		now := metav1.NewTime(r.now())
		mig.Status.StartTime = &now
	}
	out, err := r.advance(ctx, mig)
	if err != nil {
		return ctrl.Result{}, err
	}
	r.setConditions(mig, out)
	if err := kube.PatchStatus(ctx, r.Client, orig, mig); err != nil {
		return kube.RetryIfStale(ctrl.Result{}, err)
	}
	if mig.Status.Phase != orig.Status.Phase {
		if migrationFinal(mig) {
			metrics.Migrations.WithLabelValues(string(mig.Spec.Type), string(mig.Status.Phase)).Inc()
		}
		switch mig.Status.Phase {
		case v1.MigrationSucceeded:
			if mig.Spec.Type == v1.MigrationLive {
				if mig.Status.DowntimeMillis > 0 { // libvirt gave a figure
					metrics.MigrationDowntime.Observe(float64(mig.Status.DowntimeMillis) / 1000)
				}
				r.event(mig, corev1.EventTypeNormal, out.reason, "instance %s moved from %s to %s in %d ms (downtime %d ms)",
					mig.Spec.InstanceName, mig.Status.SourceNode, mig.Status.TargetNode, mig.Status.TotalMillis, mig.Status.DowntimeMillis)
			} else {
				r.event(mig, corev1.EventTypeNormal, out.reason, "%s", out.message)
			}
		case v1.MigrationFailed:
			r.event(mig, corev1.EventTypeWarning, out.reason, "%s", out.message)
		}
	}
	return ctrl.Result{RequeueAfter: out.requeueAfter}, nil
}

// advance reads the instance and sets the phase it says.
func (r *MigrationReconciler) advance(ctx context.Context, mig *v1.Migration) (migrationOutcome, error) {
	inst := &v1.Instance{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: mig.Namespace, Name: mig.Spec.InstanceName}, inst); apierrors.IsNotFound(err) {
		left, msg := missingInstance(mig.CreationTimestamp, r.now(), r.MissingInstanceTimeout, mig.Namespace, mig.Spec.InstanceName)
		if left > 0 && mig.Status.SourceNode == "" { // never served: the instance may be on its way
			return migrationOutcome{reason: ReasonInstanceNotFound, message: msg, requeueAfter: left}, nil
		}
		return r.failed(mig, ReasonInstanceNotFound, msg), nil
	} else if err != nil {
		return migrationOutcome{}, err
	}
	ack := inst.Status.MigrationRequest
	if ack == nil || ack.UID != string(mig.UID) {
		return r.beforeServed(ctx, mig, inst)
	}
	mig.Status.SourceNode, mig.Status.TargetNode, mig.Status.BlockMigration = ack.SourceNode, ack.TargetNode, ack.BlockMigration
	mig.Status.RebuiltFromImage = ack.RebuiltFromImage
	switch ack.Result {
	case v1.RequestAccepted:
		return r.inFlight(mig, inst), nil
	case v1.RequestSucceeded:
		if mig.Spec.Type == v1.MigrationCold {
			return r.coldOutcome(mig, inst, ack), nil
		}
		if rep := inst.Status.AgentReport; rep != nil && rep.TaskID == ack.TaskID && rep.NodeName == ack.TargetNode && rep.Migration != nil {
			copyFigures(mig, rep.Migration)
		}
		mig.Status.Phase, mig.Status.ProgressPercent, mig.Status.DataRemainingBytes = v1.MigrationSucceeded, 100, 0
		msg := fmt.Sprintf("instance %s runs on %s", inst.Name, ack.TargetNode)
		if ack.RebuiltFromImage {
			msg += ", rebuilt from its image: the data of its old disk was lost"
		}
		return migrationOutcome{reason: ReasonMigrationSucceeded, message: msg}, nil
	default:
		reason := ack.Reason
		if reason == "" {
			reason = v1.ReasonTaskFailed
		}
		return r.failed(mig, reason, ack.Message), nil
	}
}

// beforeServed refuses what can never be served and otherwise waits for the instance. A
// Migration found sound once (Pending) is not judged again: the instance controller may be
// serving it already, which a cache can hide for a moment.
func (r *MigrationReconciler) beforeServed(ctx context.Context, mig *v1.Migration, inst *v1.Instance) (migrationOutcome, error) {
	if mig.Status.Phase == v1.MigrationPending {
		return migrationOutcome{reason: ReasonWaitingForInstance,
			message: fmt.Sprintf("waiting for instance %s (%s) to start the move", inst.Name, orDefaultState(inst))}, nil
	}
	if t := mig.Spec.TargetNode; t != "" && t == inst.Status.NodeName {
		return r.failed(mig, ReasonInvalidTarget, fmt.Sprintf("instance %s is on node %s already", inst.Name, t)), nil
	}
	var list v1.MigrationList
	if err := r.List(ctx, &list, client.InNamespace(mig.Namespace), client.MatchingFields{indexMigrationInstance: mig.Spec.InstanceName}); err != nil {
		return migrationOutcome{}, err
	}
	for i := range list.Items {
		other := &list.Items[i]
		if other.UID == mig.UID || migrationFinal(other) {
			continue
		}
		served := inst.Status.MigrationRequest != nil && inst.Status.MigrationRequest.UID == string(other.UID)
		if served || other.CreationTimestamp.Before(&mig.CreationTimestamp) ||
			(other.CreationTimestamp.Equal(&mig.CreationTimestamp) && other.Name < mig.Name) {
			return r.failed(mig, ReasonMigrationInProgress,
				fmt.Sprintf("migration %s of instance %s came first and is not over; one migration per instance at a time", other.Name, inst.Name)), nil
		}
	}
	mig.Status.Phase = v1.MigrationPending
	return migrationOutcome{reason: ReasonWaitingForInstance,
		message: fmt.Sprintf("waiting for instance %s (%s) to start the move", inst.Name, orDefaultState(inst))}, nil
}

// coldOutcome follows a cold migration that reached its target: like Nova's, it waits in
// Resized for a confirmation (Succeeded) or a revert (Failed, reason Reverted: the instance is
// back on its source).
func (r *MigrationReconciler) coldOutcome(mig *v1.Migration, inst *v1.Instance, ack *v1.ObjectRequestStatus) migrationOutcome {
	switch ack.Reason {
	case ReasonConfirmed:
		mig.Status.Phase, mig.Status.ProgressPercent = v1.MigrationSucceeded, 100
		return migrationOutcome{reason: ReasonMigrationSucceeded, message: ack.Message}
	case ReasonReverted:
		return r.failed(mig, ReasonReverted, ack.Message)
	}
	mig.Status.Phase = v1.MigrationFinalizing
	if rs := inst.Status.Resize; rs != nil && rs.MigrationUID == string(mig.UID) && rs.ResizedAt != nil {
		mig.Status.TotalMillis = rs.ResizedAt.Sub(rs.StartedAt.Time).Milliseconds()
	}
	return migrationOutcome{reason: ReasonResized, message: fmt.Sprintf("instance %s runs on %s: confirm (kubectl nova resize %s --confirm) or revert (--revert)",
		inst.Name, ack.TargetNode, inst.Name)}
}

// inFlight follows the instance's task.
func (r *MigrationReconciler) inFlight(mig *v1.Migration, inst *v1.Instance) migrationOutcome {
	if rs := inst.Status.Resize; rs != nil && rs.MigrationUID == string(mig.UID) {
		if inst.Status.NodeName == rs.SourceNode {
			mig.Status.Phase = v1.MigrationMigrating
			return migrationOutcome{reason: ReasonMigrating, message: fmt.Sprintf("node %s powers the guest off and hands its disk over (%s)", rs.SourceNode, rs.DiskTransfer)}
		}
		mig.Status.Phase = v1.MigrationFinalizing
		return migrationOutcome{reason: ReasonMigrating, message: fmt.Sprintf("node %s boots the instance on its copy of the disk", rs.TargetNode)}
	}
	task := inst.Status.Task
	if task == nil || task.Migration == nil || task.Migration.UID != string(mig.UID) {
		// Between the task's end and the acknowledgement of its outcome: the next write says.
		return migrationOutcome{reason: ReasonMigrating, message: "the move is ending"}
	}
	m := task.Migration
	switch {
	case task.Action == v1.ActionEvacuate:
		mig.Status.Phase = v1.MigrationMigrating
		from := "its own disk on the shared storage"
		if m.FromImage {
			from = "its image: the source does not share its storage, so the disk's data is lost"
		}
		return migrationOutcome{reason: ReasonMigrating, message: fmt.Sprintf("node %s rebuilds the instance from %s", m.TargetNode, from)}
	case inst.Status.NodeName == m.TargetNode:
		mig.Status.Phase = v1.MigrationFinalizing
		return migrationOutcome{reason: ReasonMigrating, message: fmt.Sprintf("the domain left %s; %s checks that it runs", m.SourceNode, m.TargetNode)}
	case m.Abort:
		mig.Status.Phase = v1.MigrationMigrating
		return migrationOutcome{reason: ReasonMigrating, message: "aborting"}
	}
	if rep := inst.Status.AgentReport; rep != nil && rep.NodeName == m.SourceNode && rep.StepTaskID == task.ID && rep.Step == v1.StepMigrating {
		mig.Status.Phase = v1.MigrationMigrating
		if rep.Migration != nil {
			copyFigures(mig, rep.Migration)
		}
		return migrationOutcome{reason: ReasonMigrating, message: fmt.Sprintf("%s sends the domain to %s: %d%%", m.SourceNode, m.TargetNode, mig.Status.ProgressPercent)}
	}
	mig.Status.Phase = v1.MigrationPreparing
	return migrationOutcome{reason: ReasonPreparing, message: fmt.Sprintf("node %s prepares for the instance", m.TargetNode)}
}

// copyFigures copies libvirt's figures of the move.
func copyFigures(mig *v1.Migration, p *v1.MigrationProgress) {
	mig.Status.ProgressPercent, mig.Status.DataTotalBytes, mig.Status.DataRemainingBytes = p.ProgressPercent, p.DataTotalBytes, p.DataRemainingBytes
	if p.TotalMillis > 0 {
		mig.Status.TotalMillis = p.TotalMillis
	}
	if p.DowntimeMillis > 0 {
		mig.Status.DowntimeMillis = p.DowntimeMillis
	}
}

func (r *MigrationReconciler) failed(mig *v1.Migration, reason, message string) migrationOutcome {
	mig.Status.Phase = v1.MigrationFailed
	return migrationOutcome{reason: reason, message: message}
}

// setConditions: Ready when Succeeded, Stalled when Failed, Reconciling in between; reason and
// message also in status for kubectl's columns.
func (r *MigrationReconciler) setConditions(mig *v1.Migration, out migrationOutcome) {
	mig.Status.ObservedGeneration = mig.Generation
	mig.Status.Reason, mig.Status.Message = out.reason, out.message
	if migrationFinal(mig) && mig.Status.CompletionTime == nil {
		now := metav1.NewTime(r.now())
		mig.Status.CompletionTime = &now
	}
	setOutcomeConditions(&mig.Status.Conditions, mig.Generation, mig.Status.Phase == v1.MigrationSucceeded,
		mig.Status.Phase == v1.MigrationFailed, out.reason, out.message)
}

// reconcileDelete lets a Migration go once no move of its runs: the instance controller sees
// the deletion and has the source abort (task.migration.abort), and the task ends. When the
// node that carries the move out is down, nothing can end it before the node is back: the
// Migration goes anyway, and the instance keeps its task, whose outcome (the guest on one
// side or the other) its agents settle when they report again.
func (r *MigrationReconciler) reconcileDelete(ctx context.Context, mig *v1.Migration) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(mig, v1.FinalizerMigration) {
		return ctrl.Result{}, nil
	}
	inst := &v1.Instance{}
	err := r.Get(ctx, types.NamespacedName{Namespace: mig.Namespace, Name: mig.Spec.InstanceName}, inst)
	if client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	if err == nil {
		if t := inst.Status.Task; t != nil && t.Migration != nil && t.Migration.UID == string(mig.UID) {
			down, why, err := nodeDown(ctx, r.Client, inst.Status.NodeName)
			if err != nil || !down {
				return ctrl.Result{}, err // the instance's change brings us back
			}
			r.event(mig, corev1.EventTypeWarning, v1.ReasonNodeDown, "node %s is down (%s): the Migration goes, and the instance keeps its %s task until the node is back",
				inst.Status.NodeName, why, t.Action)
		}
	}
	controllerutil.RemoveFinalizer(mig, v1.FinalizerMigration)
	return ctrl.Result{}, client.IgnoreNotFound(r.Update(ctx, mig))
}

func migrationFinal(mig *v1.Migration) bool {
	return mig.Status.Phase == v1.MigrationSucceeded || mig.Status.Phase == v1.MigrationFailed
}

func (r *MigrationReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *MigrationReconciler) event(mig *v1.Migration, eventType, reason, note string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(mig, nil, eventType, reason, "Migrate", note, args...)
	}
}

// The manager's cache indexes migrations by their instance.
const indexMigrationInstance = "spec.instanceName"

// IndexMigrations adds the manager's Migration index to its cache.
func IndexMigrations(ctx context.Context, mgr ctrl.Manager) error {
	return mgr.GetFieldIndexer().IndexField(ctx, &v1.Migration{}, indexMigrationInstance, func(o client.Object) []string {
		return []string{o.(*v1.Migration).Spec.InstanceName}
	})
}

// SetupWithManager watches Migrations and their instances.
func (r *MigrationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1.Migration{}).
		Watches(&v1.Instance{}, handler.EnqueueRequestsFromMapFunc(r.migrationsOfInstance)).
		Complete(r)
}

// migrationsOfInstance lists the migrations of an instance that are not over, or are being
// deleted.
func (r *MigrationReconciler) migrationsOfInstance(ctx context.Context, o client.Object) []reconcile.Request {
	var list v1.MigrationList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexMigrationInstance: o.GetName()},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		if !migrationFinal(&list.Items[i]) || !list.Items[i].DeletionTimestamp.IsZero() {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}
