package v1alpha1

import "k8s.io/apimachinery/pkg/types"

// Condition types shared by the kinds of this package. Ready follows the convention that kstatus,
// Flux and Argo CD read; Reconciling and Stalled are kstatus's abnormal-true conditions.
const (
	// ConditionReady is True when the object rests in the state its spec asks for.
	ConditionReady = "Ready"
	// ConditionReconciling is True while a task moves the object towards its spec.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the object cannot reach its spec without a change by someone.
	ConditionStalled = "Stalled"
	// ConditionScheduled is True once an instance has a node.
	ConditionScheduled = "Scheduled"
)

// Condition reasons. A reason is a CamelCase code that a person can search for.
const (
	// ReasonDesiredStateReached: the instance rests in the state its spec asks for.
	ReasonDesiredStateReached = "DesiredStateReached"
	// ReasonTaskInProgress: a task runs; the message names it.
	ReasonTaskInProgress = "TaskInProgress"
	// ReasonInvalidState: the spec asks for an action that the current vm state does not allow.
	ReasonInvalidState = "InvalidState"
	// ReasonLocked: the instance is locked.
	ReasonLocked = "Locked"
	// ReasonNotSupported: the spec asks for an operation this version cannot carry out yet.
	ReasonNotSupported = "NotSupported"
	// ReasonNoValidHost: no node passes the scheduler's filters.
	ReasonNoValidHost = "NoValidHost"
	// ReasonQuarantinedDiskNotFound: spec.adoptQuarantinedDisk asks for a quarantined disk of
	// the instance's namespace and name, and no node reports one (yet).
	ReasonQuarantinedDiskNotFound = "QuarantinedDiskNotFound"
	// ReasonServerGroupNotFound: spec.serverGroup names no ServerGroup of the namespace.
	ReasonServerGroupNotFound = "ServerGroupNotFound"
	// ReasonQuotaExceeded: the instance's vCPUs or memory would take its namespace past a
	// ResourceQuota (the message names it); it goes on when room appears.
	ReasonQuotaExceeded = "QuotaExceeded"
	// ReasonAwaitingReservation: the instance is placed and waits for its node's kubelet to
	// admit the reservation pod that carries its vCPUs and memory.
	ReasonAwaitingReservation = "AwaitingReservation"
	// ReasonReservationRefused: the node's kubelet refused the reservation pod (a pod took the
	// room first), or did not admit it in time: the instance is placed again.
	ReasonReservationRefused = "ReservationRefused"
	// ReasonScheduled: a node was chosen.
	ReasonScheduled = "Scheduled"
	// ReasonFlavorNotFound: spec.flavor names no Flavor.
	ReasonFlavorNotFound = "FlavorNotFound"
	// ReasonNetworkNotFound: a NIC names a network that no node reports.
	ReasonNetworkNotFound = "NetworkNotFound"
	// ReasonMACInUse: a NIC's explicit MAC address is another instance's.
	ReasonMACInUse = "MACInUse"
	// ReasonImageNotFound: spec.image names no Image.
	ReasonImageNotFound = "ImageNotFound"
	// ReasonFlavorTooSmall: the flavor has less disk or memory than the image needs.
	ReasonFlavorTooSmall = "FlavorTooSmall"
	// ReasonTaskFailed: the node agent reported that a task failed.
	ReasonTaskFailed = "TaskFailed"
	// ReasonInstanceError: the instance is in vm state Error.
	ReasonInstanceError = "InstanceError"
	// ReasonNodeDown: the instance's node has stopped answering.
	ReasonNodeDown = "NodeDown"
	// ReasonGuestOnTwoNodes: a live migration ended with an error while its guest ran on both
	// nodes (libvirt's Finish reply was lost); the copy on the node not recorded is paused for
	// a person to decide.
	ReasonGuestOnTwoNodes = "GuestOnTwoNodes"
	// ReasonPowerStateChanged: the hypervisor changed the power state while no task ran (the
	// guest powered off, QEMU died, someone used virsh); kubenova does not undo it by itself.
	ReasonPowerStateChanged = "PowerStateChanged"
	// ReasonRequestPredatesInstance: a one-shot request was stamped before the instance existed.
	ReasonRequestPredatesInstance = "RequestPredatesInstance"
	// ReasonImageNotReady: the instance's image is not Available (yet); the message says why.
	ReasonImageNotReady = "ImageNotReady"
	// ReasonImageError: the instance's image failed its import; the message says why.
	ReasonImageError = "ImageError"
	// ReasonUserDataNotFound: the Secret that spec.userData names, or its key, does not exist.
	ReasonUserDataNotFound = "UserDataNotFound"
	// ReasonImporting: the image service imports an image.
	ReasonImporting = "Importing"
	// ReasonAvailable: an image's bytes are in the image store, verified.
	ReasonAvailable = "Available"
	// ReasonHeartbeatCurrent: a hypervisor's agent renews its lease.
	ReasonHeartbeatCurrent = "HeartbeatCurrent"
	// ReasonHeartbeatLapsed: a hypervisor's agent has not renewed its lease in time.
	ReasonHeartbeatLapsed = "HeartbeatLapsed"
)

