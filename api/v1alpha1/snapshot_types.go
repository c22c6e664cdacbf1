package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SnapshotPhase is where a snapshot is in its life.
// +kubebuilder:validation:Enum=Pending;Snapshotting;Uploading;Succeeded;Failed
type SnapshotPhase string

// The snapshot phases, after Nova's image_snapshot task states.
const (
	SnapshotPending      SnapshotPhase = "Pending"
	SnapshotSnapshotting SnapshotPhase = "Snapshotting"
	SnapshotUploading    SnapshotPhase = "Uploading"
	SnapshotSucceeded    SnapshotPhase = "Succeeded"
	SnapshotFailed       SnapshotPhase = "Failed"
)

// SnapshotSpec asks for an instance's root disk to be saved as a new, standalone Image.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a snapshot's spec is immutable: create a new Snapshot"
type SnapshotSpec struct {
	// InstanceName is the instance to snapshot, in the snapshot's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	InstanceName string `json:"instanceName"`

	// ImageName is the Image to create; empty means the snapshot's own name.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	ImageName string `json:"imageName,omitempty"`

	// DeleteImageWithSnapshot deletes the Image when this Snapshot is deleted; by default the
	// Image outlives the Snapshot.
	// +optional
	DeleteImageWithSnapshot bool `json:"deleteImageWithSnapshot,omitempty"`

	// OverrideLock snapshots the instance even when it is locked, as Nova's administrators may.
	// Only administrators may set it (config/admission/override-lock.yaml).
	// +optional
	OverrideLock bool `json:"overrideLock,omitempty"`
}

// SnapshotStatus is the progress of a snapshot.
type SnapshotStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase of the snapshot.
	// +optional
	Phase SnapshotPhase `json:"phase,omitempty"`
	// ImageName is the Image this snapshot created.
	// +optional
	ImageName string `json:"imageName,omitempty"`
	// ImageUID is the UID of that Image, the key its bytes are uploaded under.
	// +optional
	ImageUID string `json:"imageUID,omitempty"`
	// SizeBytes of the saved image.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// StartTime is when the snapshot started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// CompletionTime is when it succeeded or failed.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Message explains a failure.
	// +optional
	Message string `json:"message,omitempty"`
	// Conditions: Ready (Succeeded), Reconciling (in progress) and Stalled (Failed), as kstatus
	// reads them.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Snapshot is a request to save an instance's disk as an Image, and the record of it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=snap,categories=nova
// +kubebuilder:printcolumn:name="Instance",type=string,JSONPath=`.spec.instanceName`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.status.imageName`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Snapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says what to snapshot.
	Spec SnapshotSpec `json:"spec"`
	// Status is the progress.
	// The default is a status the manager has not yet written: observedGeneration 0 tells kstatus
	// (and Flux) that a new object is in progress, not current.
	// +kubebuilder:default={observedGeneration: 0}
	// +optional
	Status SnapshotStatus `json:"status,omitempty"`
}

// SnapshotList is a list of Snapshots.
// +kubebuilder:object:root=true
type SnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the snapshots.
	Items []Snapshot `json:"items"`
}

func init() {
	registerTypes(&Snapshot{}, &SnapshotList{})
}
