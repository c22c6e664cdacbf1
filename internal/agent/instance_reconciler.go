// Package agent is the node agent's logic: it carries out the tasks the manager gives the
// instances placed on its node, reports what the hypervisor really has, and renews the node's
// heartbeat. It owns what only the node can know; it never decides placement or vm states.
package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

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

// staleRetry is how soon a reconcile that lost a write race to the manager runs again.
const staleRetry = 200 * time.Millisecond

// resyncPeriod is how often the agent compares each instance with its domain even when
// nothing changed (Nova's sync_power_states).
const resyncPeriod = time.Minute

// InstanceReconciler carries out tasks on one node. Its cache holds only the instances placed on
// this node (a field selector on status.nodeName).
type InstanceReconciler struct {
	Client client.Client
	// Reader reads objects the cache does not hold (Images).
	Reader   client.Reader
	Driver   driver.Driver
	Storage  *storage.Node
	NodeName string
	VirtType v1.VirtType

	mu       sync.Mutex
	attempts map[attemptKey]int
}

// attemptKey counts the failed attempts of one task of one instance.
type attemptKey struct {
	uid    types.UID
	taskID int64
}

// Reconcile carries out the instance's task if the agent has not answered it yet, then reports
// the domain's power state. It writes only status.powerState and status.agentReport.
func (r *InstanceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	inst := &v1.Instance{}
	if err := r.Client.Get(ctx, req.NamespacedName, inst); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if inst.Status.NodeName != r.NodeName {
		return ctrl.Result{}, nil
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

	var done *attemptKey
	if task := inst.Status.Task; task != nil && task.ID != report.TaskID && inst.Status.TaskState != v1.TaskStateScheduling {
		key := attemptKey{uid: inst.UID, taskID: task.ID}
		if err := r.carryOut(ctx, inst, task); err != nil {
			if attempt, again := r.retry(key); again {
				log.FromContext(ctx).Error(err, "task failed; retrying", "action", task.Action, "attempt", attempt)
				return ctrl.Result{RequeueAfter: time.Duration(attempt) * retryStep}, nil
			}
			report.TaskResult, report.Message = v1.TaskFailed, err.Error()
		} else {
			report.TaskResult, report.Message = v1.TaskSucceeded, ""
		}
		report.TaskID = task.ID
		done = &key
	}

	// A failure to read the power state must not hold back the task's result: report what is
	// known, then try again.
	power, powerErr := r.Driver.PowerState(ctx, string(inst.UID))
	if powerErr == nil {
		inst.Status.PowerState = power
	}
	if !equality.Semantic.DeepEqual(orig.Status, inst.Status) {
		now := metav1.Now()
		report.LastSyncTime = &now
		err := kube.PatchStatus(ctx, r.Client, orig, inst)
		if errors.Is(err, kube.ErrStale) {
			// The manager wrote in between; the task is idempotent, so it is safe to look again.
			log.FromContext(ctx).V(1).Info("status changed underneath; retrying")
			return ctrl.Result{RequeueAfter: staleRetry}, nil
		}
		if err != nil {
			return ctrl.Result{}, err
		}
	}
	if done != nil {
		r.forget(*done)
	}
	if powerErr != nil {
		return ctrl.Result{}, fmt.Errorf("power state of %s: %w", req.NamespacedName, powerErr)
	}
	return ctrl.Result{RequeueAfter: resyncPeriod}, nil
}

// carryOut performs one task. Every branch is idempotent: repeating a task that was cut short
// finishes it.
func (r *InstanceReconciler) carryOut(ctx context.Context, inst *v1.Instance, task *v1.Task) error {
	log.FromContext(ctx).Info("carrying out task", "action", task.Action, "task", task.ID)
	switch task.Action {
	case v1.ActionLaunch:
		return r.spawn(ctx, inst)
	case v1.ActionTerminate:
		return r.terminate(ctx, inst)
	default:
		return fmt.Errorf("this agent does not carry out %s yet", task.Action)
	}
}

// spawn fetches the image into the node's cache, makes the root disk and boots the domain.
func (r *InstanceReconciler) spawn(ctx context.Context, inst *v1.Instance) error {
	if inst.Status.Flavor == nil || inst.Status.Image == nil {
		return errors.New("the instance has no flavor or image in status; the manager sets both when it schedules")
	}
	image := &v1.Image{}
	key := types.NamespacedName{Namespace: inst.Namespace, Name: inst.Status.Image.Name}
	if err := r.Reader.Get(ctx, key, image); err != nil {
		return fmt.Errorf("get image %s: %w", key, err)
	}
	base, err := r.Storage.EnsureImage(ctx, image.Spec)
	if err != nil {
		return fmt.Errorf("image %s: %w", key.Name, err)
	}
	uid := string(inst.UID)
	disk, err := r.Storage.CreateRootDisk(ctx, uid, base, image.Spec.DiskFormat, inst.Status.Flavor.DiskGiB)
	if err != nil {
		return err
	}
	consoleLog, err := r.Storage.ConsoleLog(uid)
	if err != nil {
		return err
	}
	return r.Driver.Spawn(ctx, driver.Machine{
		UUID: uid, Name: DomainName(inst.UID), Namespace: inst.Namespace, InstanceName: inst.Name,
		VCPUs: inst.Status.Flavor.VCPUs, MemoryMiB: inst.Status.Flavor.MemoryMiB,
		RootDisk: disk, ConsoleLog: consoleLog, VirtType: r.VirtType,
	})
}

// terminate destroys the domain and deletes the instance's own files.
func (r *InstanceReconciler) terminate(ctx context.Context, inst *v1.Instance) error {
	if err := r.Driver.Destroy(ctx, string(inst.UID)); err != nil {
		return err
	}
	return r.Storage.DeleteInstanceFiles(string(inst.UID))
}

// retry counts a failed attempt of a task and says whether another is due.
func (r *InstanceReconciler) retry(k attemptKey) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.attempts == nil {
		r.attempts = map[attemptKey]int{}
	}
	r.attempts[k]++
	return r.attempts[k], r.attempts[k] < attemptsBeforeFailing
}

func (r *InstanceReconciler) forget(k attemptKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.attempts, k)
}

// SetupWithManager watches the node's instances.
func (r *InstanceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("agent-instance").
		For(&v1.Instance{}).
		Complete(r)
}
