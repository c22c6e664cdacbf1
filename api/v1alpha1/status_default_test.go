package v1alpha1_test

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestNewObjectsAreInProgressToKstatus: before the manager writes a status, the API server's
// default status (observedGeneration 0) makes kstatus, and Flux's health checks through it,
// read a new object as in progress rather than current.
func TestNewObjectsAreInProgressToKstatus(t *testing.T) {
	ctx := context.Background()
	for _, manifest := range []string{`
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: fresh, namespace: default}
spec: {flavor: small, image: {name: cirros}}`, `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: fresh, namespace: default}
spec: {source: {url: "http://images.example/cirros.qcow2"}, diskFormat: qcow2, sha256: ` + sha + `}`, `
apiVersion: compute.kubenova.io/v1alpha1
kind: ClusterImage
metadata: {name: fresh}
spec: {source: {url: "http://images.example/cirros.qcow2"}, diskFormat: qcow2, sha256: ` + sha + `}`, `
apiVersion: compute.kubenova.io/v1alpha1
kind: Snapshot
metadata: {name: fresh, namespace: default}
spec: {instanceName: web}`, `
apiVersion: compute.kubenova.io/v1alpha1
kind: Migration
metadata: {name: fresh, namespace: default}
spec: {instanceName: web, type: Cold}`} {
		obj := object(t, manifest)
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatalf("%s: %v", obj.GetKind(), err)
		}
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(obj.GroupVersionKind())
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), got); err != nil {
			t.Fatal(err)
		}
		res, err := status.Compute(got)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != status.InProgressStatus {
			t.Errorf("%s as created: kstatus says %s (%s), want InProgress", obj.GetKind(), res.Status, res.Message)
		}
		if err := env.Client.Delete(ctx, got); err != nil {
			t.Fatal(err)
		}
	}
}
