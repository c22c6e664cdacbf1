package controllers

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A GitOps sync applies an Instance and the Snapshot or Migration that names it in one go, in
// any order. A Snapshot or Migration whose instance does not exist yet therefore waits for it,
// with reason InstanceNotFound, for a bounded time (the manager's --missing-instance-timeout),
// and only then fails.

// DefaultMissingInstanceTimeout is how long a Snapshot or Migration waits for its instance by
// default: long enough for a sync that applies many objects, short enough that a typo is told.
const DefaultMissingInstanceTimeout = 5 * time.Minute

// missingInstance says, for an object created at created that names an instance that does not
// exist, how much longer it waits (0: it fails now) and what to say either way.
func missingInstance(created metav1.Time, now time.Time, timeout time.Duration, namespace, name string) (time.Duration, string) {
	if timeout <= 0 {
		timeout = DefaultMissingInstanceTimeout
	}
	deadline := created.Add(timeout)
	if left := deadline.Sub(now); left > 0 {
		return left, fmt.Sprintf("instance %s does not exist in namespace %s yet; waiting for it until %s",
			name, namespace, deadline.UTC().Format(time.RFC3339))
	}
	return 0, fmt.Sprintf("instance %s does not exist in namespace %s (waited %s for it)", name, namespace, timeout)
}
