package v1alpha1

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// VMState is Nova's vm_state: the stable state an instance rests in between tasks.
// +kubebuilder:validation:Enum=Building;Active;Stopped;Paused;Suspended;Rescued;Resized;Shelved;ShelvedOffloaded;Deleted;Error
type VMState string

// The vm states, named after nova/compute/vm_states.py.
const (
	VMStateBuilding         VMState = "Building"
	VMStateActive           VMState = "Active"
	VMStateStopped          VMState = "Stopped"
	VMStatePaused           VMState = "Paused"
	VMStateSuspended        VMState = "Suspended"
	VMStateRescued          VMState = "Rescued"
	VMStateResized          VMState = "Resized"
	VMStateShelved          VMState = "Shelved"
	VMStateShelvedOffloaded VMState = "ShelvedOffloaded"
	VMStateDeleted          VMState = "Deleted"
	VMStateError            VMState = "Error"
)

// TaskState is Nova's task_state: the task an instance is going through; empty means none.
// +kubebuilder:validation:Enum="";Scheduling;Spawning;PoweringOff;PoweringOn;Rebooting;RebootingHard;Pausing;Unpausing;Suspending;Resuming;ImageSnapshot;ImageUploading;ResizePrep;ResizeMigrating;ResizeFinish;ResizeConfirming;ResizeReverting;Migrating;Rescuing;Unrescuing;Rebuilding;Shelving;ShelvingOffloading;Unshelving;Deleting
type TaskState string

// The task states, named after nova/compute/task_states.py. Nova's finer sub-steps (for example
// block_device_mapping or resize_migrated) have no task state here: each task on the node is
// idempotent and repeats from its beginning (see docs/design.md).
const (
	TaskStateNone               TaskState = ""
	TaskStateScheduling         TaskState = "Scheduling"
	TaskStateSpawning           TaskState = "Spawning"
	TaskStatePoweringOff        TaskState = "PoweringOff"
	TaskStatePoweringOn         TaskState = "PoweringOn"
	TaskStateRebooting          TaskState = "Rebooting"
	TaskStateRebootingHard      TaskState = "RebootingHard"
	TaskStatePausing            TaskState = "Pausing"
	TaskStateUnpausing          TaskState = "Unpausing"
	TaskStateSuspending         TaskState = "Suspending"
	TaskStateResuming           TaskState = "Resuming"
	TaskStateImageSnapshot      TaskState = "ImageSnapshot"
	TaskStateImageUploading     TaskState = "ImageUploading"
	TaskStateResizePrep         TaskState = "ResizePrep"
	TaskStateResizeMigrating    TaskState = "ResizeMigrating"
	TaskStateResizeFinish       TaskState = "ResizeFinish"
	TaskStateResizeConfirming   TaskState = "ResizeConfirming"
	TaskStateResizeReverting    TaskState = "ResizeReverting"
	TaskStateMigrating          TaskState = "Migrating"
	TaskStateRescuing           TaskState = "Rescuing"
	TaskStateUnrescuing         TaskState = "Unrescuing"
	TaskStateRebuilding         TaskState = "Rebuilding"
	TaskStateShelving           TaskState = "Shelving"
	TaskStateShelvingOffloading TaskState = "ShelvingOffloading"
	TaskStateUnshelving         TaskState = "Unshelving"
	TaskStateDeleting           TaskState = "Deleting"
)

// PowerState is Nova's power_state: what the hypervisor says the domain is doing.
// +kubebuilder:validation:Enum=NoState;Running;Paused;Shutdown;Crashed;Suspended
type PowerState string

// The power states, named after nova/compute/power_state.py.
const (
	PowerStateNoState   PowerState = "NoState"
	PowerStateRunning   PowerState = "Running"
	PowerStatePaused    PowerState = "Paused"
	PowerStateShutdown  PowerState = "Shutdown"
	PowerStateCrashed   PowerState = "Crashed"
	PowerStateSuspended PowerState = "Suspended"
)

// DesiredPowerState is the state a user asks an instance to rest in.
// +kubebuilder:validation:Enum=Running;Stopped;Paused;Suspended;Shelved
type DesiredPowerState string

// The desired power states a spec may ask for.
const (
	DesiredRunning   DesiredPowerState = "Running"
	DesiredStopped   DesiredPowerState = "Stopped"
	DesiredPaused    DesiredPowerState = "Paused"
	DesiredSuspended DesiredPowerState = "Suspended"
	DesiredShelved   DesiredPowerState = "Shelved"
)

// RebootType says how a reboot is carried out.
// +kubebuilder:validation:Enum=Soft;Hard
type RebootType string

// The reboot types of `nova reboot` and `nova reboot --hard`.
const (
	RebootSoft RebootType = "Soft"
	RebootHard RebootType = "Hard"
)

// ImageKind says which kind an ImageReference names.
// +kubebuilder:validation:Enum=Image;ClusterImage
type ImageKind string

