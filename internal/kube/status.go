// Package kube holds the few API-writing helpers that the manager and the agent share.
package kube

import (
	"context"
	"errors"
	"reflect"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kubenova/kubenova/internal/metrics"
)

// ErrStale says a status write lost a race: the object changed (or went) since it was read.
var ErrStale = errors.New("the object changed since it was read")

// StaleRetry is how soon a reconcile whose write lost a race runs again, on fresh data.
const StaleRetry = 200 * time.Millisecond

// Changed says whether a reconcile changed the object it read as orig. Reconcilers change only
// status in memory, so this is whether a status write is due.
func Changed(orig, obj client.Object) bool {
	return !equality.Semantic.DeepEqual(orig, obj)
}

// PatchStatus writes obj's status as a merge patch over orig, only if it changed and only over
// the version orig was read at. Manager and agent both write an
// Instance's status, each its own fields; the version check makes a decision taken on stale
// data fail instead of land, and the caller then simply reconciles again on fresh data. It
// returns ErrStale in that case.
func PatchStatus(ctx context.Context, c client.Client, orig, obj client.Object) error {
	if !Changed(orig, obj) {
		return nil
	}
	err := c.Status().Patch(ctx, obj, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	kind := reflect.TypeOf(obj).Elem().Name()
	switch {
	case apierrors.IsConflict(err):
		metrics.StatusWrites.WithLabelValues(kind, "Conflict").Inc()
		return ErrStale
	case apierrors.IsNotFound(err):
		metrics.StatusWrites.WithLabelValues(kind, "NotFound").Inc()
		return ErrStale
	case err != nil:
		metrics.StatusWrites.WithLabelValues(kind, "Error").Inc()
		return err
	}
	metrics.StatusWrites.WithLabelValues(kind, "Written").Inc()
	return nil
}

// RetryIfStale returns the reconcile's result, except that a write which lost a race is no
// error: the reconcile runs again after StaleRetry.
func RetryIfStale(result ctrl.Result, err error) (ctrl.Result, error) {
	if errors.Is(err, ErrStale) {
		return ctrl.Result{RequeueAfter: StaleRetry}, nil
	}
	return result, err
}
