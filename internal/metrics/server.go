package metrics

import (
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// ServerOptions serves the metrics the way kubebuilder's projects do: over HTTPS (a
// self-signed certificate unless one is mounted), each scrape authenticated with a TokenReview
// and authorized with a SubjectAccessReview, so that the endpoint tells nothing to callers
// without the kubenova-metrics-reader role. secure false serves plain HTTP to anyone (for a
// laptop). The process needs RBAC to create tokenreviews and subjectaccessreviews.
func ServerOptions(addr string, secure bool) metricsserver.Options {
	opts := metricsserver.Options{BindAddress: addr, SecureServing: secure}
	if secure {
		opts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return opts
}
