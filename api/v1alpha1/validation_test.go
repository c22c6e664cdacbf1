package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kubenova/kubenova/test/utils"
)

var env *utils.Env

func TestMain(m *testing.M) {
	var err error
	env, err = utils.StartEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

func object(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &u.Object); err != nil {
		t.Fatalf("bad test manifest: %v", err)
	}
	return u
}

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestInvalidManifestsAreRefused applies manifests a person might get wrong and checks that the
// API server refuses each with a message that names the problem.
func TestInvalidManifestsAreRefused(t *testing.T) {
	cases := []struct {
		name, manifest, wantMessage string
	}{
		{"negative vcpus", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Flavor
metadata: {name: bad-vcpus}
spec: {vcpus: -1, memoryMiB: 512}`, "spec.vcpus: Invalid value: -1: spec.vcpus in body should be greater than or equal to 1"},
		{"tiny memory", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Flavor
metadata: {name: bad-mem}
spec: {vcpus: 1, memoryMiB: 0}`, "spec.memoryMiB"},
		{"negative disk", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Flavor
metadata: {name: bad-disk}
spec: {vcpus: 1, memoryMiB: 512, diskGiB: -5}`, "spec.diskGiB"},
		{"unknown power state", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-power, namespace: default}
spec: {flavor: m1.tiny, image: {name: cirros}, powerState: Hibernated}`, `Unsupported value: "Hibernated"`},
		{"reboot type that does not exist", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-reboot, namespace: default}
spec:
  flavor: m1.tiny
  image: {name: cirros}
  rebootRequest: {type: Medium, requestedAt: "2026-11-25T10:00:00Z"}`, `spec.rebootRequest.type: Unsupported value: "Medium"`},
		{"reboot without a stamp", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-reboot2, namespace: default}
spec:
  flavor: m1.tiny
  image: {name: cirros}
  rebootRequest: {type: Hard}`, "spec.rebootRequest.requestedAt: Required value"},
		{"no flavor", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: no-flavor, namespace: default}
spec: {image: {name: cirros}}`, "spec.flavor: Required value"},
		{"lock reason without lock", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-lock, namespace: default}
spec: {flavor: m1.tiny, image: {name: cirros}, lockedReason: audit}`, "lockedReason may only be set when locked is true"},
		{"image with two sources", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: two-sources, namespace: default}
spec: {source: {url: "http://example.test/a.qcow2", file: /srv/a.qcow2}, sha256: ` + sha + `}`, "exactly one of url, file, snapshot or shelvedInstance must be set"},
		{"an image without a checksum", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: no-sum, namespace: default}
spec: {source: {url: "http://example.test/a.qcow2"}}`, "sha256 is required for url and file sources"},
		{"image from ftp", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: ftp, namespace: default}
spec: {source: {url: "ftp://example.test/a.qcow2"}, sha256: ` + sha + `}`, "url must start with http:// or https://"},
		{"image with a relative file", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: relative, namespace: default}
spec: {source: {file: images/a.qcow2}, sha256: ` + sha + `}`, "file must be an absolute path"},
		{"image with a bad checksum", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: badsum, namespace: default}
spec: {source: {file: /srv/a.qcow2}, sha256: "xyz"}`, "spec.sha256"},
		{"image in an unknown format", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: vmdk, namespace: default}
spec: {source: {file: /srv/a.vmdk}, sha256: ` + sha + `, diskFormat: vmdk}`, `Unsupported value: "vmdk"`},
		{"migration of an unknown type", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Migration
metadata: {name: teleport, namespace: default}
spec: {instanceName: web, type: Teleport}`, `Unsupported value: "Teleport"`},
		{"block migration of a cold migration", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Migration
metadata: {name: cold-block, namespace: default}
spec: {instanceName: web, type: Cold, blockMigration: Enabled}`, "blockMigration applies to Live migrations only"},
		{"zero allocation ratio", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Hypervisor
metadata: {name: node-x}
spec: {cpuAllocationRatio: "0"}`, "cpuAllocationRatio must be greater than 0"},
		{"two NICs with one MAC", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-macs, namespace: default}
spec:
  flavor: m1.tiny
  image: {name: cirros}
  networks:
  - {network: provider, macAddress: "fa:16:3e:00:00:01"}
  - {network: storage, macAddress: "FA:16:3E:00:00:01"}`, "two NICs have the same macAddress"},
		{"a multicast MAC", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-mac, namespace: default}
