// Package utils holds what the test suites share: starting a real kube-apiserver and etcd with
// kubenova's CRDs, and finding the project's files and binaries.
package utils

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheme"
)

// RepoRoot is the checkout's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// BinDir holds the binaries hack/ builds (kube-apiserver, etcd, kubectl, the guest image).
func BinDir() string {
	if d := os.Getenv("KUBENOVA_BIN"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "bin")
}

// Env is a running control plane with kubenova's CRDs installed.
type Env struct {
	*envtest.Environment
	Client client.Client
}

// EnvOption changes the control plane before it starts.
type EnvOption func(*envtest.Environment) error

// WithAuditLog makes kube-apiserver log every write (not reads) to path as JSON lines, with the
// user agent that made it: how the benches count API writes by client and kind.
func WithAuditLog(path string) EnvOption {
	return func(env *envtest.Environment) error {
		policy := filepath.Join(filepath.Dir(path), "audit-policy.yaml")
		if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
			return err
		}
		env.ControlPlane.GetAPIServer().Configure().
			Set("audit-policy-file", policy).
			Set("audit-log-path", path).
			Set("audit-log-format", "json").
			Set("audit-log-maxsize", "0")
		return nil
	}
}

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
`

// StartEnv starts kube-apiserver and etcd from bin/ (built by hack/build-control-plane.sh)
// and installs the CRDs of config/crd/bases and the admission policies of config/admission.
func StartEnv(opts ...EnvOption) (*Env, error) {
	bin := BinDir()
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("%s missing in %s: run make control-plane: %w", name, bin, err)
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: bin,
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme.New(),
	}
	for _, o := range opts {
		if err := o(env); err != nil {
			return nil, err
		}
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("client: %w", err)
	}
	if err := servesEveryKind(c); err != nil {
		_ = env.Stop()
		return nil, err
	}
	if err := InstallAdmissionPolicies(context.Background(), c); err != nil {
		_ = env.Stop()
		return nil, err
	}
	if err := admissionKnowsEveryKind(c); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Environment: env, Client: c}, nil
}

// admissionKnowsEveryKind waits until the admission policies' dispatcher maps kubenova's kinds:
// it learns them from discovery on its own schedule, and until then it answers a write of a
// kind a policy matches with 503 ("Resource kind ... not found. There can be a delay ...").
// A dry-run create of each kind the policies match shows when that is over.
func admissionKnowsEveryKind(c client.Client) error {
	objects := []client.Object{
		&v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "admission-probe"},
			Spec: v1.InstanceSpec{Flavor: "probe", Image: v1.ImageReference{Name: "probe"}}},
		&v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "admission-probe"},
			Spec: v1.SnapshotSpec{InstanceName: "probe"}},
		&v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "admission-probe"},
			Spec: v1.MigrationSpec{InstanceName: "probe", Type: v1.MigrationLive}},
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, obj := range objects {
		for {
			err := c.Create(context.Background(), obj.DeepCopyObject().(client.Object), client.DryRunAll)
			if !apierrors.IsServiceUnavailable(err) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the admission policies do not know %T yet: %w", obj, err)
			}
			time.Sleep(100 * time.Millisecond) // polling the API server; nothing to wait on instead
		}
	}
	return nil
}

// servesEveryKind waits until the API server serves each of kubenova's kinds: a CRD that is
// Established may still answer 503 for a moment, and a test's first create must not meet that.
func servesEveryKind(c client.Client) error {
	lists := []client.ObjectList{&v1.InstanceList{}, &v1.FlavorList{}, &v1.ImageList{}, &v1.ClusterImageList{},
		&v1.SnapshotList{}, &v1.MigrationList{}, &v1.HypervisorList{}}
	deadline := time.Now().Add(30 * time.Second)
	for _, list := range lists {
		for {
			err := c.List(context.Background(), list, client.Limit(1))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the API server does not serve %T: %w", list, err)
			}
			time.Sleep(50 * time.Millisecond) // polling the API server; nothing to wait on instead
		}
	}
	return nil
}
