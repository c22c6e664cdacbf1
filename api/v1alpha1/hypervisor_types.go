package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// HypervisorState says whether a hypervisor's agent is alive, as Nova's service state up/down.
// +kubebuilder:validation:Enum=Up;Down
type HypervisorState string

// The hypervisor states.
const (
	HypervisorUp   HypervisorState = "Up"
	HypervisorDown HypervisorState = "Down"
)

// VirtType is the libvirt domain type a node runs guests with.
// +kubebuilder:validation:Enum=kvm;qemu
type VirtType string

// The virt types: KVM where /dev/kvm works, TCG (qemu) otherwise.
const (
	VirtTypeKVM  VirtType = "kvm"
	VirtTypeQEMU VirtType = "qemu"
)

// HypervisorSpec is what an administrator sets on a compute node. The agent creates the object
// and never writes its spec.
type HypervisorSpec struct {
	// Disabled keeps the scheduler from placing new instances here (nova service-disable).
	// +optional
	Disabled bool `json:"disabled,omitempty"`

	// DisabledReason says why.
	// +kubebuilder:validation:MaxLength=255
	// +optional
	DisabledReason string `json:"disabledReason,omitempty"`

	// ForcedDown fences the node: the administrator asserts that nothing runs there any more, so
	// its instances may be evacuated (nova service-force-down).
	// +optional
	ForcedDown bool `json:"forcedDown,omitempty"`

	// CPUAllocationRatio is how many vCPUs may be placed per physical CPU.
	// +kubebuilder:default="16.0"
	// +kubebuilder:validation:Pattern=`^[0-9]+(\.[0-9]+)?$`
	// +kubebuilder:validation:XValidation:rule="double(self) > 0.0",message="cpuAllocationRatio must be greater than 0"
	// +optional
	CPUAllocationRatio string `json:"cpuAllocationRatio,omitempty"`

	// MemoryAllocationRatio is how much guest memory may be placed per MiB of host memory.
	// +kubebuilder:default="1.5"
	// +kubebuilder:validation:Pattern=`^[0-9]+(\.[0-9]+)?$`
	// +kubebuilder:validation:XValidation:rule="double(self) > 0.0",message="memoryAllocationRatio must be greater than 0"
	// +optional
	MemoryAllocationRatio string `json:"memoryAllocationRatio,omitempty"`

	// DiskAllocationRatio is how much root disk may be placed per GiB of storage.
	// +kubebuilder:default="1.0"
	// +kubebuilder:validation:Pattern=`^[0-9]+(\.[0-9]+)?$`
	// +kubebuilder:validation:XValidation:rule="double(self) > 0.0",message="diskAllocationRatio must be greater than 0"
	// +optional
	DiskAllocationRatio string `json:"diskAllocationRatio,omitempty"`
}

// Resources is an amount of the three resources the scheduler counts.
type Resources struct {
	// VCPUs is a number of virtual CPUs. Each amount is optional (zero when absent), so that a
	// merge patch of one of them is a valid object.
	// +optional
	VCPUs int64 `json:"vcpus,omitempty"`
	// MemoryMiB is memory in MiB.
	// +optional
	MemoryMiB int64 `json:"memoryMiB,omitempty"`
	// DiskGiB is disk in GiB.
	// +optional
	DiskGiB int64 `json:"diskGiB,omitempty"`
}

// ConsoleLogService is a node agent's HTTPS endpoint for console logs. Its certificate is its
// own, self-signed: the manager trusts exactly the one whose digest is published here, which only
// that node's agent may write.
type ConsoleLogService struct {
	// URL is the service's base URL.
	// +kubebuilder:validation:Pattern=`^https://[^/?#]+$`
	// +kubebuilder:validation:MaxLength=256
	URL string `json:"url"`
	// CertificateSHA256 is the SHA-256 digest of the service's certificate (DER), in lower-case
	// hex.
	// +kubebuilder:validation:Pattern=`^[0-9a-f]{64}$`
	CertificateSHA256 string `json:"certificateSHA256"`
}

// MaxReportedQuarantined bounds the quarantined instances a Hypervisor's status lists.
const MaxReportedQuarantined = 100

// QuarantinedInstance is one vanished instance's files, kept on the node's storage.
type QuarantinedInstance struct {
	// UID is the vanished instance's; its files are under <storageRoot>/quarantine/<uid>.
	UID string `json:"uid"`
	// Namespace and Name are the instance's, as its files recorded them (empty for files made
	// before owners were recorded).
	// +optional
	Namespace string `json:"namespace,omitempty"`
	// +optional
	Name string `json:"name,omitempty"`
	// Reason says why they were set aside.
	Reason string `json:"reason"`
	// Since is when they were.
	Since metav1.Time `json:"since"`
	// Bytes is the space they take.
	Bytes int64 `json:"bytes"`
}

