package agent

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/storage"
)

// The storage root is checked against the ID recorded in the node's Hypervisor
// (status.storageID) before the agent works with its files: at every report, before every
// sweep, and (cheaply, from what the last check accepted) before every task.

// storageRecheck is how often a task waiting for a refused storage root looks again.
const storageRecheck = 10 * time.Second

// Reasons of the Events on a Hypervisor whose storage root is refused, and accepted again.
const (
	ReasonStorageUnavailable = "StorageUnavailable"
	ReasonStorageAvailable   = "StorageAvailable"
)

// checkStorage verifies the storage root against hv's record, records the root's ID when
// nothing did before (the node's first start), and says in hv's status why the root is refused,
// if it is. It never replaces a record: an administrator who moved the node to new storage
// clears status.storageID.
func (r *Reporter) checkStorage(hv *v1.Hypervisor) {
	s := &hv.Status
	id, err := r.Storage.Verify(s.StorageID)
	was := s.StorageUnavailable
	if err != nil {
		s.StorageUnavailable = err.Error()
		if was != s.StorageUnavailable && r.Recorder != nil {
			r.Recorder.Eventf(hv, nil, corev1.EventTypeWarning, ReasonStorageUnavailable, "CheckStorage",
				"%s; no task runs and no file is removed on this node until it is back", s.StorageUnavailable)
		}
		return
	}
	s.StorageID, s.StorageUnavailable = id, ""
	if was != "" && r.Recorder != nil {
		r.Recorder.Eventf(hv, nil, corev1.EventTypeNormal, ReasonStorageAvailable, "CheckStorage", "the storage root %s is storage %s again", r.Storage.Root, id)
	}
}

// verifyStorage checks the root against the Hypervisor's record, for a caller that must not
// wait for the next report (the first task after a start, a sweep).
func verifyStorage(ctx context.Context, reader client.Reader, own *storage.Node, node string) error {
	hv := &v1.Hypervisor{}
	err := reader.Get(ctx, types.NamespacedName{Name: node}, hv)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	_, err = own.Verify(hv.Status.StorageID)
	return err
}

// storageReady says whether the instance reconciler may carry out tasks now, checking the
// root first if nothing has since the agent started.
func (r *InstanceReconciler) storageReady(ctx context.Context) error {
	err := r.Storage.Ready()
	if errors.Is(err, storage.ErrStorageUnverified) {
		if verr := verifyStorage(ctx, r.Reader, r.Storage, r.NodeName); verr != nil {
			return verr
		}
		err = r.Storage.Ready()
	}
	return err
}
