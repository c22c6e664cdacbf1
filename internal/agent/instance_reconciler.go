// Package agent is the node agent's logic: it carries out the tasks the manager gives the
// instances placed on its node, reports what the hypervisor really has, and renews the node's
// heartbeat. It owns what only the node can know; it never decides placement or vm states.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
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

// powerButtonRepeat is how often the ACPI power button is pressed again while the agent waits
// for a guest to power off: a guest may miss a press early in its boot (Nova retries too).
const powerButtonRepeat = 10 * time.Second

// Defaults of the guest timeouts, Nova's shutdown_timeout and wait_soft_reboot_seconds.
const (
	DefaultShutdownTimeout = 60 * time.Second
	DefaultRebootTimeout   = 120 * time.Second
)

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
	Disks    Disks
	NodeName string
	VirtType v1.VirtType
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

// taskProgress is what the agent remembers of the task it works on for one instance. It is
// memory only: an agent that restarts tries again from the beginning, which every task allows.
type taskProgress struct {
	taskID   int64
	failures int
	// waitingSince is when the agent started waiting for the guest; pressed is when it last
	// pressed the power button.
	waitingSince, pressed time.Time
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

	// checkpoint writes what status says so far in the middle of a task of several steps; a
	// write that loses its race is left to the final one, which then retries the task.
	checkpoint := func() {
		if err := kube.PatchStatus(ctx, r.Client, orig, inst); err != nil {
			log.FromContext(ctx).V(1).Info("intermediate status write failed", "error", err.Error())
			return
		}
		r.wrote(req.NamespacedName, orig.ResourceVersion)
		orig = inst.DeepCopy()
	}
	next := resyncPeriod
	finished := false
	if task := inst.Status.Task; task != nil && task.ID != report.TaskID && inst.Status.TaskState != v1.TaskStateScheduling {
		done, err := r.carryOut(ctx, inst, task, checkpoint)
		switch {
		case err != nil:
			if attempt, again := r.failed(inst.UID, task.ID); again && !isFinal(err) {
				log.FromContext(ctx).Error(err, "task failed; retrying", "action", task.Action, "attempt", attempt)
				return ctrl.Result{RequeueAfter: time.Duration(attempt) * retryStep}, nil
			}
			report.TaskID, report.TaskResult, report.Message = task.ID, v1.TaskFailed, err.Error()
			finished = true
			r.removeTaskLeftovers(ctx, inst)
		case done:
			report.TaskID, report.TaskResult, report.Message = task.ID, v1.TaskSucceeded, ""
			finished = true
		default:
			next = guestPoll
		}
	}

	// A failure to read the domain's state must not hold back the task's result: report what
	// is known, then try again.
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

// spawn boots the domain from the instance's root disk, first making that disk (an overlay on
// the image, fetched into the node's cache) if it does not exist. Start and the reboots are
// spawns too: the disk is there, so they need neither the Image nor its source, as Nova's
// hard reboot needs no image.
func (r *InstanceReconciler) spawn(ctx context.Context, inst *v1.Instance) error {
	return r.spawnWith(ctx, inst, "")
}

// spawnWith is spawn with the domain booting rescueDisk, the root disk second, when it is set.
func (r *InstanceReconciler) spawnWith(ctx context.Context, inst *v1.Instance, rescueDisk string) error {
	began := time.Now()
	m, err := r.machine(ctx, inst, rescueDisk)
	if err != nil {
		return err
	}
	diskReady := time.Now()
	err = r.Driver.Spawn(ctx, m)
	log.FromContext(ctx).V(1).Info("spawned", "disk", diskReady.Sub(began).String(), "domain", time.Since(diskReady).String(), "error", err)
	return err
}

// define is spawn without the boot: the domain is defined, its disks made, and it stays off.
func (r *InstanceReconciler) define(ctx context.Context, inst *v1.Instance) error {
	m, err := r.machine(ctx, inst, "")
	if err != nil {
		return err
	}
	return r.Driver.Define(ctx, m)
}

// machine makes what the instance's domain needs on this node (the owner record, the root disk
// if it does not exist, the config drive) and describes the domain.
func (r *InstanceReconciler) machine(ctx context.Context, inst *v1.Instance, rescueDisk string) (driver.Machine, error) {
	if inst.Status.Flavor == nil || inst.Status.Image == nil {
		return driver.Machine{}, errors.New("the instance has no flavor or image in status; the manager sets both when it schedules")
	}
	uid := string(inst.UID)
	disk, err := r.Storage.RootDisk(uid)
	if err != nil {
		return driver.Machine{}, err
	}
	// The owner record goes first: whatever this spawn leaves on the node, the orphan cleanup
	// can ask about its instance by name.
	if err := r.Storage.WriteOwner(uid, storage.Owner{Namespace: inst.Namespace, Name: inst.Name}); err != nil {
		return driver.Machine{}, err
	}
	if _, err := os.Stat(disk); errors.Is(err, os.ErrNotExist) {
		if aside, err := setAsideByResize(disk); err != nil || aside {
			return driver.Machine{}, errors.Join(err, finalError{errors.New("the root disk is set aside by a resize that was neither confirmed nor reverted: revert it")})
		}
		if disk, err = r.createRootDisk(ctx, inst); err != nil {
			return driver.Machine{}, err
		}
	} else if err != nil {
		return driver.Machine{}, err
	}
	consoleLog, err := r.Storage.ConsoleLog(uid)
	if err != nil {
		return driver.Machine{}, err
	}
	nics, err := r.nics(inst)
	if err != nil {
		return driver.Machine{}, err
	}
	configDrive, err := r.configDrive(ctx, inst)
	if err != nil {
		return driver.Machine{}, err
	}
	return driver.Machine{
		UUID: uid, Name: DomainName(inst.UID), Namespace: inst.Namespace, InstanceName: inst.Name,
		VCPUs: inst.Status.Flavor.VCPUs, MemoryMiB: inst.Status.Flavor.MemoryMiB,
		RootDisk: disk, RescueDisk: rescueDisk, ConfigDrive: configDrive, ConsoleLog: consoleLog, VirtType: r.VirtType,
		NICs: nics,
	}, nil
}

// nics are the instance's NICs on this node: the MACs the manager fixed in status.networks,
// each plugged into this node's bridge or libvirt network of that name.
func (r *InstanceReconciler) nics(inst *v1.Instance) ([]driver.NIC, error) {
	if len(inst.Status.Networks) != len(inst.Spec.Networks) {
		return nil, fmt.Errorf("the instance has %d NICs in spec and %d in status; the manager fixes their MACs before it schedules",
			len(inst.Spec.Networks), len(inst.Status.Networks))
	}
	var out []driver.NIC
	for _, nic := range inst.Status.Networks {
		i := slices.IndexFunc(r.Networks, func(n v1.HypervisorNetwork) bool { return n.Name == nic.Network })
		if i < 0 {
			return nil, finalError{fmt.Errorf("network %s is not on node %s (its agent's --networks)", nic.Network, r.NodeName)}
		}
		out = append(out, driver.NIC{MACAddress: nic.MACAddress, Type: r.Networks[i].Type, Source: r.Networks[i].Source})
	}
	return out, nil
}

// configDrive makes the instance's cloud-init NoCloud drive, if its spec gives user data or
// SSH keys, and returns its path ("" for none). The drive is made once, at the first boot on
// the node, as Nova's config drive is; later boots (a reboot, a start) reuse it, so they never
// depend on the Secret still being there.
func (r *InstanceReconciler) configDrive(ctx context.Context, inst *v1.Instance) (string, error) {
	if inst.Spec.UserData == nil && len(inst.Spec.SSHAuthorizedKeys) == 0 && len(inst.Status.Networks) == 0 {
		return "", nil
	}
	uid := string(inst.UID)
	path, err := r.Storage.ConfigDrive(uid)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	var meta strings.Builder
	fmt.Fprintf(&meta, "instance-id: %s\nlocal-hostname: %s\n", strconv.Quote(uid), strconv.Quote(inst.Name))
	if keys := inst.Spec.SSHAuthorizedKeys; len(keys) > 0 {
		meta.WriteString("public-keys:\n")
		for _, k := range keys {
			// A JSON string is a YAML double-quoted scalar: a key's comment cannot break the document.
			fmt.Fprintf(&meta, "  - %s\n", strconv.Quote(k))
		}
	}
	files := map[string][]byte{"meta-data": []byte(meta.String())}
	if len(inst.Status.Networks) > 0 {
		files["network-config"] = networkConfig(inst.Status.Networks)
	}
	if inst.Spec.UserData != nil {
		data, err := r.userData(ctx, inst)
		if err != nil {
			return "", err
		}
		files["user-data"] = data
	}
	return r.Storage.WriteConfigDrive(ctx, uid, files)
}

// networkConfig is cloud-init's network configuration (version 2) for the NICs: each one, found
// by its MAC and named ethN in the order of spec.networks, asks for its address by DHCP.
func networkConfig(nics []v1.NICStatus) []byte {
	var b strings.Builder
	b.WriteString("version: 2\nethernets:\n")
	for i, nic := range nics {
		fmt.Fprintf(&b, "  eth%d:\n    match:\n      macaddress: %s\n    set-name: eth%d\n    dhcp4: true\n",
			i, strconv.Quote(nic.MACAddress), i)
	}
	return []byte(b.String())
}

// userData reads the instance's user data from the copy the manager keeps in kubenova's
// namespace (v1.UserDataCopyName).
func (r *InstanceReconciler) userData(ctx context.Context, inst *v1.Instance) ([]byte, error) {
	if r.Reader == nil {
		return nil, errors.New("this agent cannot read Secrets for user data")
	}
	namespace := r.UserDataNamespace
	if namespace == "" {
		namespace = v1.DefaultSystemNamespace
	}
	name := v1.UserDataCopyName(inst.UID)
	secret := &corev1.Secret{}
	if err := r.Reader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("user data: the manager's copy %s/%s does not exist (it is made at launch, rebuild and unshelve)", namespace, name)
		}
		return nil, fmt.Errorf("user data: read %s/%s: %w", namespace, name, err)
	}
	data, ok := secret.Data[v1.UserDataCopyKey]
	if !ok {
		return nil, fmt.Errorf("user data: %s/%s has no key %q", namespace, name, v1.UserDataCopyKey)
	}
	return data, nil
}

