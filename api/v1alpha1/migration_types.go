package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MigrationType is how an instance moves.
// +kubebuilder:validation:Enum=Cold;Live;Evacuate
type MigrationType string

// The migration types of Nova's migrations table.
const (
	// MigrationCold stops the instance, moves its disk and starts it on the target.
	MigrationCold MigrationType = "Cold"
	// MigrationLive moves a running instance without stopping it.
	MigrationLive MigrationType = "Live"
	// MigrationEvacuate rebuilds the instance elsewhere after its node failed and was fenced.
	MigrationEvacuate MigrationType = "Evacuate"
)

// BlockMigration says whether a live migration copies the disk.
// +kubebuilder:validation:Enum=Auto;Enabled;Disabled
type BlockMigration string

// The block migration modes.
const (
	// BlockMigrationAuto copies the disk unless source and target share storage.
	BlockMigrationAuto     BlockMigration = "Auto"
	BlockMigrationEnabled  BlockMigration = "Enabled"
	BlockMigrationDisabled BlockMigration = "Disabled"
)

// MigrationPhase is where a migration is.
// +kubebuilder:validation:Enum=Pending;Scheduling;Preparing;Migrating;Finalizing;Succeeded;Failed
type MigrationPhase string

// The migration phases.
const (
	MigrationPending    MigrationPhase = "Pending"
	MigrationScheduling MigrationPhase = "Scheduling"
	MigrationPreparing  MigrationPhase = "Preparing"
	MigrationMigrating  MigrationPhase = "Migrating"
	MigrationFinalizing MigrationPhase = "Finalizing"
	MigrationSucceeded  MigrationPhase = "Succeeded"
	MigrationFailed     MigrationPhase = "Failed"
)

// MigrationSpec asks for an instance to move.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a migration's spec is immutable: delete it to abort, create a new one to retry"
// +kubebuilder:validation:XValidation:rule="self.type == 'Live' || !has(self.blockMigration) || self.blockMigration == 'Auto'",message="blockMigration applies to Live migrations only"
type MigrationSpec struct {
	// InstanceName is the instance to move, in the migration's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	InstanceName string `json:"instanceName"`

	// Type of migration.
	Type MigrationType `json:"type"`

	// TargetNode to move to; empty lets the scheduler choose a node other than the source.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	TargetNode string `json:"targetNode,omitempty"`

	// BlockMigration for live migrations.
	// +kubebuilder:default=Auto
	// +optional
	BlockMigration BlockMigration `json:"blockMigration,omitempty"`

	// OverrideLock moves a locked instance. Only administrators may set it (the admission
	// policy config/admission/override-lock.yaml); otherwise a locked instance's migration
	// fails with reason Locked, as Nova's does.
	// +optional
	OverrideLock bool `json:"overrideLock,omitempty"`
}

// MigrationStatus is the progress and outcome of a migration.
type MigrationStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase of the migration.
	// +optional
	Phase MigrationPhase `json:"phase,omitempty"`
	// SourceNode the instance leaves.
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// TargetNode the instance goes to.
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// StartTime is when the migration started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// CompletionTime is when it succeeded or failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// BlockMigration says whether the disks are copied (true) or shared by both nodes.
	// +optional
	BlockMigration bool `json:"blockMigration,omitempty"`
	// RebuiltFromImage says that an evacuation rebuilt the root disk from the instance's image,
	// the source not sharing its storage with the target: the disk's data was lost.
	// +optional
	RebuiltFromImage bool `json:"rebuiltFromImage,omitempty"`
	// ProgressPercent of the data copied.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	// +optional
	ProgressPercent int32 `json:"progressPercent,omitempty"`
	// DataTotalBytes to copy, as libvirt counts them (memory, and disks in a block migration).
	// +optional
	DataTotalBytes int64 `json:"dataTotalBytes,omitempty"`
	// DataRemainingBytes still to copy.
	// +optional
	DataRemainingBytes int64 `json:"dataRemainingBytes,omitempty"`
	// DowntimeMillis the guest was paused for (live migrations), from libvirt's job statistics.
	// +optional
	DowntimeMillis int64 `json:"downtimeMillis,omitempty"`
	// TotalMillis the migration took.
	// +optional
	TotalMillis int64 `json:"totalMillis,omitempty"`
	// Reason is a CamelCase code for the outcome (MigrationSucceeded, InstanceNotFound,
	// MigrationInProgress, Aborted, ...).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message explains the outcome.
	// +optional
	Message string `json:"message,omitempty"`
	// Conditions: Ready, Reconciling and Stalled (as kstatus reads them).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Migration moves an instance to another node, and records how it went.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mig,categories=nova
// +kubebuilder:printcolumn:name="Instance",type=string,JSONPath=`.spec.instanceName`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.status.sourceNode`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.targetNode`
// +kubebuilder:printcolumn:name="Progress",type=integer,JSONPath=`.status.progressPercent`,priority=1
// +kubebuilder:printcolumn:name="Downtime_ms",type=integer,JSONPath=`.status.downtimeMillis`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Migration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says what to move and how.
	Spec MigrationSpec `json:"spec"`
	// Status is the progress.
	// The default is a status the manager has not yet written: observedGeneration 0 tells kstatus
	// (and Flux) that a new object is in progress, not current.
	// +kubebuilder:default={observedGeneration: 0}
	// +optional
	Status MigrationStatus `json:"status,omitempty"`
}

// MigrationList is a list of Migrations.
// +kubebuilder:object:root=true
type MigrationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the migrations.
	Items []Migration `json:"items"`
}

func init() {
	registerTypes(&Migration{}, &MigrationList{})
}
