// Package v1alpha1 holds the kubenova compute API: Instance, Flavor, Image, Snapshot, Migration
// and Hypervisor, the Kubernetes counterparts of Nova's servers, flavors, Glance images,
// snapshots, migrations and compute services.
// +kubebuilder:object:generate=true
// +groupName=compute.kubenova.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "compute.kubenova.io", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})

	// AddToScheme adds the kinds of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// registerTypes adds kinds of this package to SchemeBuilder; each kind's file calls it.
func registerTypes(objects ...runtime.Object) {
	SchemeBuilder.Register(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, objects...)
		return nil
	})
}
