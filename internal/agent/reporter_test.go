package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
)

const (
	uidHere      = "00000000-0000-4000-8000-00000000000a" // lives here
	uidMoved     = "00000000-0000-4000-8000-00000000000b" // evacuated to another node
	uidDeleted   = "00000000-0000-4000-8000-00000000000c" // deleted while the node was down
	uidDirOnly   = "00000000-0000-4000-8000-00000000000d" // deleted before its domain was made
	uidNotOurs   = "00000000-0000-4000-8000-00000000000e" // a domain kubenova did not define
	thisNodeName = "node-1"
)

func instance(uid, node string) *v1.Instance {
	return &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "i-" + uid[len(uid)-1:], UID: types.UID(uid)},
		Status: v1.InstanceStatus{NodeName: node}}
}

func TestCleanupOrphans(t *testing.T) {
	t.Run("directories without owner records", func(t *testing.T) { testCleanupOrphans(t, false) })
	t.Run("directories with owner records", func(t *testing.T) { testCleanupOrphans(t, true) })
}

// testCleanupOrphans runs the cleanup on a node with one instance of each kind. With owner
// records, it must find everything out without listing the cluster's instances.
func testCleanupOrphans(t *testing.T, owners bool) {
	ctx := context.Background()
	store := &storage.Node{Root: t.TempDir()}
	drv := fake.New()
	for _, uid := range []string{uidHere, uidMoved, uidDeleted, uidDirOnly} {
		dir, _ := store.InstanceDir(uid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "disk"), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
		if owners {
			if err := store.WriteOwner(uid, storage.Owner{Namespace: "ns", Name: "i-" + uid[len(uid)-1:]}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, uid := range []string{uidHere, uidMoved, uidDeleted, uidNotOurs} {
		name := "i-" + uid[len(uid)-1:]
		if uid == uidNotOurs {
			name = "" // no kubenova metadata
		}
		if err := drv.Spawn(ctx, driver.Machine{UUID: uid, Name: "d-" + uid, Namespace: "ns", InstanceName: name, RootDisk: "/x"}); err != nil {
			t.Fatal(err)
		}
	}
	lists := 0
	// The instance that moved runs on node-2, as node-2's agent reports.
	moved := instance(uidMoved, "node-2")
	moved.Status.AgentReport, moved.Status.PowerState = &v1.AgentReport{NodeName: "node-2"}, v1.PowerStateRunning
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).
		WithObjects(instance(uidHere, thisNodeName), moved).
		WithInterceptorFuncs(interceptor.Funcs{List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			lists++
			return c.List(ctx, list, opts...)
		}}).Build()
	r := &Reporter{Client: c, Reader: c, Driver: drv, Storage: store, NodeName: thisNodeName}

	if err := r.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if owners && lists != 0 {
		t.Errorf("the cleanup listed the cluster's instances %d times; it should ask about its own", lists)
	}
	if !owners && lists != 1 {
		t.Errorf("without owner records the cleanup lists the instances once, not %d times", lists)
	}
	for uid, want := range map[string]bool{uidHere: true, uidMoved: false, uidDeleted: false, uidNotOurs: true} {
		if drv.Has(uid) != want {
			t.Errorf("domain %s defined: %v, want %v", uid, drv.Has(uid), want)
		}
	}
	for uid, want := range map[string]bool{uidHere: true, uidMoved: true, uidDeleted: false, uidDirOnly: false} {
		dir, err := store.InstanceDir(uid)
		if err != nil {
			t.Fatal(err)
		}
		_, err = os.Stat(filepath.Join(dir, "disk"))
		if (err == nil) != want {
			t.Errorf("disk of %s in place: %v, want %v", uid, err == nil, want)
		}
	}
	// The vanished instances' disks are in quarantine, whole, with a record of whose they were.
	expectQuarantined(t, store, owners, uidDeleted, uidDirOnly)

	// A second sweep finds nothing more to do and keeps the quarantine as it is.
	if err := r.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	expectQuarantined(t, store, owners, uidDeleted, uidDirOnly)
}

// expectQuarantined checks that exactly uids are in the node's quarantine, each with its disk's
// data and a record naming this node (and the owner, when the directories recorded one).
func expectQuarantined(t *testing.T, store *storage.Node, owners bool, uids ...string) {
	t.Helper()
	held, err := store.QuarantinedInstances()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]storage.Quarantined{}
	for _, q := range held {
		got[q.UID] = q
	}
	if len(got) != len(uids) {
		t.Errorf("quarantine holds %v, want %v", got, uids)
	}
	for _, uid := range uids {
		q, ok := got[uid]
		if !ok {
			t.Errorf("%s is not in quarantine", uid)
			continue
		}
		b, err := os.ReadFile(filepath.Join(q.Path, "disk"))
		if err != nil || string(b) != "data" {
			t.Errorf("quarantined disk of %s: %q, %v", uid, b, err)
		}
		if q.Node != thisNodeName || q.Since.IsZero() || q.Reason == "" || q.Bytes <= 0 {
			t.Errorf("quarantine record of %s: %+v", uid, q)
		}
		wantName := ""
		if owners || uid == uidDeleted { // a domain names its instance even without an owner record
			wantName = "i-" + uid[len(uid)-1:]
		}
		if q.Name != wantName {
			t.Errorf("quarantine record of %s names %q, want %q", uid, q.Name, wantName)
		}
	}
}

