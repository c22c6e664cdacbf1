package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// FlavorSpec sizes an instance. Like Nova's flavors it is immutable: make a new Flavor instead.
type FlavorSpec struct {
	// VCPUs is the number of virtual CPUs.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	VCPUs int32 `json:"vcpus"`

	// MemoryMiB is the guest's memory in MiB.
	// +kubebuilder:validation:Minimum=16
	// +kubebuilder:validation:Maximum=16777216
	MemoryMiB int32 `json:"memoryMiB"`

	// DiskGiB is the size of the root disk in GiB; 0 keeps the image's own size, as in Nova.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65536
	// +optional
	DiskGiB int32 `json:"diskGiB,omitempty"`

	// ExtraSpecs are free-form hints for the scheduler and the driver, as Nova's extra_specs.
	// +optional
	ExtraSpecs map[string]string `json:"extraSpecs,omitempty"`
}

// Flavor is a named size for instances (cluster-scoped, as Nova's flavors are global).
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=flv,categories=nova
// +kubebuilder:printcolumn:name="VCPUs",type=integer,JSONPath=`.spec.vcpus`
// +kubebuilder:printcolumn:name="Memory_MiB",type=integer,JSONPath=`.spec.memoryMiB`
// +kubebuilder:printcolumn:name="Disk_GiB",type=integer,JSONPath=`.spec.diskGiB`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Flavor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the flavor's sizing; immutable.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a flavor's spec is immutable, as in Nova: create a new Flavor and resize instances to it"
	Spec FlavorSpec `json:"spec"`
}

// FlavorList is a list of Flavors.
// +kubebuilder:object:root=true
type FlavorList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the flavors.
	Items []Flavor `json:"items"`
}

func init() {
	registerTypes(&Flavor{}, &FlavorList{})
}
