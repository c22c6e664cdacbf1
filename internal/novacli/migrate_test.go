package novacli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestMigrateCreatesAMigration(t *testing.T) {
	cases := []struct {
		args []string
		want v1.MigrationSpec
	}{
		{[]string{"migrate", "web", "--live"}, v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive, BlockMigration: v1.BlockMigrationAuto}},
		{[]string{"migrate", "web", "--live", "--block-migrate", "--node", "node-3"},
			v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive, BlockMigration: v1.BlockMigrationEnabled, TargetNode: "node-3"}},
		{[]string{"migrate", "web", "--live", "--block-migrate=false"},
			v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive, BlockMigration: v1.BlockMigrationDisabled}},
		{[]string{"migrate", "web"}, v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationCold}},
		{[]string{"migrate", "web", "--node", "node-2"}, v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationCold, TargetNode: "node-2"}},
	}
	for _, tc := range cases {
		h := newHarness(t, sampleInstance("web"))
		if err := h.run(tc.args...); err != nil {
			t.Fatal(tc.args, err)
		}
		c, _ := h.opts.newClient()
		var list v1.MigrationList
		if err := c.List(context.Background(), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 || list.Items[0].Spec != tc.want {
			t.Errorf("%v created %+v, want one with %+v", tc.args, list.Items, tc.want)
			continue
		}
		if !strings.Contains(h.out.String(), "migration.compute.kubenova.io/"+list.Items[0].Name+" created") {
			t.Errorf("printed %q", h.out)
		}
	}
	h := newHarness(t, sampleInstance("web"))
	if err := h.run("migrate", "nothing", "--live"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("a migration of a missing instance: %v", err)
	}
	if err := h.run("migrate", "web", "--block-migrate"); err == nil || !strings.Contains(err.Error(), "--live") {
		t.Errorf("a cold migration that asks for a block migration: %v", err)
	}
}

func TestWaitForMigrationFollowsPhasesAndProgress(t *testing.T) {
	steps := []v1.MigrationStatus{
		{Phase: v1.MigrationPending}, {Phase: v1.MigrationPreparing},
		{Phase: v1.MigrationMigrating, ProgressPercent: 40}, {Phase: v1.MigrationMigrating, ProgressPercent: 40},
		{Phase: v1.MigrationMigrating, ProgressPercent: 90}, {Phase: v1.MigrationSucceeded},
	}
	mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Name: "m"}}
	reads := 0
	get := func(context.Context) error {
		mig.Status = steps[min(reads, len(steps)-1)]
		reads++
		return nil
	}
	var out bytes.Buffer
	if err := waitForMigration(context.Background(), &out, mig, get, time.Millisecond, time.Minute); err != nil {
		t.Fatal(err)
	}
	if want := "m: Pending\nm: Preparing\nm: Migrating 40%\nm: Migrating 90%\nm: Succeeded\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}
	failed := func(context.Context) error {
		mig.Status = v1.MigrationStatus{Phase: v1.MigrationFailed, Reason: "NoValidHost", Message: "no node fits"}
		return nil
	}
	err := waitForMigration(context.Background(), &out, mig, failed, time.Millisecond, time.Minute)
	if err == nil || !strings.Contains(err.Error(), "NoValidHost: no node fits") {
		t.Errorf("a failed migration: %v", err)
	}
}

