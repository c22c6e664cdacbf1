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

// progressDriver is a driver whose live migration is under way with the figures it is given.
type progressDriver struct {
	driver.Driver
	stats driver.MigrationStats
}

func (p *progressDriver) MigrationProgress(context.Context, string) (driver.MigrationStats, bool, error) {
	return p.stats, true, nil
}

// TestMigrationProgressIsWrittenOnceASecond: every look at a live migration brings new figures;
// the report takes them once per progressInterval of the job's own clock, so that a move
// costs a write a second rather than one per look.
func TestMigrationProgressIsWrittenOnceASecond(t *testing.T) {
	ctx := context.Background()
	d := &progressDriver{Driver: fake.New()}
	r := &InstanceReconciler{Driver: d, NodeName: "host-1"}
	task := &v1.Task{ID: 3, Action: v1.ActionLiveMigrate, Migration: &v1.MigrationTask{TargetNode: "host-2"}}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "6f1c3a52-8d0e-4f5b-9a77-2c1d0e9b0a02"},
		Status: v1.InstanceStatus{Task: task, AgentReport: &v1.AgentReport{NodeName: "host-1"}}}
	look := func(elapsed time.Duration, remaining int64) *v1.MigrationProgress {
		t.Helper()
		d.stats = driver.MigrationStats{DataTotal: 1000, DataRemaining: remaining, Elapsed: elapsed}
		if err := r.followMigration(ctx, inst, task); err != nil {
			t.Fatal(err)
		}
		return inst.Status.AgentReport.Migration
	}
	if p := look(300*time.Millisecond, 900); p == nil || p.TotalMillis != 300 || p.ProgressPercent != 10 {
		t.Fatalf("the first look: %+v", p)
	}
	if p := look(800*time.Millisecond, 500); p.TotalMillis != 300 || p.ProgressPercent != 10 {
		t.Fatalf("half a second later the report changed: %+v", p)
	}
	if p := look(1400*time.Millisecond, 100); p.TotalMillis != 1400 || p.ProgressPercent != 90 {
		t.Fatalf("a second later the report did not change: %+v", p)
	}
	// Another task's figures are never kept.
	next := &v1.Task{ID: 4, Action: v1.ActionLiveMigrate, Migration: task.Migration}
	inst.Status.Task = next
	d.stats = driver.MigrationStats{DataTotal: 2000, DataRemaining: 2000, Elapsed: 1500 * time.Millisecond}
	if err := r.followMigration(ctx, inst, next); err != nil {
		t.Fatal(err)
	}
	if p := inst.Status.AgentReport; p.StepTaskID != 4 || p.Migration.DataTotalBytes != 2000 {
		t.Fatalf("a new task kept the last one's figures: %+v", p.Migration)
	}
}
