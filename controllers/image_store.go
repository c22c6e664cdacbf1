package controllers

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kubenova/kubenova/internal/imagestore"
)

// The image store's identity: recorded once in the cluster, so that the store's directory
// showing up empty later (an NFS mount not there yet) reads as "unavailable", never as "a new,
// empty store" that would make every image lost and take uploads into the wrong filesystem.

// ImageStoreConfigMap is the ConfigMap of the system namespace that records the identity of
// the image store (data key "id"); the manager writes it at its first start.
const ImageStoreConfigMap = "kubenova-image-store"

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;create,namespace=kubenova-system

// EnsureImageStoreIdentity sets store.ID to the identity the cluster recorded for its image
// store. At the installation's first start (no record) it adopts the identity the directory
// has, or creates one, and records it. Later starts never create one: the store's calls fail
// with imagestore.ErrUnavailable until the recorded store is back under its path.
func EnsureImageStoreIdentity(ctx context.Context, c client.Client, namespace string, store *imagestore.Dir) error {
	key := client.ObjectKey{Namespace: namespace, Name: ImageStoreConfigMap}
	recorded := &corev1.ConfigMap{}
	err := c.Get(ctx, key, recorded)
	if err == nil {
		return adoptRecordedIdentity(recorded, store)
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("read the image store's recorded identity: %w", err)
	}
	id, err := store.Identify()
	if errors.Is(err, imagestore.ErrUnavailable) {
		id, err = store.Create(string(uuid.NewUUID()))
	}
	if err != nil {
		return fmt.Errorf("create the image store at %s: %w", store.Root, err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: ImageStoreConfigMap},
		Data: map[string]string{"id": id, "path": store.Root}}
	err = c.Create(ctx, cm)
	if apierrors.IsAlreadyExists(err) {
		// Another manager recorded it first.
		if err := c.Get(ctx, key, recorded); err != nil {
			return fmt.Errorf("read the image store's recorded identity: %w", err)
		}
		return adoptRecordedIdentity(recorded, store)
	}
	if err != nil {
		return fmt.Errorf("record the image store's identity: %w", err)
	}
	store.ID = id
	return nil
}

func adoptRecordedIdentity(cm *corev1.ConfigMap, store *imagestore.Dir) error {
	id := cm.Data["id"]
	if id == "" {
		return fmt.Errorf("ConfigMap %s/%s records no image store identity (data key \"id\")", cm.Namespace, cm.Name)
	}
	store.ID = id
	return nil
}
