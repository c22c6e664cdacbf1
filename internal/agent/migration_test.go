package agent

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/fake"
)

// TestARestartedSourceFinishesAMoveThatEndedWithoutIt: an agent killed while libvirtd carried
// its live migration on starts again with no memory of it. Whether the source's domain is
// already undefined or still shut off as migrated, the guest runs on the target: the task is
// done, never failed (a failed move would leave the instance believing it runs here).
func TestARestartedSourceFinishesAMoveThatEndedWithoutIt(t *testing.T) {
	ctx := context.Background()
	const uid = "6f1c3a52-8d0e-4f5b-9a77-2c1d0e9b0a01"
	task := &v1.Task{ID: 7, Action: v1.ActionLiveMigrate, StartedAt: metav1.Now(),
		Migration: &v1.MigrationTask{TargetNode: "host-2"}}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Name: "wanderer", Namespace: "default", UID: types.UID(uid)},
		Status: v1.InstanceStatus{NodeName: "host-1", Flavor: &v1.AppliedFlavor{Name: "tiny", FlavorSpec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 256}},
			Task: task, AgentReport: &v1.AgentReport{NodeName: "host-1"}}}

	for _, c := range []struct {
		name   string
		before func(d *fake.Driver)
	}{
		{"shut off as migrated, not yet undefined", func(d *fake.Driver) {
			d.SetPowerState(uid, v1.PowerStateShutdown, driver.ReasonMigrated)
		}},
		{"undefined", func(d *fake.Driver) {
			if err := d.Destroy(ctx, uid); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		d := fake.New()
		if err := d.Spawn(ctx, driver.Machine{UUID: uid, Name: "kubenova-" + uid, VCPUs: 1, MemoryMiB: 256, RootDisk: "/nowhere/disk"}); err != nil {
			t.Fatal(err)
		}
		c.before(d)
		r := &InstanceReconciler{Driver: d, NodeName: "host-1"}
		done, err := r.liveMigrate(ctx, inst.DeepCopy(), task)
		if err != nil || !done {
			t.Errorf("%s: done %v, %v; want done", c.name, done, err)
		}
	}

	// A domain shut off for any other reason did not move: only a running guest migrates.
	d := fake.New()
	if err := d.Spawn(ctx, driver.Machine{UUID: uid, Name: "kubenova-" + uid, VCPUs: 1, MemoryMiB: 256, RootDisk: "/nowhere/disk"}); err != nil {
		t.Fatal(err)
	}
	d.SetPowerState(uid, v1.PowerStateShutdown, "Shutdown")
	r := &InstanceReconciler{Driver: d, NodeName: "host-1", MigrationTimeoutPerGiB: time.Hour}
	if done, err := r.liveMigrate(ctx, inst.DeepCopy(), task); done || !isFinal(err) {
		t.Errorf("shut off: done %v, %v; want a final error", done, err)
	}
}
