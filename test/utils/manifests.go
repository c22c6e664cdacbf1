package utils

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Render builds one kustomization of config/ (dir relative to it, "default" or "rbac") with
// kustomize's own library, as `kubectl apply -k` would.
func Render(dir string) ([]*unstructured.Unstructured, error) {
	path := filepath.Join(RepoRoot(), "config", dir)
	resources, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), path)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", path, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range resources.Resources() {
		// Through JSON, so that numbers are the int64 and float64 that unstructured objects hold.
		b, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", path, r.CurId(), err)
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("kustomize build %s: %s: %w", path, r.CurId(), err)
		}
		out = append(out, obj)
	}
	return out, nil
}

// Apply applies objects with server-side apply as the field manager kubenova-test; with
// dryRun the API server validates and admits them but stores nothing.
func Apply(ctx context.Context, c client.Client, objects []*unstructured.Unstructured, dryRun bool) error {
	for _, obj := range objects {
		opts := []client.PatchOption{client.FieldOwner("kubenova-test"), client.ForceOwnership}
		if dryRun {
			opts = append(opts, client.DryRunAll)
		}
		if err := applyOne(ctx, c, obj.DeepCopy(), opts); err != nil {
			return fmt.Errorf("apply %s %s/%s: %w", obj.GetKind(), obj.GetNamespace(), obj.GetName(), err)
		}
	}
	return nil
}

// applyOne applies one object, waiting out the moments in which the admission policies'
// dispatcher does not know a kind yet (see admissionKnowsEveryKind).
func applyOne(ctx context.Context, c client.Client, obj *unstructured.Unstructured, opts []client.PatchOption) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		//nolint:staticcheck // client.Apply with an unstructured object is the simplest server-side apply of rendered YAML
		err := c.Patch(ctx, obj, client.Apply, opts...)
		if !apierrors.IsServiceUnavailable(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond) // polling the API server; nothing to wait on instead
	}
}