// The kinds an instance boots from.
const (
	// KindImage is an Image of the instance's own namespace.
	KindImage ImageKind = "Image"
	// KindClusterImage is a ClusterImage, shared by every namespace.
	KindClusterImage ImageKind = "ClusterImage"
)

// ImageReference names an Image in the instance's namespace, or a ClusterImage. There is no
// namespace field: an instance never boots from another namespace's Image.
type ImageReference struct {
	// Kind is Image (of the instance's namespace) or ClusterImage.
	// +kubebuilder:default=Image
	// +optional
	Kind ImageKind `json:"kind,omitempty"`
	// Name of the Image or ClusterImage.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// ImageKindOrDefault is the kind the reference names, with its schema default (Image) for
// references read from objects that never went through the API server.
func (r ImageReference) ImageKindOrDefault() ImageKind {
	if r.Kind == "" {
		return KindImage
	}
	return r.Kind
}

// SameImage says whether two references name the same image.
func (r ImageReference) SameImage(o ImageReference) bool {
	return r.Name == o.Name && r.ImageKindOrDefault() == o.ImageKindOrDefault()
}

// String is how messages name the image: "image NAME" or "cluster image NAME".
func (r ImageReference) String() string {
	if r.ImageKindOrDefault() == KindClusterImage {
		return "cluster image " + r.Name
	}
	return "image " + r.Name
}

// AppliedImage is the image an instance's root disk was built from, as the image service
// verified it: the node agent fetches exactly these bytes from the image store (by the image's
// UID) and checks their digest, so it needs neither the Image object nor its source.
type AppliedImage struct {
	// ImageReference names the Image or ClusterImage.
	ImageReference `json:",inline"`
	// UID of the Image object, the key of its bytes in the image store.
	UID string `json:"uid"`
	// SHA256 of the bytes, as the image service verified them.
	SHA256 string `json:"sha256"`
	// DiskFormat of the bytes.
	DiskFormat DiskFormat `json:"diskFormat"`
}

// RebootRequest asks for one reboot. A new requestedAt asks for another; status.rebootRequest
// acknowledges each one, so each request is served at most once (see docs/design.md).
type RebootRequest struct {
	// Type of reboot: Soft (ACPI, falls back to Hard on timeout) or Hard (a power cycle).
	// +kubebuilder:default=Soft
	// +optional
	Type RebootType `json:"type,omitempty"`

	// RequestedAt identifies the request; `kubectl nova reboot` stamps the current time. It has
	// microseconds, so that two requests within one second stay two.
	RequestedAt metav1.MicroTime `json:"requestedAt"`
}

// StartRequest asks for an instance that stopped outside kubenova (its guest powered off, its
// QEMU died) to be started again. kubenova, like Nova, never restarts such an instance by
// itself; any change of the spec, this one included, is the user asking again.
type StartRequest struct {
	// RequestedAt identifies the request; `kubectl nova start` stamps the current time.
	RequestedAt metav1.MicroTime `json:"requestedAt"`
}

// RebuildRequest asks for one rebuild onto spec.image: a fresh root disk from the image, on the
// same node, for the same instance, even when the image has not changed (Nova's rebuild with
// the server's own image). Changing spec.image rebuilds without one. status.rebuildRequest
// acknowledges each request, so each is served at most once.
type RebuildRequest struct {
	// RequestedAt identifies the request; `kubectl nova rebuild` stamps the current time.
	RequestedAt metav1.MicroTime `json:"requestedAt"`
}

// ResizeDecision is what becomes of a resize (or cold migration) that waits in Resized.
// +kubebuilder:validation:Enum=Confirm;Revert
type ResizeDecision string

// The decisions of `nova resize-confirm` and `nova resize-revert`.
const (
	// ResizeConfirm keeps the new flavor and node, and deletes the source's copy of the disk.
	ResizeConfirm ResizeDecision = "Confirm"
	// ResizeRevert goes back to the old flavor and node, on the disk as it was before the resize.
	ResizeRevert ResizeDecision = "Revert"
)

// ResizeRequest confirms or reverts the resize that waits in Resized. status.resizeRequest
// acknowledges each request, so each is served at most once.
type ResizeRequest struct {
	// Decision is Confirm or Revert.
	Decision ResizeDecision `json:"decision"`
	// RequestedAt identifies the request; `kubectl nova resize --confirm|--revert` stamps the
	// current time.
	RequestedAt metav1.MicroTime `json:"requestedAt"`
}

// RequestResult is what became of a one-shot request.
// +kubebuilder:validation:Enum=Accepted;Succeeded;Failed;Refused;Ignored
type RequestResult string

// The results of a one-shot request.
const (
	// RequestAccepted: a task serves the request now; a start request, which needs no task of
	// its own (it lifts the hold of a power change), stays Accepted.
	RequestAccepted RequestResult = "Accepted"
	// RequestSucceeded: the task that served the request succeeded.
	RequestSucceeded RequestResult = "Succeeded"
	// RequestFailed: the task that served the request failed.
	RequestFailed RequestResult = "Failed"
	// RequestRefused: the state machine did not allow the request; reason and message say why.
	RequestRefused RequestResult = "Refused"
	// RequestIgnored: the request was never served, for example because it was stamped before
	// the instance was created (an instance restored from Git must not reboot on arrival).
	RequestIgnored RequestResult = "Ignored"
)

// RequestStatus acknowledges one one-shot request of the spec. A request whose requestedAt it
// names is never served again, whatever became of it.
type RequestStatus struct {
	// RequestedAt is the acknowledged request's stamp.
	RequestedAt metav1.MicroTime `json:"requestedAt"`
	// Result is what became of it.
	Result RequestResult `json:"result"`
	// Reason is a CamelCase code for a refused or ignored request.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says what happened, for people.
	// +optional
	Message string `json:"message,omitempty"`
	// TaskID is the task that serves the request.
	// +optional
	TaskID int64 `json:"taskID,omitempty"`
}

// RescueSpec asks for the instance to be booted from a rescue image with its own root disk
// attached as a second disk.
type RescueSpec struct {
	// Image to boot; empty means the cluster's default rescue image (the manager's
	// --default-rescue-image, a ClusterImage) or, without one, the instance's own image, as
	// Nova's rescue does.
	// +optional
	Image *ImageReference `json:"image,omitempty"`
}

// UserDataSource names the Secret, in the instance's namespace, that holds the instance's
// cloud-init user data.
type UserDataSource struct {
	// SecretName is the Secret's name.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`
	// Key of the Secret that holds the user data.
	// +kubebuilder:default=userdata
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Key string `json:"key,omitempty"`
}

// InstanceSpec is the desired state of a virtual machine.
// +kubebuilder:validation:XValidation:rule="!has(self.lockedReason) || (has(self.locked) && self.locked)",message="lockedReason may only be set when locked is true"
// +kubebuilder:validation:XValidation:rule="has(self.networks) == has(oldSelf.networks)",message="networks cannot change once the instance exists (interface attach and detach are not built)"
// +kubebuilder:validation:XValidation:rule="has(self.serverGroup) == has(oldSelf.serverGroup)",message="serverGroup is fixed at creation, as Nova's group hint"
type InstanceSpec struct {
	// Flavor names the cluster-scoped Flavor that sizes the instance. Changing it resizes.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Flavor string `json:"flavor"`

	// Image the root disk is built from. Changing it rebuilds the instance.
	Image ImageReference `json:"image"`

	// PowerState the instance should rest in.
	// +kubebuilder:default=Running
	// +optional
	PowerState DesiredPowerState `json:"powerState,omitempty"`

	// RebootRequest asks for a reboot; see RebootRequest.
	// +optional
	RebootRequest *RebootRequest `json:"rebootRequest,omitempty"`

	// StartRequest asks to start an instance that stopped outside kubenova; see StartRequest.
	// +optional
	StartRequest *StartRequest `json:"startRequest,omitempty"`

	// RebuildRequest asks for a rebuild onto spec.image; see RebuildRequest.
	// +optional
	RebuildRequest *RebuildRequest `json:"rebuildRequest,omitempty"`

	// ResizeRequest confirms or reverts a resize (or cold migration) that waits in Resized; see
	// ResizeRequest.
	// +optional
	ResizeRequest *ResizeRequest `json:"resizeRequest,omitempty"`

	// Locked refuses every change to the instance but unlocking, except from administrators.
	// +optional
	Locked bool `json:"locked,omitempty"`

	// LockedReason says why the instance is locked.
	// +kubebuilder:validation:MaxLength=255
	// +optional
	LockedReason string `json:"lockedReason,omitempty"`

	// Rescue, when set, boots the instance from a rescue image; removing it unrescues.
	// +optional
	Rescue *RescueSpec `json:"rescue,omitempty"`

	// NodeSelector restricts scheduling to nodes whose labels match all of these.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// AvailabilityZone restricts scheduling to nodes labelled
	// topology.kubernetes.io/zone=<zone>.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	AvailabilityZone string `json:"availabilityZone,omitempty"`

	// ServerGroup names a ServerGroup of the instance's namespace whose policy places it relative
	// to the group's other members, at launch and at every later placement (resize, migration,
	// evacuation, unshelve), as Nova's group scheduler hint does. Fixed at creation. A launch
	// waits, with reason ServerGroupNotFound, while the group does not exist.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="serverGroup is fixed at creation, as Nova's group hint"
	// +optional
	ServerGroup string `json:"serverGroup,omitempty"`

	// EvictionStrategy says what a drain of the instance's node (kubectl drain, or any
	// eviction of its reservation pod) does with it, as KubeVirt's evictionStrategy does:
	// LiveMigrate moves it to another node while it runs, and the drain completes once it has
	// left; None leaves it where it is, and the drain waits, saying why, until it is moved or
	// deleted. Empty takes the manager's --default-eviction-strategy.
	// +kubebuilder:validation:Enum=LiveMigrate;None
	// +optional
	EvictionStrategy EvictionStrategy `json:"evictionStrategy,omitempty"`

	// UserData is cloud-init user data from a Secret, given to the guest on a NoCloud drive
	// (Nova's user_data). It is read when the drive is made: the first boot on a node.
	// +optional
	UserData *UserDataSource `json:"userData,omitempty"`

	// AdoptQuarantinedDisk has the launch boot the root disk that a node keeps in quarantine
	// for an instance of this namespace and name (the most recently quarantined), instead of a
	// new disk from the image: for an Instance applied again after its object was lost (its
	// finalizer removed, etcd restored, a restore that gives new UIDs). The instance waits, with
	// reason QuarantinedDiskNotFound, until a node reports such a disk (agents look at start and
	// every few minutes); remove the field to boot from the image instead. Only the launch reads
	// it.
	// +optional
	AdoptQuarantinedDisk bool `json:"adoptQuarantinedDisk,omitempty"`

	// SSHAuthorizedKeys are SSH public keys the guest's cloud-init authorizes (Nova's key
	// pair), given on the same drive as public-keys.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=8192
	// +kubebuilder:validation:items:Pattern=`^(ssh-|ecdsa-|sk-)[^\n]*$`
	// +optional
	SSHAuthorizedKeys []string `json:"sshAuthorizedKeys,omitempty"`

	// Networks are the instance's NICs, in order (the guest's first NIC first), each on a
	// network of the compute nodes. They are fixed when the instance is created: attaching and
	// detaching interfaces is not built yet.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:XValidation:rule="self.all(n, !has(n.macAddress) || self.filter(m, has(m.macAddress) && m.macAddress.lowerAscii() == n.macAddress.lowerAscii()).size() == 1)",message="two NICs have the same macAddress"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="networks cannot change once the instance exists (interface attach and detach are not built)"
	// +listType=atomic
	// +optional
	Networks []NetworkInterface `json:"networks,omitempty"`
}

// AppliedFlavor is the copy of a flavor an instance was sized with, kept in status as Nova keeps
// instance.flavor: deleting or replacing the Flavor object never changes a running instance.
type AppliedFlavor struct {
	// Name of the Flavor.
	Name string `json:"name"`
	// FlavorSpec is the flavor's sizing when it was applied.
	FlavorSpec `json:",inline"`
}

// Action is one instance operation of the Nova state machine (internal/lifecycle holds the table).
// +kubebuilder:validation:Enum=Launch;Start;Stop;Reboot;HardReboot;Pause;Unpause;Suspend;Resume;Snapshot;Resize;ConfirmResize;RevertResize;Migrate;LiveMigrate;Evacuate;Shelve;ShelveOffload;Unshelve;Rescue;Unrescue;Rebuild;Lock;Unlock;Terminate
type Action string

// The actions of the sixteen Nova operations.
const (
	ActionLaunch        Action = "Launch"
	ActionStart         Action = "Start"
	ActionStop          Action = "Stop"
	ActionReboot        Action = "Reboot"
	ActionHardReboot    Action = "HardReboot"
	ActionPause         Action = "Pause"
	ActionUnpause       Action = "Unpause"
	ActionSuspend       Action = "Suspend"
	ActionResume        Action = "Resume"
	ActionSnapshot      Action = "Snapshot"
	ActionResize        Action = "Resize"
	ActionConfirmResize Action = "ConfirmResize"
	ActionRevertResize  Action = "RevertResize"
	ActionMigrate       Action = "Migrate"
	ActionLiveMigrate   Action = "LiveMigrate"
	ActionEvacuate      Action = "Evacuate"
	ActionShelve        Action = "Shelve"
	ActionShelveOffload Action = "ShelveOffload"
	ActionUnshelve      Action = "Unshelve"
	ActionRescue        Action = "Rescue"
	ActionUnrescue      Action = "Unrescue"
	ActionRebuild       Action = "Rebuild"
	ActionLock          Action = "Lock"
	ActionUnlock        Action = "Unlock"
	ActionTerminate     Action = "Terminate"
)

// Task is the order the manager gives the node agent: carry out Action. The agent answers in
// status.agentReport with the same ID, so the manager can tell an old answer from a new one.
type Task struct {
	// ID increases with every task the instance is given.
	ID int64 `json:"id"`
	// Action being carried out.
	Action Action `json:"action"`
	// StartedAt is when the manager started the task.
	StartedAt metav1.Time `json:"startedAt"`
	// ObservedGeneration is the spec generation the task serves.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Snapshot is what a Snapshot or Shelve task saves, and where.
	// +optional
	Snapshot *SnapshotTask `json:"snapshot,omitempty"`
	// Image is the image a Rebuild task builds the new root disk from (status.image becomes it
	// when the task succeeds), the rescue image of a Rescue task, or the shelved image an
	// Unshelve task of an offloaded instance boots from.
	// +optional
	Image *AppliedImage `json:"image,omitempty"`
	// PeerNode is the second node the task involves, besides status.nodeName: the target of a
	// live migration before the instance switches to it, the source whose copy of the disk a
	// resize's confirmation deletes. That node's agent watches the instance through it (a
	// selectable field) and answers in status.peerReport.
	// +optional
	PeerNode string `json:"peerNode,omitempty"`
	// Migration is where a LiveMigrate or Evacuate task moves the instance, and how.
	// +optional
	Migration *MigrationTask `json:"migration,omitempty"`
}

// MigrationTask tells the two agents of a move what to do: the target's prepares the disks
// and reports in status.peerReport, the source's then migrates the domain straight to the
// target's libvirt.
type MigrationTask struct {
	// Name of the Migration served.
	Name string `json:"name"`
	// UID of the Migration served.
	UID string `json:"uid"`
	// SourceNode the instance leaves.
	SourceNode string `json:"sourceNode"`
	// TargetNode the instance goes to.
	TargetNode string `json:"targetNode"`
	// TargetURI is the libvirt URI of the target (its Hypervisor's migrationURI).
	TargetURI string `json:"targetURI"`
	// TargetStorageRoot is the target's storage root: the disk paths of the domain are moved
	// under it.
	TargetStorageRoot string `json:"targetStorageRoot"`
	// TargetNetworks are the target's networks (its Hypervisor's status.networks): a live
	// migration plugs each NIC into the target's bridge or libvirt network of the same name.
	// +optional
	TargetNetworks []HypervisorNetwork `json:"targetNetworks,omitempty"`
	// BlockMigration copies the disks to the target; otherwise source and target share them.
	// +optional
	BlockMigration bool `json:"blockMigration,omitempty"`
	// Abort asks the source to cancel the migration (its Migration is being deleted).
	// +optional
	Abort bool `json:"abort,omitempty"`
	// FromImage: an evacuation to a node that does not share the source's storage rebuilds the
	// root disk from status.image (task.image); the old disk's data is lost. Otherwise the
	// target boots the instance's own disk.
	// +optional
	FromImage bool `json:"fromImage,omitempty"`
}

// MigrationProgress is what the hypervisor says of a migration: while it runs, and once done.
type MigrationProgress struct {
	// ProgressPercent of the data copied.
	// +optional
	ProgressPercent int32 `json:"progressPercent,omitempty"`
	// DataTotalBytes to copy (memory, and disks in a block migration), as libvirt counts them.
	// +optional
	DataTotalBytes int64 `json:"dataTotalBytes,omitempty"`
	// DataRemainingBytes still to copy.
	// +optional
	DataRemainingBytes int64 `json:"dataRemainingBytes,omitempty"`
	// DowntimeMillis the guest was paused for at the switch-over.
	// +optional
	DowntimeMillis int64 `json:"downtimeMillis,omitempty"`
	// TotalMillis the migration took, from libvirt's job statistics.
	// +optional
	TotalMillis int64 `json:"totalMillis,omitempty"`
}

// SnapshotTask tells the node agent which Snapshot (or shelved image) it serves and which image
// store key the root disk's copy is uploaded under.
type SnapshotTask struct {
	// Name of the Snapshot, or of the shelved Image.
	Name string `json:"name"`
	// ImageUID is the UID of the Image the copy becomes, its key in the image store.
	ImageUID string `json:"imageUID"`
}

// DiskTransfer is how a resize's root disk reaches its target.
// +kubebuilder:validation:Enum=SameNode;SharedStorage;ImageStore
type DiskTransfer string

// The ways a resize moves the root disk.
const (
	// TransferSameNode: the instance stays on its node; the disk is copied beside itself.
	TransferSameNode DiskTransfer = "SameNode"
	// TransferSharedStorage: both nodes see the disk; the target copies it beside itself.
	TransferSharedStorage DiskTransfer = "SharedStorage"
	// TransferImageStore: the source uploads a standalone copy to the image store, the target
	// downloads it.
	TransferImageStore DiskTransfer = "ImageStore"
)

// ResizeTransferKey is the image store key of the copy of the root disk that a resize's task
// hands over through the image store: the manager computes it, never takes it from an agent.
func ResizeTransferKey(uid types.UID, taskID int64) string {
	return fmt.Sprintf("resize-%s-%d", uid, taskID)
}

// ResizeStatus is the context of a resize or cold migration, from its start until it is
// confirmed or reverted (Nova keeps it in the migration record and instance.old_flavor): where
// the instance came from and how to go back. The source keeps the original disk, set aside,
// until then.
type ResizeStatus struct {
	// Action is Resize (a new flavor) or Migrate (a cold migration).
	Action Action `json:"action"`
	// TaskID is the Resize or Migrate task that began the move: the source's disk is set aside
	// under a name with it (disk.resize-<taskID>), so that no other move's leftover is taken
	// for it.
	TaskID int64 `json:"taskID"`
	// RollingBack says that the move failed and its revert is a rollback: the fault stays.
	// +optional
	RollingBack bool `json:"rollingBack,omitempty"`
	// MigrationName and MigrationUID name the Migration a cold migration serves.
	// +optional
	MigrationName string `json:"migrationName,omitempty"`
	// +optional
	MigrationUID string `json:"migrationUID,omitempty"`
	// SourceNode the instance came from; it keeps the original disk until confirmation.
	SourceNode string `json:"sourceNode"`
	// TargetNode the instance goes to (the source itself for a resize on the same node).
	TargetNode string `json:"targetNode"`
	// OldFlavor is the flavor before the resize: a revert goes back to it.
	OldFlavor AppliedFlavor `json:"oldFlavor"`
	// Flavor is the flavor after the resize.
	Flavor AppliedFlavor `json:"flavor"`
	// PreviousVMState is the vm state before the resize: a stopped instance stays stopped
	// through the resize, its confirmation and its revert.
	PreviousVMState VMState `json:"previousVMState"`
	// DiskTransfer is how the root disk reaches the target.
	DiskTransfer DiskTransfer `json:"diskTransfer"`
	// Transfer is the copy of the root disk the source uploaded to the image store (key UID,
	// digest SHA256), for an ImageStore transfer.
	// +optional
	Transfer *AppliedImage `json:"transfer,omitempty"`
	// StartedAt is when the resize began.
	StartedAt metav1.Time `json:"startedAt"`
	// ResizedAt is when the instance reached Resized; --resize-confirm-window counts from it.
	// +optional
	ResizedAt *metav1.Time `json:"resizedAt,omitempty"`
}

// ObjectRequestStatus acknowledges the last request object (a Snapshot, a Migration) the
// instance served: the object's controller reads what became of its request here.
type ObjectRequestStatus struct {
	// Name of the Snapshot or Migration.
	Name string `json:"name"`
	// UID of the Snapshot or Migration.
	UID string `json:"uid"`
	// Result is what became of it.
	Result RequestResult `json:"result"`
	// Reason is a CamelCase code for a refused request.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says what happened, for people.
	// +optional
	Message string `json:"message,omitempty"`
	// TaskID is the task that serves the request.
	// +optional
	TaskID int64 `json:"taskID,omitempty"`
	// SourceNode a served Migration moves the instance from.
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// TargetNode a served Migration moves the instance to.
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// BlockMigration says whether a served Migration copies the disks.
	// +optional
	BlockMigration bool `json:"blockMigration,omitempty"`
	// RebuiltFromImage says that a served evacuation rebuilds the root disk from the instance's
	// image, without shared storage: the disk's data is lost.
	// +optional
	RebuiltFromImage bool `json:"rebuiltFromImage,omitempty"`
}

// TaskResult is an agent's outcome of a task.
// +kubebuilder:validation:Enum=Succeeded;Failed
type TaskResult string

// The outcomes of a task.
const (
	TaskSucceeded TaskResult = "Succeeded"
	TaskFailed    TaskResult = "Failed"
)

// AgentReport is written only by the agent of the instance's node: what the node really has.
type AgentReport struct {
	// NodeName of the agent that wrote the report.
	NodeName string `json:"nodeName"`
	// TaskID of the last task this agent finished, with its result.
	// +optional
	TaskID int64 `json:"taskID,omitempty"`
	// TaskResult of that task.
	// +optional
	TaskResult TaskResult `json:"taskResult,omitempty"`
	// Message explains a failed task.
	// +optional
	Message string `json:"message,omitempty"`
	// Step is how far the agent got with task StepTaskID, for tasks of several steps (a
	// snapshot is Uploading once its copy is made).
	// +optional
	Step string `json:"step,omitempty"`
	// StepTaskID is the task Step is about.
	// +optional
	StepTaskID int64 `json:"stepTaskID,omitempty"`
	// PowerReason is the hypervisor's reason for status.powerState (libvirt's state reason:
	// Booted, Shutdown, Destroyed, Crashed, Saved, User, ...).
	// +optional
	PowerReason string `json:"powerReason,omitempty"`
	// DomainName is the libvirt domain's name.
	// +optional
	DomainName string `json:"domainName,omitempty"`
	// ConsoleLogPath is the node-local file the serial console is logged to.
	// +optional
	ConsoleLogPath string `json:"consoleLogPath,omitempty"`
	// Migration is the progress of a migration this agent takes part in (task StepTaskID).
	// +optional
	Migration *MigrationProgress `json:"migration,omitempty"`
	// RootDiskBytes is the virtual size of the root disk, reported by the source of a block
	// migration (task StepTaskID) so that the target makes a disk of the same size.
	// +optional
	RootDiskBytes int64 `json:"rootDiskBytes,omitempty"`
	// Transfer is the copy of the root disk a resize's source uploaded to the image store
	// (task StepTaskID), for the target to download.
	// +optional
	Transfer *AppliedImage `json:"transfer,omitempty"`
	// Interfaces are the guest's NICs with the addresses the node sees on them.
	// +optional
	Interfaces []ObservedInterface `json:"interfaces,omitempty"`
	// LastSyncTime is when the agent last compared this report with the hypervisor.
	// +optional
	LastSyncTime *metav1.Time `json:"lastSyncTime,omitempty"`
}

// InstanceFault records why an instance went to Error, as Nova's instance_faults table does.
type InstanceFault struct {
	// Reason is a CamelCase code.
	Reason string `json:"reason"`
	// Message is for people.
	Message string `json:"message"`
	// Time the fault happened.
	Time metav1.Time `json:"time"`
	// Action whose task failed, if a task failed.
	// +optional
	Action Action `json:"action,omitempty"`
	// ObservedGeneration is the spec generation the failed task served. The manager does not
	// try the same action again for the same generation: a failure repeats until someone acts.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// PowerChange records that the hypervisor changed an instance's power state while no task
// ran: the guest powered itself off, its QEMU died, or someone used virsh. kubenova then
// believes the hypervisor (vmState follows what it found). A guest that went down (stopped,
// crashed, paused, suspended) is not brought back by kubenova itself, as Nova does not restart
// it, until spec.powerState changes or a start request comes; one that was started behind
// kubenova's back is brought back to what the spec asks (Nova force-stops it).
type PowerChange struct {
	// FromVMState is the vm state the instance had before.
	FromVMState VMState `json:"fromVMState"`
	// PowerState is what the hypervisor reported.
	PowerState PowerState `json:"powerState"`
	// Reason is the hypervisor's reason for that power state (for example Shutdown: the guest
	// powered off; Crashed: QEMU died; Destroyed: someone destroyed the domain).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Time the manager saw the change.
	Time metav1.Time `json:"time"`
	// SpecPowerState is what spec.powerState asked at the change. While it asks the same,
	// kubenova does not bring a guest that went down back by itself.
	SpecPowerState DesiredPowerState `json:"specPowerState"`
}

// AdoptedDisk names the quarantined disk a launch boots (spec.adoptQuarantinedDisk).
type AdoptedDisk struct {
	// UID is the vanished instance's whose disk it was.
	UID string `json:"uid"`
	// QuarantinedSince is when its node set it aside.
	QuarantinedSince metav1.Time `json:"quarantinedSince"`
}

// InstanceStatus is the observed state of a virtual machine. The manager writes every field but
// powerState and agentReport, which only the agent of status.nodeName writes, and peerReport,
// which only the agent of status.task.peerNode writes.
type InstanceStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// VMState is Nova's vm_state.
	// +optional
	VMState VMState `json:"vmState,omitempty"`
	// TaskState is Nova's task_state; empty when no task runs.
	// +optional
	TaskState TaskState `json:"taskState,omitempty"`
	// PowerState is what the hypervisor reports.
	// +optional
	PowerState PowerState `json:"powerState,omitempty"`
	// NodeName is the node the instance is placed on.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
	// Flavor is the sizing the instance has now; during a resize it differs from spec.flavor.
	// +optional
	Flavor *AppliedFlavor `json:"flavor,omitempty"`
	// Image is the image the root disk was built from.
	// +optional
	Image *AppliedImage `json:"image,omitempty"`
	// ShelvedImage is the Image a shelved instance's root disk was saved as; an unshelve boots
	// from it and then deletes it.
	// +optional
	ShelvedImage *ImageReference `json:"shelvedImage,omitempty"`
	// ShelvedAt is when the instance was shelved; the offload follows the manager's
	// --shelved-offload-time later.
	// +optional
	ShelvedAt *metav1.Time `json:"shelvedAt,omitempty"`
	// RescueImage is the image a Rescued instance boots from, its own root disk second.
	// +optional
	RescueImage *AppliedImage `json:"rescueImage,omitempty"`
	// Task is the task in flight, if any.
	// +optional
	Task *Task `json:"task,omitempty"`
	// LastTaskID is the ID of the last task given; the next task gets LastTaskID+1.
	// +optional
	LastTaskID int64 `json:"lastTaskID,omitempty"`
	// RebootRequest acknowledges spec.rebootRequest: what became of the last request seen.
	// +optional
	RebootRequest *RequestStatus `json:"rebootRequest,omitempty"`
	// StartRequest acknowledges spec.startRequest.
	// +optional
	StartRequest *RequestStatus `json:"startRequest,omitempty"`
	// RebuildRequest acknowledges spec.rebuildRequest.
	// +optional
	RebuildRequest *RequestStatus `json:"rebuildRequest,omitempty"`
	// ResizeRequest acknowledges spec.resizeRequest.
	// +optional
	ResizeRequest *RequestStatus `json:"resizeRequest,omitempty"`
	// Resize is the context of a resize or cold migration until it is confirmed or reverted.
	// +optional
	Resize *ResizeStatus `json:"resize,omitempty"`
	// RevertedFlavor is the flavor of a resize that was reverted: spec.flavor still names it,
	// and the instance is not resized to it again until spec.flavor changes.
	// +optional
	RevertedFlavor string `json:"revertedFlavor,omitempty"`
	// SnapshotRequest acknowledges the last Snapshot of the instance that was served.
	// +optional
	SnapshotRequest *ObjectRequestStatus `json:"snapshotRequest,omitempty"`
	// MigrationRequest acknowledges the last Migration of the instance that was served.
	// +optional
	MigrationRequest *ObjectRequestStatus `json:"migrationRequest,omitempty"`
	// PowerChange is the last power change the hypervisor made while no task ran, kept until
	// the instance rests where its spec asks again.
	// +optional
	PowerChange *PowerChange `json:"powerChange,omitempty"`
	// AgentReport is the node agent's account of the instance.
	// +optional
	AgentReport *AgentReport `json:"agentReport,omitempty"`
	// PeerReport is the account of the agent of status.task.peerNode: a live migration's
	// target while the instance still lives on its source, a resize's source while its
	// confirmation deletes the source's copy.
	// +optional
	PeerReport *AgentReport `json:"peerReport,omitempty"`
	// LaunchedAt is when the instance first became Active.
	// +optional
	LaunchedAt *metav1.Time `json:"launchedAt,omitempty"`
	// Networks are the instance's NICs as built, in the order of spec.networks: the MAC each
	// keeps for the instance's life, and the addresses last seen on it.
	// +optional
	Networks []NICStatus `json:"networks,omitempty"`
	// Addresses sums up the addresses per network, as `nova list` shows them, without spaces
	// so that it stays one column ("provider=10.254.0.12;storage=192.168.4.7,fd00::7").
	// +optional
	Addresses string `json:"addresses,omitempty"`
	// AdoptedDisk is the quarantined disk the launch boots instead of a new one from the image
	// (spec.adoptQuarantinedDisk), chosen when the instance is placed.
	// +optional
	AdoptedDisk *AdoptedDisk `json:"adoptedDisk,omitempty"`
	// Fault says why the instance is in Error.
	// +optional
	Fault *InstanceFault `json:"fault,omitempty"`
	// Conditions: Ready (the instance rests in the state its spec asks for), Scheduled,
	// Reconciling and Stalled (as kstatus reads them).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Instance is a virtual machine, Nova's server.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=inst,categories=nova
// +kubebuilder:selectablefield:JSONPath=`.status.nodeName`
// +kubebuilder:selectablefield:JSONPath=`.status.task.peerNode`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.vmState`
// +kubebuilder:printcolumn:name="Task",type=string,JSONPath=`.status.taskState`
// +kubebuilder:printcolumn:name="Power",type=string,JSONPath=`.status.powerState`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Networks",type=string,JSONPath=`.status.addresses`
// +kubebuilder:printcolumn:name="Flavor",type=string,JSONPath=`.status.flavor.name`,description="The flavor the instance has"
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.status.image.name`,description="The image the instance was built from"
// +kubebuilder:printcolumn:name="Spec_Flavor",type=string,JSONPath=`.spec.flavor`,description="The flavor spec asks for: another than Flavor while a resize is in flight"
// +kubebuilder:printcolumn:name="Spec_Image",type=string,JSONPath=`.spec.image.name`,description="The image spec asks for: another than Image while a rebuild is in flight"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Instance struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired state.
	Spec InstanceSpec `json:"spec"`
	// Status is the observed state.
	// The default is a status the manager has not yet written: observedGeneration 0 tells kstatus
	// (and Flux) that a new object is in progress, not current.
	// +kubebuilder:default={observedGeneration: 0}
	// +optional
	Status InstanceStatus `json:"status,omitempty"`
}

// InstanceList is a list of Instances.
// +kubebuilder:object:root=true
type InstanceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the instances.
	Items []Instance `json:"items"`
}

func init() {
	registerTypes(&Instance{}, &InstanceList{})
}

// EvictionStrategy is what a drain of its node does with an instance.
type EvictionStrategy string

// Eviction strategies.
const (
	// EvictionLiveMigrate moves the instance to another node while it runs.
	EvictionLiveMigrate EvictionStrategy = "LiveMigrate"
	// EvictionNone leaves the instance on its node: the drain waits for a person.
	EvictionNone EvictionStrategy = "None"
)
