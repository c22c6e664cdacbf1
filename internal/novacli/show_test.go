package novacli

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// showRow splits a show line into property and value: tabwriter pads with at least two spaces,
// and names and values use single spaces.
var showRow = regexp.MustCompile(`^(\S+(?: \S+)*)\s{2,}(.*)$`)

func showTable(t *testing.T, out string) (order []string, props map[string]string) {
	t.Helper()
	props = map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		m := showRow.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("line %q is not property and value", line)
		}
		order = append(order, m[1])
		props[m[1]] = m[2]
	}
	return order, props
}

func TestRenderShow(t *testing.T) {
	inst := sampleInstance("web")
	inst.Spec.Locked, inst.Spec.LockedReason = true, "audit"
	inst.Spec.PowerState = v1.DesiredPaused
	requested := stamp(testNow.Add(-time.Minute))
	inst.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: requested}
	inst.Spec.StartRequest = &v1.StartRequest{RequestedAt: stamp(testNow.Add(-2 * time.Hour))}
	inst.Status.RebootRequest = &v1.RequestStatus{RequestedAt: requested, Result: v1.RequestSucceeded, TaskID: 5}
	inst.Status.AgentReport = &v1.AgentReport{NodeName: "host-1", PowerReason: "Booted",
		ConsoleLogPath: "/var/lib/kubenova/instances/4f2c/console.log"}
	launched := metav1.NewTime(testNow.Add(-89 * time.Minute))
	inst.Status.LaunchedAt = &launched
	stall(inst, v1.ReasonLocked, "cannot pause: the instance is locked (audit)", 3)
	inst.Status.PowerChange = &v1.PowerChange{FromVMState: v1.VMStateActive, PowerState: v1.PowerStateShutdown,
		Reason: "Shutdown", Time: metav1.NewTime(testNow.Add(-10 * time.Minute)), SpecPowerState: v1.DesiredRunning}
	inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: "Stop failed: timeout",
		Time: metav1.NewTime(testNow.Add(-20 * time.Minute)), Action: v1.ActionStop}
	inst.Status.Networks = []v1.NICStatus{{Network: "provider", MACAddress: "fa:16:3e:00:00:01", IPAddresses: []string{"10.0.0.7", "fd00::7"}},
		{Network: "storage", MACAddress: "02:00:00:00:00:02"}}

	var out bytes.Buffer
	if err := renderShow(&out, inst); err != nil {
		t.Fatal(err)
	}
	order, props := showTable(t, out.String())
	want := map[string]string{
		"PROPERTY":          "VALUE",
		"name":              "web",
		"namespace":         "default",
		"uid":               "4f2c-uid",
		"created":           "2026-03-14T13:39:26Z",
		"vmState":           "Active",
		"taskState":         "-",
		"powerState":        "Running (Booted)",
		"node":              "host-1",
		"flavor":            "m1.tiny (1 vCPU, 256 MiB RAM, 1 GiB disk)",
		"image":             "test-guest",
		"locked":            "true (audit)",
		"spec powerState":   "Paused",
		"condition Ready":   "False (Locked) cannot pause: the instance is locked (audit)",
		"condition Stalled": "True (Locked) cannot pause: the instance is locked (audit)",
		"fault":             "TaskFailed: Stop failed: timeout (at 2026-03-14T14:49:26Z, action Stop)",
		"powerChange":       "Active -> Shutdown (Shutdown) at 2026-03-14T14:59:26Z, outside kubenova",
		"rebootRequest":     "Hard at 2026-03-14T15:08:26.535897Z: Succeeded (task 5)",
		"startRequest":      "at 2026-03-14T13:09:26.535897Z: not acknowledged yet",
		"launchedAt":        "2026-03-14T13:40:26Z",
		"consoleLog":        "/var/lib/kubenova/instances/4f2c/console.log on host-1",
		"eth0":              "network provider, mac fa:16:3e:00:00:01, 10.0.0.7, fd00::7",
		"eth1":              "network storage, mac 02:00:00:00:00:02, no address seen yet",
	}
	for name, value := range want {
		if props[name] != value {
			t.Errorf("%s = %q, want %q", name, props[name], value)
		}
	}
	if len(props) != len(want) {
		t.Errorf("rows %v, want exactly %d", order, len(want))
	}
	if order[1] != "name" || order[5] != "vmState" {
		t.Errorf("rows in order %v: identity first, then the states", order)
	}
}

