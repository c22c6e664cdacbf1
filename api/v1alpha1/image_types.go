package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DiskFormat is the format of an image's bytes.
// +kubebuilder:validation:Enum=qcow2;raw
type DiskFormat string

// The disk formats kubenova boots.
const (
	DiskFormatQCOW2 DiskFormat = "qcow2"
	DiskFormatRaw   DiskFormat = "raw"
)

// ImagePhase is where an image is in its life.
// +kubebuilder:validation:Enum=Pending;Importing;Available;Error
type ImagePhase string

// The image phases, after Glance's image statuses.
const (
	ImagePending   ImagePhase = "Pending"
	ImageImporting ImagePhase = "Importing"
	ImageAvailable ImagePhase = "Available"
	ImageError     ImagePhase = "Error"
)

// ImageSource says where an image's bytes come from; exactly one field is set.
// +kubebuilder:validation:XValidation:rule="[has(self.url), has(self.file)].filter(x, x).size() == 1",message="exactly one of url or file must be set"
type ImageSource struct {
	// URL to download the image from (http or https).
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('http://') || self.startsWith('https://')",message="url must start with http:// or https://"
	// +optional
	URL string `json:"url,omitempty"`

	// File is an absolute path that every node can read (a shared mount, or the same file
	// placed on every node).
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="file must be an absolute path"
	// +optional
	File string `json:"file,omitempty"`
}

// ImageSpec describes a bootable disk image, Glance's image.
type ImageSpec struct {
	// Source of the image's bytes; immutable, as Glance image data is.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="an image's source is immutable: create a new Image"
	Source ImageSource `json:"source"`

	// SHA256 is the hex digest the bytes must have; a download that does not match is refused.
	// +kubebuilder:validation:Pattern=`^[a-f0-9]{64}$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="an image's checksum is immutable: create a new Image"
	SHA256 string `json:"sha256"`

	// DiskFormat of the bytes.
	// +kubebuilder:default=qcow2
	// +optional
	DiskFormat DiskFormat `json:"diskFormat,omitempty"`

	// MinDiskGiB is the smallest root disk the image boots from.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MinDiskGiB int32 `json:"minDiskGiB,omitempty"`

	// MinMemoryMiB is the least memory the image boots with.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MinMemoryMiB int32 `json:"minMemoryMiB,omitempty"`
}

// ImageStatus is what is known of the image's bytes.
type ImageStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase of the image.
	// +optional
	Phase ImagePhase `json:"phase,omitempty"`
	// SizeBytes is the size of the image file.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// Location is where the image store keeps the bytes.
	// +optional
	Location string `json:"location,omitempty"`
	// Conditions: Ready.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Image is a bootable disk image that instances are built from.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=img,categories=nova
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Format",type=string,JSONPath=`.spec.diskFormat`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Image struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec describes the image.
	Spec ImageSpec `json:"spec"`
	// Status is what is known of the bytes.
	// +optional
	Status ImageStatus `json:"status,omitempty"`
}

// ImageList is a list of Images.
// +kubebuilder:object:root=true
type ImageList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the images.
	Items []Image `json:"items"`
}

func init() {
	registerTypes(&Image{}, &ImageList{})
}