// HypervisorStatus is split between its two writers: the agent reports what the node has
// (capacity, versions, URIs); the manager reports what is placed there and whether it is up.
type HypervisorStatus struct {
	// Capacity is what the node has (agent).
	// +optional
	Capacity Resources `json:"capacity,omitempty"`
	// Reserved is held back for the host itself (agent).
	// +optional
	Reserved Resources `json:"reserved,omitempty"`
	// VirtType the agent runs guests with (agent).
	// +optional
	VirtType VirtType `json:"virtType,omitempty"`
	// VirtTypeReason says why the agent chose VirtType (--virt-type, or what "auto" found).
	// +optional
	VirtTypeReason string `json:"virtTypeReason,omitempty"`
	// LibvirtVersion of the node's libvirtd (agent).
	// +optional
	LibvirtVersion string `json:"libvirtVersion,omitempty"`
	// QEMUVersion of the node's hypervisor (agent).
	// +optional
	QEMUVersion string `json:"qemuVersion,omitempty"`
	// HostUUID is libvirt's host UUID (agent).
	// +optional
	HostUUID string `json:"hostUUID,omitempty"`
	// MigrationURI is the libvirt URI other nodes migrate to (agent).
	// +optional
	MigrationURI string `json:"migrationURI,omitempty"`
	// StorageRoot is the directory instance disks live under (agent).
	// +optional
	StorageRoot string `json:"storageRoot,omitempty"`
	// StorageShared says the storage root is on storage other nodes mount too (NFS, CephFS), as
	// the agent's --shared-storage declares (agent). Live migration between two nodes that
	// share it moves only memory.
	// +optional
	StorageShared bool `json:"storageShared,omitempty"`
	// StorageID identifies the filesystem the storage root is on, from a file the first agent
	// to use it wrote there: nodes with the same ID see the same disks (agent).
	// +optional
	StorageID string `json:"storageID,omitempty"`
	// StorageUnavailable says why the agent refuses its storage root, empty while the root is
	// the filesystem recorded in StorageID: a root without that ID (not mounted) or with
	// another. The agent carries out no task and removes no file there meanwhile, and nothing
	// is placed on the node (agent).
	// +optional
	StorageUnavailable string `json:"storageUnavailable,omitempty"`
	// AgentVersion is the agent's build (agent).
	// +optional
	AgentVersion string `json:"agentVersion,omitempty"`
	// Networks are the networks this node has, which instances' NICs may be plugged into
	// (agent).
	// +optional
	Networks []HypervisorNetwork `json:"networks,omitempty"`
	// ConsoleLogService is where the agent serves its guests' serial console logs, to the
	// manager only, which relays them to users (agent).
	// +optional
	ConsoleLogService *ConsoleLogService `json:"consoleLogService,omitempty"`
	// Quarantined are the instance files the agent set aside instead of deleting: those of
	// instances that vanished from the API without their own terminate (a finalizer removed by
	// hand, an etcd restored from backup, objects recreated with new UIDs). They are kept until
	// the agent's --quarantine-grace ends or an administrator removes them; the oldest
	// MaxReportedQuarantined are listed (agent).
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=100
	// +optional
	Quarantined []QuarantinedInstance `json:"quarantined,omitempty"`
	// QuarantinedCount is how many instance directories the quarantine holds, listed or not
	// (agent).
	// +optional
	QuarantinedCount int32 `json:"quarantinedCount,omitempty"`

	// ObservedGeneration is the spec generation the manager last judged (manager).
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Allocated is the sum of the flavors of the instances placed here (manager).
	// +optional
	Allocated Resources `json:"allocated,omitempty"`
	// Instances placed here (manager).
	// +optional
	Instances int32 `json:"instances,omitempty"`
	// State is Up while the agent renews its lease (manager).
	// +optional
	State HypervisorState `json:"state,omitempty"`
	// Conditions: Ready (manager).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Hypervisor is one compute node as Nova sees it: its capacity, what is placed on it, and
// whether its agent is alive. Named after the node.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=hv,categories=nova
// +kubebuilder:printcolumn:name="State",type=string,JSONPath=`.status.state`
// +kubebuilder:printcolumn:name="Disabled",type=boolean,JSONPath=`.spec.disabled`
// +kubebuilder:printcolumn:name="Forced_Down",type=boolean,JSONPath=`.spec.forcedDown`
// +kubebuilder:printcolumn:name="Virt",type=string,JSONPath=`.status.virtType`
// +kubebuilder:printcolumn:name="VCPUs",type=integer,JSONPath=`.status.capacity.vcpus`
// +kubebuilder:printcolumn:name="VCPUs_Used",type=integer,JSONPath=`.status.allocated.vcpus`
// +kubebuilder:printcolumn:name="Memory_MiB",type=integer,JSONPath=`.status.capacity.memoryMiB`
// +kubebuilder:printcolumn:name="Memory_Used",type=integer,JSONPath=`.status.allocated.memoryMiB`
// +kubebuilder:printcolumn:name="Instances",type=integer,JSONPath=`.status.instances`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Hypervisor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the administrator's settings.
	// +kubebuilder:default={}
	// +optional
	Spec HypervisorSpec `json:"spec,omitempty"`
	// Status is the node's report and the manager's bookkeeping.
	// +optional
	Status HypervisorStatus `json:"status,omitempty"`
}

// HypervisorList is a list of Hypervisors.
// +kubebuilder:object:root=true
type HypervisorList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the hypervisors.
	Items []Hypervisor `json:"items"`
}

func init() {
	registerTypes(&Hypervisor{}, &HypervisorList{})
}
