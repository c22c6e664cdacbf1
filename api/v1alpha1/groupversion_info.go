// Package v1alpha1 holds the kubenova compute API: Instance, Flavor, Image, Snapshot, Migration
// and Hypervisor, the Kubernetes counterparts of Nova's servers, flavors, Glance images,
// snapshots, migrations and compute services.
// +kubebuilder:object:generate=true
// +groupName=compute.kubenova.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "compute.kubenova.io", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the kinds of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
