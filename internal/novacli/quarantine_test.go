package novacli

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// quarantine-list merges what nodes sharing a storage report, orders by age and says how many
// the Hypervisors could not list.
func TestQuarantineListMergesSharedStorage(t *testing.T) {
	old := v1.QuarantinedInstance{UID: "00000000-0000-4000-8000-000000000001", Namespace: "team-a", Name: "web",
		Reason: "InstanceVanished: gone", Since: metav1.NewTime(testNow.Add(-2 * time.Hour)), Bytes: 3 << 20}
	young := v1.QuarantinedInstance{UID: "00000000-0000-4000-8000-000000000002", Reason: "NoRecord: none",
		Since: metav1.NewTime(testNow.Add(-5 * time.Minute)), Bytes: 1 << 30}
	hv := func(name, storageID string, count int32, q ...v1.QuarantinedInstance) *v1.Hypervisor {
		return &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1.HypervisorStatus{
			StorageID: storageID, StorageRoot: "/var/lib/kubenova/", Quarantined: q, QuarantinedCount: count}}
	}
	h := newHarness(t, hv("node-1", "shared", 1, old), hv("node-2", "shared", 1, old), hv("node-3", "own", 3, young))
	if err := h.run("quarantine-list"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(h.out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("printed %d lines, want a header, two rows and a note:\n%s", len(lines), h.out)
	}
	for i, want := range [][]string{
		{"UID", "INSTANCE", "NODES", "SIZE", "SINCE", "PATH", "REASON"},
		{old.UID, "team-a/web", "node-1,node-2", "3Mi", "120m", "/var/lib/kubenova/quarantine/" + old.UID, "InstanceVanished: gone"},
		{young.UID, "-", "node-3", "1Gi", "5m", "NoRecord: none"},
		{"(2 more not listed"},
	} {
		for _, field := range want {
			if !strings.Contains(lines[i], field) {
				t.Errorf("line %d %q lacks %q", i, lines[i], field)
			}
		}
	}
}
