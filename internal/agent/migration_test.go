package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
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

// A source whose live migration ended with its domain still there reports a final failure
// that says what the domain is (never tried again: the guest may run on the target), and so
// does a restarted source that finds the move it began over.
func TestASourceReportsAFailedMoveOnceWithItsDomainsState(t *testing.T) {
	ctx := context.Background()
	const uid = "6f1c3a52-8d0e-4f5b-9a77-2c1d0e9b0a03"
	task := &v1.Task{ID: 8, Action: v1.ActionLiveMigrate, StartedAt: metav1.Now(),
		Migration: &v1.MigrationTask{SourceNode: "host-1", TargetNode: "host-2", TargetURI: "fake://host-2-" + uid}}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Name: "wanderer", Namespace: "default", UID: types.UID(uid)},
		Status: v1.InstanceStatus{NodeName: "host-1", Flavor: &v1.AppliedFlavor{Name: "tiny", FlavorSpec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 256}},
			Task: task, AgentReport: &v1.AgentReport{NodeName: "host-1"},
			PeerReport: &v1.AgentReport{NodeName: "host-2", Step: v1.StepPrepared, StepTaskID: 8}}}
	source, target := fake.New(), fake.New()
	target.Serve(task.Migration.TargetURI)
	if err := source.Spawn(ctx, driver.Machine{UUID: uid, Name: "kubenova-" + uid, VCPUs: 1, MemoryMiB: 256, RootDisk: "/nowhere/disk"}); err != nil {
		t.Fatal(err)
	}
	source.SetMigrateReplyLost(v1.PowerStateRunning)
	store := &storage.Node{Root: t.TempDir()}
	r := &InstanceReconciler{Driver: source, Storage: store, NodeName: "host-1", MigrationTimeoutPerGiB: time.Hour}
	if done, err := r.liveMigrate(ctx, inst, task); done || err != nil {
		t.Fatalf("starting: done %v, %v", done, err)
	}
	// The fake's move runs beside the reconciles, as libvirt's does: look until it ended.
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var done bool
		if done, err = r.liveMigrate(ctx, inst, task); done || err != nil {
			break
		}
	}
	if !isFinal(err) || !strings.Contains(err.Error(), "Finish reply") || !strings.Contains(err.Error(), "still here, Running (MigrationCanceled)") {
		t.Errorf("after a lost Finish reply: %v; want a final error naming the source's domain state", err)
	}
	if st, _ := target.State(ctx, uid); st.Power != v1.PowerStateRunning {
		t.Fatalf("the fake's target: %s", st.Power)
	}

	// The agent restarted: no run in memory, no job in libvirt, the report says it began.
	if inst.Status.AgentReport.Step != v1.StepMigrating || inst.Status.AgentReport.StepTaskID != 8 {
		t.Fatalf("the report does not say the move began: %+v", inst.Status.AgentReport)
	}
	restarted := &InstanceReconciler{Driver: source, Storage: store, NodeName: "host-1", MigrationTimeoutPerGiB: time.Hour}
	if done, err := restarted.liveMigrate(ctx, inst, task); done || !isFinal(err) || !strings.Contains(err.Error(), "while its agent was away") {
		t.Errorf("a restarted source: done %v, %v; want a final error, the move not begun again", done, err)
	}
	if n := source.CallCount("MigrateLive"); n != 1 {
		t.Errorf("MigrateLive called %d times, want 1", n)
	}
}

// Once the source says its move ended with its domain still there, the target says what it
// has: the guest ran here (running, or paused for a reason other than the move), or it did
// not arrive. Before that, a paused incoming copy is only waited on.
func TestATargetSaysWhetherTheGuestArrivedOnceTheSourceEndedTheMove(t *testing.T) {
	ctx := context.Background()
	const uid = uidMoved
	for _, tc := range []struct {
		what          string
		sourceEnded   bool
		power         v1.PowerState // of the target's domain; NoState: none
		reason        string
		wantStep      string
		wantFailed    string // a part of the failure message; "" for none
		wantNoAnswers bool
	}{
		{"no domain here", true, v1.PowerStateNoState, "", v1.StepPrepared, "its domain there is absent", false},
		{"an incoming copy that never ran", true, v1.PowerStatePaused, driver.ReasonPausedForMigration, v1.StepPrepared, "Paused (Migration)", false},
		{"the guest runs here", true, v1.PowerStateRunning, "Migrated", v1.StepMigrated, "", false},
		{"the guest ran here, then paused on an I/O error", true, v1.PowerStatePaused, "IOError", v1.StepMigrated, "", false},
		{"the move goes on", false, v1.PowerStatePaused, driver.ReasonPausedForMigration, v1.StepPrepared, "", true},
	} {
		inst := instance(uid, "node-2")
		inst.Status.Task = &v1.Task{ID: 4, Action: v1.ActionLiveMigrate, PeerNode: thisNodeName,
			Migration: &v1.MigrationTask{SourceNode: "node-2", TargetNode: thisNodeName}}
		inst.Status.AgentReport = &v1.AgentReport{NodeName: "node-2", Step: v1.StepMigrating, StepTaskID: 4}
		if tc.sourceEnded {
			inst.Status.AgentReport.TaskID, inst.Status.AgentReport.TaskResult = 4, v1.TaskFailed
		}
		inst.Status.PeerReport = &v1.AgentReport{NodeName: thisNodeName, Step: v1.StepPrepared, StepTaskID: 4}
		c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(inst).WithStatusSubresource(&v1.Instance{}).Build()
		d := fake.New()
		if tc.power != v1.PowerStateNoState {
			if err := d.Spawn(ctx, driver.Machine{UUID: uid, Name: "kubenova-" + uid, VCPUs: 1, MemoryMiB: 256, RootDisk: "/nowhere/disk"}); err != nil {
				t.Fatal(err)
			}
			d.SetPowerState(uid, tc.power, tc.reason)
		}
		r := &InstanceReconciler{Client: c, Reader: c, Driver: d, NodeName: thisNodeName}
		res, err := r.reportArrival(ctx, inst.DeepCopy(), inst.DeepCopy())
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		got := &v1.Instance{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(inst), got); err != nil {
			t.Fatal(err)
		}
		pr := got.Status.PeerReport
		if pr.Step != tc.wantStep {
			t.Errorf("%s: step %q, want %q", tc.what, pr.Step, tc.wantStep)
		}
		switch {
		case tc.wantFailed != "" && (pr.TaskID != 4 || pr.TaskResult != v1.TaskFailed || !strings.Contains(pr.Message, tc.wantFailed)):
			t.Errorf("%s: %+v; want a failure saying %q", tc.what, pr, tc.wantFailed)
		case tc.wantFailed == "" && pr.TaskID != 0:
			t.Errorf("%s: answered %+v", tc.what, pr)
		}
		if tc.wantNoAnswers && res.RequeueAfter == 0 {
			t.Errorf("%s: does not look again", tc.what)
		}
	}
}