func TestRenderShowBeforeLaunch(t *testing.T) {
	inst := sampleInstance("new")
	inst.Status = v1.InstanceStatus{}
	var out bytes.Buffer
	if err := renderShow(&out, inst); err != nil {
		t.Fatal(err)
	}
	_, props := showTable(t, out.String())
	for name, value := range map[string]string{
		"vmState": "-", "powerState": "-", "node": "-", "locked": "false", "spec powerState": "Running",
		"flavor": "m1.tiny (not applied yet)", "image": "test-guest (not applied yet)",
	} {
		if props[name] != value {
			t.Errorf("%s = %q, want %q", name, props[name], value)
		}
	}
	if _, ok := props["launchedAt"]; ok {
		t.Error("an instance never launched shows no launchedAt")
	}
}

func TestRenderShowDuringResize(t *testing.T) {
	inst := sampleInstance("web")
	inst.Spec.Flavor = "m1.small"
	inst.Status.Flavor.DiskGiB = 0
	_, props := showTable(t, renderToString(t, inst))
	if want := "m1.tiny (1 vCPU, 256 MiB RAM, image-sized disk); spec asks for m1.small"; props["flavor"] != want {
		t.Errorf("flavor = %q, want %q", props["flavor"], want)
	}
}

func renderToString(t *testing.T, inst *v1.Instance) string {
	t.Helper()
	var out bytes.Buffer
	if err := renderShow(&out, inst); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestShowCommandOutputs(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	if err := h.run("show", "web", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	var obj struct {
		Kind     string            `json:"kind"`
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := json.Unmarshal(h.out.Bytes(), &obj); err != nil {
		t.Fatalf("-o json is not JSON: %v\n%s", err, h.out.String())
	}
	if obj.Kind != "Instance" || obj.Metadata.Name != "web" {
		t.Errorf("printed %+v", obj)
	}

	h.out.Reset()
	if err := h.run("show", "web"); err != nil {
		t.Fatal(err)
	}
	if _, props := showTable(t, h.out.String()); props["vmState"] != "Active" {
		t.Errorf("human show:\n%s", h.out.String())
	}

	if err := h.run("show", "web", "-o", "wide"); err == nil {
		t.Error("-o wide is not a format of show")
	}
}

func TestShowNamesTheImagesOfRescueShelveAndTheLastSnapshot(t *testing.T) {
	inst := sampleInstance("web")
	inst.Status.VMState = v1.VMStateRescued
	inst.Status.RescueImage = &v1.AppliedImage{ImageReference: v1.ImageReference{Kind: v1.KindClusterImage, Name: "rescue-tools"}}
	inst.Status.ShelvedImage = &v1.ImageReference{Kind: v1.KindImage, Name: "web-shelved"}
	inst.Status.SnapshotRequest = &v1.ObjectRequestStatus{Name: "nightly", Result: v1.RequestFailed, Message: "disk full"}
	props := map[string]string{}
	for _, p := range showProperties(inst) {
		props[p.name] = p.value
	}
	for name, want := range map[string]string{
		"rescueImage":  "rescue-tools (cluster image)",
		"shelvedImage": "web-shelved",
		"lastSnapshot": "snapshot nightly: Failed (disk full)",
	} {
		if props[name] != want {
			t.Errorf("%s = %q, want %q", name, props[name], want)
		}
	}
}

func TestShowSaysWhereTheLastMigrationTookTheInstance(t *testing.T) {
	cases := []struct {
		ack  v1.ObjectRequestStatus
		task *v1.Task
		want string
	}{
		{v1.ObjectRequestStatus{Name: "web-a", Result: v1.RequestSucceeded, SourceNode: "host-1", TargetNode: "host-3", BlockMigration: true},
			nil, "migration web-a: Succeeded, host-1 -> host-3 (block migration)"},
		{v1.ObjectRequestStatus{Name: "web-b", Result: v1.RequestAccepted, TaskID: 9, SourceNode: "host-1", TargetNode: "host-2"},
			&v1.Task{ID: 9, Action: v1.ActionLiveMigrate}, "migration web-b: Accepted, host-1 -> host-2, LiveMigrate in flight"},
		{v1.ObjectRequestStatus{Name: "web-c", Result: v1.RequestRefused, SourceNode: "host-1", Reason: "NotFenced", Message: "node host-1 is not fenced"},
			nil, "migration web-c: Refused: NotFenced (node host-1 is not fenced)"},
		{v1.ObjectRequestStatus{Name: "web-d", Result: v1.RequestSucceeded, SourceNode: "host-3", TargetNode: "host-1", RebuiltFromImage: true},
			nil, "migration web-d: Succeeded, host-3 -> host-1 (rebuilt from its image)"},
	}
	for _, tc := range cases {
		inst := sampleInstance("web")
		ack := tc.ack
		inst.Status.MigrationRequest, inst.Status.Task = &ack, tc.task
		got := ""
		for _, p := range showProperties(inst) {
			if p.name == "lastMigration" {
				got = p.value
			}
		}
		if got != tc.want {
			t.Errorf("lastMigration = %q, want %q", got, tc.want)
		}
	}
}

func TestShowSaysWhatAResizeWaitsFor(t *testing.T) {
	inst := resizedInstance()
	at := metav1.NewTime(testNow)
	inst.Status.Resize.DiskTransfer, inst.Status.Resize.ResizedAt = v1.TransferImageStore, &at
	inst.Spec.ResizeRequest = &v1.ResizeRequest{Decision: v1.ResizeRevert, RequestedAt: stamp(testNow)}
	inst.Status.ResizeRequest = &v1.RequestStatus{RequestedAt: stamp(testNow), Result: v1.RequestAccepted, TaskID: 7}
	props := map[string]string{}
	for _, p := range showProperties(inst) {
		props[p.name] = p.value
	}
	want := "Resize m1.tiny -> m1.small, host-1 -> host-2 (ImageStore), was Active, resized at " + formatTime(testNow) +
		": confirm or revert (kubectl nova resize NAME --confirm|--revert)"
	if props["resize"] != want {
		t.Errorf("resize = %q, want %q", props["resize"], want)
	}
	if got := props["resizeRequest"]; !strings.HasPrefix(got, "Revert at ") || !strings.Contains(got, "Accepted") {
		t.Errorf("resizeRequest = %q", got)
	}
}

func TestShowSaysTheEvictionStrategyWhenSet(t *testing.T) {
	inst := sampleInstance("web")
	inst.Spec.EvictionStrategy = v1.EvictionNone
	h := newHarness(t, inst, sampleInstance("db"))
	if err := h.run("show", "web"); err != nil {
		t.Fatal(err)
	}
	if _, props := showTable(t, h.out.String()); props["evictionStrategy"] != "None" {
		t.Errorf("show web: evictionStrategy %q, want None", props["evictionStrategy"])
	}
	h.out.Reset()
	if err := h.run("show", "db"); err != nil {
		t.Fatal(err)
	}
	if _, props := showTable(t, h.out.String()); props["evictionStrategy"] != "" {
		t.Errorf("show db (no strategy): evictionStrategy %q, want no line", props["evictionStrategy"])
	}
}
