package novacli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// listSample is three instances in two namespaces, given out of order.
func listSample() []v1.Instance {
	web := sampleInstance("web")
	web.Status.Addresses = "provider=10.0.0.7;storage=192.168.4.7,fd00::7"
	db := sampleInstance("db")
	db.Spec.PowerState, db.Spec.Locked, db.Spec.LockedReason = v1.DesiredStopped, true, "audit"
	db.Status.VMState, db.Status.PowerState = v1.VMStateStopped, v1.PowerStateShutdown
	db.CreationTimestamp = metav1.NewTime(testNow.Add(-3 * 24 * time.Hour))
	app := sampleInstance("app")
	app.Namespace = "prod"
	app.Spec.Flavor = "m1.small" // a resize asked for, not yet carried out
	app.Status.TaskState = v1.TaskStatePausing
	app.Status.NodeName = "host-2"
	fresh := sampleInstance("fresh")
	fresh.Namespace = "prod"
	fresh.Status = v1.InstanceStatus{}
	fresh.CreationTimestamp = metav1.NewTime(testNow.Add(-5 * time.Second))
	return []v1.Instance{*app, *web, *fresh, *db}
}

// tableRows splits rendered table output into its cells.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

func TestRenderTable(t *testing.T) {
	items := listSample()
	sortInstances(items)
	var out bytes.Buffer
	if err := renderTable(&out, items, false, testNow); err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"NAME", "STATUS", "TASK", "POWER", "NODE", "NETWORKS", "FLAVOR", "IMAGE", "LOCKED", "AGE"},
		{"db", "Stopped", "-", "Shutdown", "host-1", "-", "m1.tiny", "test-guest", "true", "3d"},
		{"web", "Active", "-", "Running", "host-1", "provider=10.0.0.7;storage=192.168.4.7,fd00::7", "m1.tiny", "test-guest", "false", "90m"},
		{"app", "Active", "Pausing", "Running", "host-2", "-", "m1.tiny→m1.small", "test-guest", "false", "90m"},
		{"fresh", "-", "-", "-", "-", "-", "m1.tiny", "test-guest", "false", "5s"},
	}
	assertRows(t, out.String(), want)
}

func TestRenderTableAllNamespaces(t *testing.T) {
	items := listSample()
	sortInstances(items)
	var out bytes.Buffer
	if err := renderTable(&out, items, true, testNow); err != nil {
		t.Fatal(err)
	}
	rows := tableRows(out.String())
	if got := strings.Join(rows[0], " "); got != "NAMESPACE NAME STATUS TASK POWER NODE NETWORKS FLAVOR IMAGE LOCKED AGE" {
		t.Errorf("header %q", got)
	}
	var order []string
	for _, r := range rows[1:] {
		order = append(order, r[0]+"/"+r[1])
	}
	if got := strings.Join(order, " "); got != "default/db default/web prod/app prod/fresh" {
		t.Errorf("rows in order %s, want by namespace then name", got)
	}
	// The columns line up: each header starts where its cells start.
	lines := strings.Split(out.String(), "\n")
	if col := strings.Index(lines[0], "STATUS"); strings.Index(lines[1], "Stopped") != col {
		t.Errorf("STATUS column not aligned:\n%s", out.String())
	}
}

func assertRows(t *testing.T, out string, want [][]string) {
	t.Helper()
	got := tableRows(out)
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d:\n%s", len(got), len(want), out)
	}
	for i := range want {
		if strings.Join(got[i], " ") != strings.Join(want[i], " ") {
			t.Errorf("row %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestListCommandOutputs(t *testing.T) {
	items := listSample()
	h := newHarness(t, &items[0], &items[1], &items[2], &items[3])
	if err := h.run("list", "-o", "name"); err != nil {
		t.Fatal(err)
	}
	if want := "instance.compute.kubenova.io/db\ninstance.compute.kubenova.io/web\n"; h.out.String() != want {
		t.Errorf("-o name printed %q, want %q", h.out.String(), want)
	}

	h.out.Reset()
	if err := h.run("list", "-A", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string `json:"kind"`
		Items []struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   metav1.ObjectMeta `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(h.out.Bytes(), &list); err != nil {
		t.Fatalf("-o json is not JSON: %v\n%s", err, h.out.String())
	}
	if list.Kind != "InstanceList" || len(list.Items) != 4 {
		t.Fatalf("kind %q with %d items", list.Kind, len(list.Items))
	}
	if it := list.Items[0]; it.APIVersion != "compute.kubenova.io/v1alpha1" || it.Kind != "Instance" || it.Metadata.Name != "db" {
		t.Errorf("first item %+v", it)
	}

	h.out.Reset()
	if err := h.run("list"); err != nil {
		t.Fatal(err)
	}
	if rows := tableRows(h.out.String()); len(rows) != 3 || rows[1][0] != "db" {
		t.Errorf("human list:\n%s", h.out.String())
	}
}

func TestListCommandSaysWhenEmpty(t *testing.T) {
	h := newHarness(t)
	if err := h.run("list"); err != nil {
		t.Fatal(err)
	}
	if h.out.Len() != 0 || h.errOut.String() != "No resources found in default namespace.\n" {
		t.Errorf("out %q, errOut %q", h.out.String(), h.errOut.String())
	}
}

func TestCompletionOffersInstanceNames(t *testing.T) {
	items := listSample()
	h := newHarness(t, &items[0], &items[1], &items[2], &items[3])
	if err := h.run("__complete", "stop", "w"); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(h.out.String(), "\n"); lines[0] != "web" || lines[1] != ":4" {
		t.Errorf("completion printed %q, want web and the no-file directive", h.out.String())
	}
}