// TestQuarantineIsReportedAndExpires: the Hypervisor lists what the quarantine holds; files
// are deleted once their grace period has ended, and never with a grace of zero.
func TestQuarantineIsReportedAndExpires(t *testing.T) {
	ctx := context.Background()
	store := &storage.Node{Root: t.TempDir()}
	for _, uid := range []string{uidDeleted, uidDirOnly} {
		dir, _ := store.InstanceDir(uid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "disk"), []byte("data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := store.QuarantineInstanceFiles(uidDeleted, storage.QuarantineRecord{Node: thisNodeName, Reason: "test", Since: old}); err != nil {
		t.Fatal(err)
	}
	if err := store.QuarantineInstanceFiles(uidDirOnly, storage.QuarantineRecord{Node: thisNodeName, Reason: "test", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithStatusSubresource(&v1.Hypervisor{}).Build()
	r := &Reporter{Client: c, Reader: c, Driver: fake.New(), Storage: store, NodeName: thisNodeName}
	if err := r.ReportHypervisor(ctx); err != nil {
		t.Fatal(err)
	}
	hv := &v1.Hypervisor{}
	if err := c.Get(ctx, types.NamespacedName{Name: thisNodeName}, hv); err != nil {
		t.Fatal(err)
	}
	if hv.Status.QuarantinedCount != 2 || len(hv.Status.Quarantined) != 2 || hv.Status.Quarantined[0].UID != uidDeleted {
		t.Fatalf("the Hypervisor reports %d quarantined, %+v; want both, oldest first", hv.Status.QuarantinedCount, hv.Status.Quarantined)
	}

	// No grace: kept for ever.
	if err := r.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if held, err := store.QuarantinedInstances(); err != nil || len(held) != 2 {
		t.Fatalf("with no grace period the quarantine holds %d (%v), want 2", len(held), err)
	}
	// A day's grace: the two-day-old one goes, the new one stays.
	r.QuarantineGrace = 24 * time.Hour
	if err := r.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	held, err := store.QuarantinedInstances()
	if err != nil || len(held) != 1 || held[0].UID != uidDirOnly {
		t.Fatalf("after the grace period the quarantine holds %+v (%v), want only %s", held, err, uidDirOnly)
	}
	if err := r.ReportHypervisor(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: thisNodeName}, hv); err != nil {
		t.Fatal(err)
	}
	if hv.Status.QuarantinedCount != 1 || len(hv.Status.Quarantined) != 1 {
		t.Fatalf("the Hypervisor reports %d quarantined, %+v; want 1", hv.Status.QuarantinedCount, hv.Status.Quarantined)
	}
}

// TestMovedFilesAreRemovedOnlyWhenSafe: the files an instance that lives elsewhere left here go
// only from storage this node does not share, when the instance's node is known to have other
// storage, or when this node made them for a move that never arrived.
func TestMovedFilesAreRemovedOnlyWhenSafe(t *testing.T) {
	const (
		uidSeparate = "00000000-0000-4000-8000-000000000001" // on node-2: its own storage
		uidUnknown  = "00000000-0000-4000-8000-000000000002" // on node-3: no Hypervisor
		uidSameID   = "00000000-0000-4000-8000-000000000003" // on node-4: reports this storage's ID
		uidIncoming = "00000000-0000-4000-8000-000000000004" // on node-2, migrating to this node
		uidPrepared = "00000000-0000-4000-8000-000000000005" // on node-5 (shared), a move here never arrived
	)
	ctx := context.Background()
	for _, shared := range []bool{false, true} {
		store := &storage.Node{Root: t.TempDir()}
		mine, err := store.StorageID()
		if err != nil {
			t.Fatal(err)
		}
		objs := []client.Object{
			&v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}, Status: v1.HypervisorStatus{StorageID: "elsewhere"}},
			&v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-4"}, Status: v1.HypervisorStatus{StorageID: mine, StorageShared: true}},
			&v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-5"}, Status: v1.HypervisorStatus{StorageID: "nfs", StorageShared: true}},
		}
		nodes := map[string]string{uidSeparate: "node-2", uidUnknown: "node-3", uidSameID: "node-4", uidIncoming: "node-2", uidPrepared: "node-5"}
		for uid, node := range nodes {
			inst := instance(uid, node)
			if uid == uidIncoming {
				inst.Status.Task = &v1.Task{ID: 7, Action: v1.ActionLiveMigrate,
					Migration: &v1.MigrationTask{SourceNode: "node-2", TargetNode: thisNodeName}}
			}
			objs = append(objs, inst)
			if err := store.WriteOwner(uid, storage.Owner{Namespace: "ns", Name: inst.Name}); err != nil {
				t.Fatal(err)
			}
		}
		if err := store.WriteTaskMark(uidPrepared, storage.TaskMark{TaskID: 3, RunID: -1, Step: incomingStep(thisNodeName)}); err != nil {
			t.Fatal(err)
		}
		c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(objs...).Build()
		r := &Reporter{Client: c, Reader: c, Driver: fake.New(), Storage: store, NodeName: thisNodeName, SharedStorage: shared}
		if err := r.CleanupOrphans(ctx); err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{uidSeparate: shared, uidUnknown: true, uidSameID: true, uidIncoming: true, uidPrepared: false}
		for uid, kept := range want {
			dir, err := store.InstanceDir(uid)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); (err == nil) != kept {
				t.Errorf("shared storage %v: files of %s kept: %v, want %v", shared, uid, err == nil, kept)
			}
		}
	}
}