// Event reasons that are not condition reasons.
const (
	// ReasonLaunching: a new instance starts its launch.
	ReasonLaunching = "Launching"
	// ReasonTaskStarted: the manager gave a node a task; the Event's action names it.
	ReasonTaskStarted = "TaskStarted"
	// ReasonTaskSucceeded: the node agent finished a task; the note names it.
	ReasonTaskSucceeded = "TaskSucceeded"
	// ReasonTerminating: the node agent was told to terminate the instance.
	ReasonTerminating = "Terminating"
	// ReasonTerminated: the instance's domain and disks are gone from its node.
	ReasonTerminated = "Terminated"
	// ReasonRebootFellBackToHard: the guest did not answer a soft reboot in time, so the agent
	// rebooted it hard.
	ReasonRebootFellBackToHard = "RebootFellBackToHard"
	// ReasonShutdownTimedOut: the guest did not power off in time after the ACPI power button,
	// so the agent powered it off.
	ReasonShutdownTimedOut = "ShutdownTimedOut"
)

// AgentLeaseName is the name of the Lease a node's agent renews as its heartbeat.
func AgentLeaseName(node string) string { return "kubenova-agent-" + node }

// UserDataCopyName names the Secret in kubenova's own namespace that holds an instance's user
// data, copied there by the manager from the Secret that spec.userData names: agents read only
// kubenova's namespace, never the users'.
func UserDataCopyName(uid types.UID) string { return "kubenova-userdata-" + string(uid) }

// UserDataCopyKey is the key of the user data in its copy.
const UserDataCopyKey = "userdata"

// DefaultSystemNamespace is kubenova's own namespace: the service accounts, the Leases and the
// user data copies.
const DefaultSystemNamespace = "kubenova-system"

// Labels and annotations kubenova sets.
const (
	// FinalizerInstance keeps an Instance until its domain and disks are gone from its node.
	FinalizerInstance = "compute.kubenova.io/instance"
	// FinalizerSnapshot keeps a Snapshot whose image goes with it until the image is deleted.
	FinalizerSnapshot = "compute.kubenova.io/snapshot"
	// LabelInstanceUID is, on a user data copy, the UID of its instance.
	LabelInstanceUID = "compute.kubenova.io/instance-uid"
	// AnnotationInstance is, on a user data copy, the namespace/name of its instance.
	AnnotationInstance = "compute.kubenova.io/instance"
	// LabelShelvedInstance names, on an Image, the instance whose shelve made it.
	LabelShelvedInstance = "compute.kubenova.io/shelved-instance"
	// LabelSnapshot names, on an Image, the Snapshot that made it.
	LabelSnapshot = "compute.kubenova.io/snapshot"
	// AnnotationSnapshotUID is, on an Image, the UID of the Snapshot that made it: an Image of
	// the same name made by someone else is never taken over.
	AnnotationSnapshotUID = "compute.kubenova.io/snapshot-uid"
	// StepUploading: the agent has made a snapshot's copy and uploads it.
	StepUploading = "Uploading"
	// StepPrepared: a migration's target agent has made what the domain needs there.
	StepPrepared = "Prepared"
	// StepMigrating: the source agent has begun migrating the domain.
	StepMigrating = "Migrating"
	// StepMigrated: the domain left the source node for the target.
	StepMigrated = "Migrated"
	// StepDiskSent: a resize's source has powered the guest off and set its disk aside (and
	// uploaded a copy, when the target does not share its storage).
	StepDiskSent = "DiskSent"
	// StepRemoved: a revert's target has removed the resized copy; the source takes over.
	StepRemoved = "Removed"
	// FinalizerMigration keeps a Migration in flight until its move is aborted or done.
	FinalizerMigration = "compute.kubenova.io/migration"
	// FinalizerImage keeps an Image or ClusterImage until its bytes are gone from the image store.
	FinalizerImage = "compute.kubenova.io/image"
	// LabelHypervisor is set on an agent's Lease to name its node.
	LabelHypervisor = "compute.kubenova.io/hypervisor"
)
