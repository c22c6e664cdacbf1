package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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
	// ImagePending: the image service has not started on the image yet.
	ImagePending ImagePhase = "Pending"
	// ImageImporting: the image service copies the bytes from the source into its store and
	// verifies them.
	ImageImporting ImagePhase = "Importing"
	// ImageAvailable: the store holds the verified bytes; instances can boot from them.
	ImageAvailable ImagePhase = "Available"
	// ImageError: the import failed; the Ready condition says why.
	ImageError ImagePhase = "Error"
)

// ImageSource says where an image's bytes come from; exactly one field is set.
// +kubebuilder:validation:XValidation:rule="[has(self.url), has(self.file), has(self.snapshot), has(self.shelvedInstance)].filter(x, x).size() == 1",message="exactly one of url, file, snapshot or shelvedInstance must be set"
type ImageSource struct {
	// URL to download the image from (http or https).
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('http://') || self.startsWith('https://')",message="url must start with http:// or https://"
	// +optional
	URL string `json:"url,omitempty"`

	// File is an absolute path that the image service (the manager) can read, inside one of
	// the directories it imports files from (its --image-source-dirs).
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="file must be an absolute path"
	// +optional
	File string `json:"file,omitempty"`

	// Snapshot names the Snapshot, in the image's namespace, whose upload the bytes are. The
	// Snapshot controller creates such Images; the image service verifies the uploaded bytes
	// as it verifies a download. A ClusterImage cannot have one.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Snapshot string `json:"snapshot,omitempty"`

	// ShelvedInstance names the Instance, in the image's namespace, whose root disk the bytes
	// are, uploaded when it was shelved. The instance controller creates such Images (owned
	// by the instance) and deletes them once the instance is unshelved.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	ShelvedInstance string `json:"shelvedInstance,omitempty"`
}

// ImageSpec describes a bootable disk image, Glance's image.
// +kubebuilder:validation:XValidation:rule="has(self.sha256) || has(self.source.snapshot) || has(self.source.shelvedInstance)",message="sha256 is required for url and file sources"
type ImageSpec struct {
	// Source of the image's bytes; immutable, as Glance image data is.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="an image's source is immutable: create a new Image"
	Source ImageSource `json:"source"`

	// SHA256 is the hex digest the bytes must have; an import that does not match is refused.
	// Required for url and file sources; a snapshot's image gets its digest in status.
	// +kubebuilder:validation:Pattern=`^[a-f0-9]{64}$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="an image's checksum is immutable: create a new Image"
	// +optional
	SHA256 string `json:"sha256,omitempty"`

	// DiskFormat of the bytes.
	// +kubebuilder:default=qcow2
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="an image's disk format is immutable: create a new Image"
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

// ImageStatus is what the image service knows of the image's bytes.
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
	// VirtualSizeBytes is the size of the disk the image holds, as a guest sees it.
	// +optional
	VirtualSizeBytes int64 `json:"virtualSizeBytes,omitempty"`
	// Format is the format the image service found in the bytes.
	// +optional
	Format string `json:"format,omitempty"`
	// SHA256 is the digest of the bytes the store holds, verified by the image service.
	// +optional
	SHA256 string `json:"sha256,omitempty"`
	// Location is the key under which the image store keeps the bytes.
	// +optional
	Location string `json:"location,omitempty"`
	// ImportedAt is when the bytes became available.
	// +optional
	ImportedAt *metav1.Time `json:"importedAt,omitempty"`
	// Conditions: Ready (Available), Reconciling (importing) and Stalled (the import failed), as
	// kstatus reads them.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Image is a bootable disk image that instances of its namespace are built from.
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
	// The default is a status the manager has not yet written: observedGeneration 0 tells kstatus
	// (and Flux) that a new object is in progress, not current.
	// +kubebuilder:default={observedGeneration: 0}
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

// ClusterImage is a bootable disk image that instances of every namespace may boot, Glance's
// public image. It is cluster-scoped, so that only those whom RBAC lets write cluster-scoped
// objects (administrators, by default) publish one, as only Glance's admins may make an image
// public; an Image of one namespace is never visible from another.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cimg,categories=nova
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Format",type=string,JSONPath=`.spec.diskFormat`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterImage struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec describes the image.
	Spec ImageSpec `json:"spec"`
	// Status is what is known of the bytes.
	// The default is a status the manager has not yet written: observedGeneration 0 tells kstatus
	// (and Flux) that a new object is in progress, not current.
	// +kubebuilder:default={observedGeneration: 0}
	// +optional
	Status ImageStatus `json:"status,omitempty"`
}

// ClusterImageList is a list of ClusterImages.
// +kubebuilder:object:root=true
type ClusterImageList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the images.
	Items []ClusterImage `json:"items"`
}

// ImageObject is an Image or a ClusterImage: the image service treats both alike.
// +kubebuilder:object:generate=false
type ImageObject interface {
	// Both halves of controller-runtime's client.Object, spelled out so that this package
	// needs only apimachinery.
	metav1.Object
	runtime.Object
	// ImageSpec returns the object's spec.
	ImageSpec() *ImageSpec
	// ImageStatus returns the object's status.
	ImageStatus() *ImageStatus
}

// ImageSpec returns the image's spec.
func (i *Image) ImageSpec() *ImageSpec { return &i.Spec }

// ImageStatus returns the image's status.
func (i *Image) ImageStatus() *ImageStatus { return &i.Status }

// ImageSpec returns the image's spec.
func (i *ClusterImage) ImageSpec() *ImageSpec { return &i.Spec }

// ImageStatus returns the image's status.
func (i *ClusterImage) ImageStatus() *ImageStatus { return &i.Status }

func init() {
	registerTypes(&Image{}, &ImageList{}, &ClusterImage{}, &ClusterImageList{})
}