// createRootDisk fetches the instance's image from the image store into the node's cache and
// makes its root disk. The image is the one the manager applied (status.image): the agent
// needs neither the Image object nor its source.
func (r *InstanceReconciler) createRootDisk(ctx context.Context, inst *v1.Instance) (string, error) {
	img := *inst.Status.Image
	if task := inst.Status.Task; task != nil && task.Action == v1.ActionUnshelve && task.Image != nil {
		// An offloaded instance comes back from its shelved image; status.image keeps naming
		// the image it was built from, as Nova's image_ref does.
		img = *task.Image
	}
	disks := r.disks()
	base, err := disks.EnsureImage(ctx, img)
	if err != nil {
		return "", err
	}
	return disks.CreateRootDisk(ctx, string(inst.UID), base, img.DiskFormat, inst.Status.Flavor.DiskGiB)
}

// terminate destroys the domain and deletes the instance's own files.
func (r *InstanceReconciler) terminate(ctx context.Context, inst *v1.Instance) error {
	if err := r.Driver.Destroy(ctx, string(inst.UID)); err != nil {
		return err
	}
	return r.Storage.DeleteInstanceFiles(string(inst.UID))
}

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

func (r *InstanceReconciler) disks() Disks {
	if r.Disks != nil {
		return r.Disks
	}
	return r.Storage
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
