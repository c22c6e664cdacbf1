// Package kube holds the few API-writing helpers that the manager and the agent share.
package kube

import (
	"context"
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// ErrStale says a status write lost a race: the object changed (or went) since it was read.
var ErrStale = errors.New("the object changed since it was read")

// PatchStatus writes obj's status as a merge patch over orig, only over the version orig was
// read at. Manager and agent both write an Instance's status, each its own fields; the
// version check makes a decision taken on stale data fail instead of land, and the caller
// then simply reconciles again on fresh data. It returns ErrStale in that case.
func PatchStatus(ctx context.Context, c client.Client, orig, obj client.Object) error {
	err := c.Status().Patch(ctx, obj, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return ErrStale
	}
	return err
}