func TestMigrationListShowsNewestFirst(t *testing.T) {
	now := time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)
	old := v1.Migration{ObjectMeta: metav1.ObjectMeta{Name: "web-a", CreationTimestamp: metav1.NewTime(now.Add(-time.Hour))},
		Spec: v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive},
		Status: v1.MigrationStatus{Phase: v1.MigrationSucceeded, SourceNode: "n1", TargetNode: "n2", ProgressPercent: 100,
			TotalMillis: 1500, DowntimeMillis: 220}}
	fresh := v1.Migration{ObjectMeta: metav1.ObjectMeta{Name: "web-b", CreationTimestamp: metav1.NewTime(now.Add(-time.Minute))},
		Spec: v1.MigrationSpec{InstanceName: "web", Type: v1.MigrationLive}, Status: v1.MigrationStatus{Phase: v1.MigrationPending}}
	var out bytes.Buffer
	if err := renderMigrationTable(&out, []v1.Migration{old, fresh}, false, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "web-b") || !strings.HasPrefix(lines[2], "web-a") {
		t.Fatalf("printed\n%s", out.String())
	}
	for _, want := range []string{"Succeeded", "n1", "n2", "100%", "1.5s", "220ms", "60m"} {
		if !strings.Contains(lines[2], want) {
			t.Errorf("row %q lacks %q", lines[2], want)
		}
	}
}

func TestEvacuateFencesTheNodeAndCreatesOneMigrationPerInstance(t *testing.T) {
	hv := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "host-1"}}
	elsewhere := sampleInstance("db")
	elsewhere.Status.NodeName = "host-2"
	other := sampleInstance("cache")
	other.Namespace = "team-b"
	h := newHarness(t, hv, sampleInstance("web"), other, elsewhere)
	if err := h.run("evacuate", "host-1", "--force-down", "--target", "host-3"); err != nil {
		t.Fatal(err)
	}
	c, _ := h.opts.newClient()
	if err := c.Get(context.Background(), client.ObjectKey{Name: "host-1"}, hv); err != nil {
		t.Fatal(err)
	}
	if !hv.Spec.ForcedDown {
		t.Error("--force-down left the hypervisor up")
	}
	var list v1.MigrationList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	got := map[string]v1.MigrationSpec{}
	for _, m := range list.Items {
		got[m.Namespace+"/"+m.Spec.InstanceName] = m.Spec
	}
	want := map[string]v1.MigrationSpec{
		"default/web":  {InstanceName: "web", Type: v1.MigrationEvacuate, TargetNode: "host-3"},
		"team-b/cache": {InstanceName: "cache", Type: v1.MigrationEvacuate, TargetNode: "host-3"},
	}
	if len(got) != len(want) || got["default/web"] != want["default/web"] || got["team-b/cache"] != want["team-b/cache"] {
		t.Errorf("created %v, want %v", got, want)
	}
	if !strings.Contains(h.out.String(), "hypervisor.compute.kubenova.io/host-1 forced down") {
		t.Errorf("printed %q", h.out)
	}
	if err := h.run("evacuate", "host-9"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("evacuating a node that does not exist: %v", err)
	}
}

func TestHostEvacuateLiveStartsAMovePerRunningInstanceUpToMaxServers(t *testing.T) {
	hv := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "host-1"}}
	stopped := sampleInstance("batch")
	stopped.Status.VMState = v1.VMStateStopped
	paused := sampleInstance("db")
	paused.Status.VMState = v1.VMStatePaused
	elsewhere := sampleInstance("cache")
	elsewhere.Status.NodeName = "host-2"
	h := newHarness(t, hv, sampleInstance("web"), paused, stopped, elsewhere)
	if err := h.run("host-evacuate-live", "host-1", "--max-servers", "1", "--block-migrate"); err != nil {
		t.Fatal(err)
	}
	c, _ := h.opts.newClient()
	var list v1.MigrationList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	want := v1.MigrationSpec{InstanceName: "db", Type: v1.MigrationLive, BlockMigration: v1.BlockMigrationEnabled}
	if len(list.Items) != 1 || list.Items[0].Spec != want {
		t.Fatalf("created %+v, want one Migration %+v (db comes first by name)", list.Items, want)
	}
	for _, line := range []string{"default/batch not moved: it is Stopped", "default/web not moved: --max-servers 1"} {
		if !strings.Contains(h.out.String(), line) {
			t.Errorf("printed %q, want a line %q", h.out, line)
		}
	}
	if strings.Contains(h.out.String(), "cache") {
		t.Errorf("printed an instance of another node: %q", h.out)
	}
}
