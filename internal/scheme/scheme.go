// Package scheme builds the runtime.Scheme every kubenova binary and test uses.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// New returns a scheme that knows the built-in kinds and kubenova's; both binaries use it.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // only a programming error can make registering static types fail
	}
	if err := v1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