spec:
  flavor: m1.tiny
  image: {name: cirros}
  networks: [{network: provider, macAddress: "01:00:5e:00:00:01"}]`, "spec.networks[0].macAddress"},
		{"a network name that is not a label", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: bad-net, namespace: default}
spec:
  flavor: m1.tiny
  image: {name: cirros}
  networks: [{network: "Provider Net"}]`, "spec.networks[0].network"},
		{"allocation ratio that is not a number", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Hypervisor
metadata: {name: node-y}
spec: {memoryAllocationRatio: "lots"}`, "spec.memoryAllocationRatio"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := env.Client.Create(context.Background(), object(t, c.manifest))
			if err == nil {
				t.Fatalf("the API server accepted an invalid manifest")
			}
			if !strings.Contains(err.Error(), c.wantMessage) {
				t.Fatalf("refused, but the message does not say %q:\n%v", c.wantMessage, err)
			}
		})
	}
}

// TestImmutableFields creates valid objects, then changes fields that must not change.
func TestImmutableFields(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name, manifest, path, newValue, wantMessage string
	}{
		{"flavor spec", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Flavor
metadata: {name: m1.fixed}
spec: {vcpus: 1, memoryMiB: 512, diskGiB: 1}`, "spec.vcpus", "2", "a flavor's spec is immutable"},
		{"image source", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Image
metadata: {name: fixed, namespace: default}
spec: {source: {file: /srv/a.qcow2}, sha256: ` + sha + `}`, "spec.source.file", `"/srv/b.qcow2"`, "an image's source is immutable"},
		{"migration target", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Migration
metadata: {name: fixed, namespace: default}
spec: {instanceName: web, type: Live, targetNode: a}`, "spec.targetNode", `"b"`, "a migration's spec is immutable"},
		{"snapshot instance", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Snapshot
metadata: {name: fixed, namespace: default}
spec: {instanceName: web}`, "spec.instanceName", `"db"`, "a snapshot's spec is immutable"},
		{"an instance's NICs", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: nics-fixed, namespace: default}
spec: {flavor: m1.tiny, image: {name: cirros}, networks: [{network: provider}]}`, "spec.networks", `[{"network": "storage"}]`,
			"networks cannot change once the instance exists"},
		{"NICs added to an instance without", `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: nics-none, namespace: default}
spec: {flavor: m1.tiny, image: {name: cirros}}`, "spec.networks", `[{"network": "storage"}]`,
			"networks cannot change once the instance exists"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u := object(t, c.manifest)
			if err := env.Client.Create(ctx, u); err != nil {
				t.Fatalf("a valid manifest was refused: %v", err)
			}
			var v any
			if err := yaml.Unmarshal([]byte(c.newValue), &v); err != nil {
				t.Fatal(err)
			}
			if err := unstructured.SetNestedField(u.Object, v, strings.Split(c.path, ".")...); err != nil {
				t.Fatal(err)
			}
			err := env.Client.Update(ctx, u)
			if err == nil || !strings.Contains(err.Error(), c.wantMessage) {
				t.Fatalf("changing %s: got %v, want a refusal saying %q", c.path, err, c.wantMessage)
			}
		})
	}
}

// TestDefaultsComeFromTheSchema checks that defaults are applied by the API server, so that no
// controller writes them into spec (which would be permanent GitOps drift).
func TestDefaultsComeFromTheSchema(t *testing.T) {
	ctx := context.Background()
	u := object(t, `
apiVersion: compute.kubenova.io/v1alpha1
kind: Instance
metadata: {name: defaults, namespace: default}
spec:
  flavor: m1.tiny
  image: {name: cirros}
  rebootRequest: {requestedAt: "2026-11-25T10:00:00Z"}`)
	if err := env.Client.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := unstructured.NestedString(u.Object, "spec", "powerState"); got != "Running" {
		t.Errorf("spec.powerState defaulted to %q, want Running", got)
	}
	if got, _, _ := unstructured.NestedString(u.Object, "spec", "rebootRequest", "type"); got != "Soft" {
		t.Errorf("spec.rebootRequest.type defaulted to %q, want Soft", got)
	}
	hv := object(t, `
apiVersion: compute.kubenova.io/v1alpha1
kind: Hypervisor
metadata: {name: node-defaults}`)
	if err := env.Client.Create(ctx, hv); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := unstructured.NestedString(hv.Object, "spec", "cpuAllocationRatio"); got != "16.0" {
		t.Errorf("cpuAllocationRatio defaulted to %q, want 16.0 (Nova's default)", got)
	}
}

// TestSamplesAreValid applies every manifest of config/samples as a dry run: the examples the
// README points at must be accepted as they are.
func TestSamplesAreValid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(utils.RepoRoot(), "config", "samples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples: %v", err)
	}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.NewReplacer("${GUEST_IMAGE}", "/var/lib/kubenova/images/guest.qcow2", "${GUEST_SHA256}", sha).Replace(string(b))
		for i, doc := range strings.Split(text, "\n---\n") {
			u := object(t, doc)
			if len(u.Object) == 0 {
				continue
			}
			if err := env.Client.Create(context.Background(), u, client.DryRunAll); err != nil {
				t.Errorf("%s, document %d: %v", filepath.Base(f), i+1, err)
			}
		}
	}
}