// A storage root that is not the one recorded for the node (an unmounted mount point, another
// filesystem) is refused: the Hypervisor says why and keeps its record, and the sweep neither
// stops a guest nor moves a file; all resumes once the recorded root is back.
func TestNothingIsSweptFromARefusedStorageRoot(t *testing.T) {
	ctx := context.Background()
	store := &storage.Node{Root: t.TempDir()}
	id, err := store.StorageID()
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := store.InstanceDir(uidDeleted)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "disk"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	drv := fake.New()
	if err := drv.Spawn(ctx, driver.Machine{UUID: uidDeleted, Name: "d", Namespace: "ns", InstanceName: "i-c", RootDisk: "/x"}); err != nil {
		t.Fatal(err)
	}
	hv := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: thisNodeName}, Status: v1.HypervisorStatus{StorageID: "the-recorded-one"}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(hv).WithStatusSubresource(&v1.Hypervisor{}).Build()
	r := &Reporter{Client: c, Reader: c, Driver: drv, Storage: store, NodeName: thisNodeName}

	if err := r.ReportHypervisor(ctx); err != nil {
		t.Fatal(err)
	}
	got := &v1.Hypervisor{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(hv), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.StorageID != "the-recorded-one" || !strings.Contains(got.Status.StorageUnavailable, "not the-recorded-one") {
		t.Errorf("refused root reported as %q, %q", got.Status.StorageID, got.Status.StorageUnavailable)
	}
	if err := r.CleanupOrphans(ctx); err == nil || !strings.Contains(err.Error(), "no sweep") {
		t.Errorf("sweep of a refused root: %v", err)
	}
	if !drv.Has(uidDeleted) {
		t.Error("the sweep of a refused root destroyed a domain")
	}
	if held, err := store.QuarantinedInstances(); err != nil || len(held) != 0 {
		t.Errorf("the sweep of a refused root quarantined %v (%v)", held, err)
	}

	// The administrator says this root is the node's (or the right one is mounted again).
	got.Status.StorageID = id
	if err := c.Status().Update(ctx, got); err != nil {
		t.Fatal(err)
	}
	if err := r.ReportHypervisor(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(hv), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.StorageUnavailable != "" || got.Status.StorageID != id {
		t.Errorf("accepted root reported as %q, %q", got.Status.StorageID, got.Status.StorageUnavailable)
	}
	if err := r.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if drv.Has(uidDeleted) {
		t.Error("the vanished instance's domain survived the sweep of an accepted root")
	}
	expectQuarantined(t, store, false, uidDeleted)
}
