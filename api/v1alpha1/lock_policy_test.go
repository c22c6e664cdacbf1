package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// as returns a client acting as user, a member of groups (impersonation by the test's admin).
func as(t *testing.T, user string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func lockedInstance(t *testing.T, ctx context.Context, name string) *v1.Instance {
	t.Helper()
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "img"}, Locked: true, LockedReason: "legal hold"}}
	if err := env.Client.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), inst) })
	return inst
}

func patch(c client.Client, ctx context.Context, name, body string) error {
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}}
	return c.Patch(ctx, inst, client.RawPatch(types.MergePatchType, []byte(body)))
}

// TestLockIsEnforcedByTheAPIServer: an ordinary user can neither change nor delete a locked
// instance, except by unlocking it; an administrator can do both.
func TestLockIsEnforcedByTheAPIServer(t *testing.T) {
	ctx := context.Background()
	// An ordinary user with full rights on instances: RBAC lets everything through, so any
	// refusal comes from the lock policy.
	grant(t, ctx, "alice")
	grant(t, ctx, "root-of-cloud")
	alice := as(t, "alice", "tenants")
	admin := as(t, "root-of-cloud", "kubenova:admins")

	inst := lockedInstance(t, ctx, "locked-one")
	gomega.NewWithT(t).Eventually(func() error {
		return patch(alice, ctx, inst.Name, `{"spec":{"powerState":"Paused"}}`)
	}).WithTimeout(10*time.Second).WithPolling(100*time.Millisecond).Should(gomega.HaveOccurred(), "the policy takes effect")
	for _, change := range []string{
		`{"spec":{"powerState":"Stopped"}}`,
		`{"spec":{"flavor":"m1.large"}}`,
		`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":"2026-11-26T10:00:00.000001Z"}}}`,
		`{"spec":{"lockedReason":"another reason"}}`,
		`{"spec":{"locked":false,"lockedReason":null,"powerState":"Stopped"}}`,
	} {
		err := patch(alice, ctx, inst.Name, change)
		if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			t.Fatalf("patch %s of a locked instance by an ordinary user: %v; want a refusal", change, err)
		}
		if !strings.Contains(err.Error(), "instance locked-one is locked (legal hold)") ||
			!strings.Contains(err.Error(), "kubectl nova unlock locked-one") {
			t.Errorf("the refusal must name the lock, its reason and the way out: %v", err)
		}
	}
	err := alice.Delete(ctx, inst)
	if err == nil || !strings.Contains(err.Error(), "is locked (legal hold): unlock it before deleting it") {
		t.Fatalf("delete of a locked instance by an ordinary user: %v", err)
	}
	// Metadata is not spec: labels (and the manager's finalizers) still change.
	if err := patch(alice, ctx, inst.Name, `{"metadata":{"labels":{"team":"a"}}}`); err != nil {
		t.Errorf("a label change on a locked instance: %v", err)
	}

	// The administrator's override.
	if err := patch(admin, ctx, inst.Name, `{"spec":{"powerState":"Stopped"}}`); err != nil {
		t.Fatalf("an administrator's change of a locked instance: %v", err)
	}
	if err := admin.Delete(ctx, inst); err != nil {
		t.Fatalf("an administrator's delete of a locked instance: %v", err)
	}

	// Unlocking is the one change an ordinary user may make; then everything is allowed again.
	other := lockedInstance(t, ctx, "locked-two")
	if err := patch(alice, ctx, other.Name, `{"spec":{"locked":null,"lockedReason":null}}`); err != nil {
		t.Fatalf("unlocking: %v", err)
	}
	if err := patch(alice, ctx, other.Name, `{"spec":{"powerState":"Paused"}}`); err != nil {
		t.Fatalf("a change after unlocking: %v", err)
	}
	if err := alice.Delete(ctx, other); err != nil {
		t.Fatalf("a delete after unlocking: %v", err)
	}
}

// TestLockPolicyNamesEverySpecField fails when a field is added to InstanceSpec without being
// added to the policy's comparison: the lock would silently not cover it.
func TestLockPolicyNamesEverySpecField(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(utils.RepoRoot(), "config", "admission", "instance-lock.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	policy := string(b)
	spec := reflect.TypeOf(v1.InstanceSpec{})
	for i := range spec.NumField() {
		name := strings.Split(spec.Field(i).Tag.Get("json"), ",")[0]
		if name == "locked" || name == "lockedReason" {
			continue
		}
		if !strings.Contains(policy, "object.spec."+name+" == oldObject.spec."+name) {
			t.Errorf("spec.%s is not compared by the lock policy", name)
		}
	}
}

// grant gives user every right on instances in the default namespace, and waits until the
// authorizer knows (a patch of a missing instance is then NotFound rather than Forbidden).
func grant(t *testing.T, ctx context.Context, user string) {
	t.Helper()
	if err := utils.GrantInstanceEditor(ctx, env.Client, "default", user); err != nil {
		t.Fatal(err)
	}
	gomega.NewWithT(t).Eventually(func() bool {
		return apierrors.IsNotFound(patch(as(t, user, "tenants"), ctx, "no-such-instance", `{}`))
	}).WithTimeout(10*time.Second).WithPolling(100*time.Millisecond).Should(gomega.BeTrue(), "the grant takes effect")
}

// TestOnlyAdministratorsOverrideTheLock: spec.overrideLock on a Snapshot or a Migration is an
// administrator's to set; one without it is anyone's.
func TestOnlyAdministratorsOverrideTheLock(t *testing.T) {
	ctx := context.Background()
	for _, user := range []string{"bob", "root-of-snapshots"} {
		if err := utils.GrantEditor(ctx, env.Client, "default", user, "snapshots", "migrations"); err != nil {
			t.Fatal(err)
		}
	}
	bob := as(t, "bob", "tenants")
	admin := as(t, "root-of-snapshots", "kubenova:admins")
	kinds := map[string]func(name string, override bool) client.Object{
		"Snapshot": func(name string, override bool) client.Object {
			return &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
				Spec: v1.SnapshotSpec{InstanceName: "locked", OverrideLock: override}}
		},
		"Migration": func(name string, override bool) client.Object {
			return &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
				Spec: v1.MigrationSpec{InstanceName: "locked", Type: v1.MigrationLive, OverrideLock: override}}
		},
	}
	for kind, object := range kinds {
		t.Run(kind, func(t *testing.T) {
			g := gomega.NewWithT(t)
			g.Eventually(func() error { return bob.Create(ctx, object("plain", false)) }).
				WithTimeout(10*time.Second).WithPolling(100*time.Millisecond).Should(gomega.Succeed(), "the grant takes effect")
			var err error
			g.Eventually(func() error {
				err = bob.Create(ctx, object("sneaky", true))
				return err
			}).WithTimeout(10*time.Second).WithPolling(100*time.Millisecond).Should(gomega.HaveOccurred(), "the policy takes effect")
			if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "only administrators may set spec.overrideLock on "+kind+" sneaky") {
				t.Fatalf("an ordinary user's overrideLock: %v", err)
			}
			if err := admin.Create(ctx, object("by-admin", true)); err != nil {
				t.Fatalf("an administrator's overrideLock: %v", err)
			}
		})
	}
}
