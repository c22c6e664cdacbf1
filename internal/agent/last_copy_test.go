package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
)

// The source of a resize deletes its copy of the disk on confirmation only while the node the
// instance runs on now is up: otherwise that copy may be the only one that answers.
func TestAConfirmationWaitsWhileTheResizedInstancesNodeIsDown(t *testing.T) {
	ctx := context.Background()
	store := &storage.Node{Root: t.TempDir()}
	dir, _ := store.InstanceDir(uidMoved)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk")
	if err := os.WriteFile(disk, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	inst := instance(uidMoved, "node-2")
	inst.Status.Resize = &v1.ResizeStatus{Action: v1.ActionMigrate, SourceNode: thisNodeName, TargetNode: "node-2"}
	inst.Status.Task = &v1.Task{ID: 9, Action: v1.ActionConfirmResize, PeerNode: thisNodeName}
	target := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}, Status: v1.HypervisorStatus{State: v1.HypervisorDown, StorageID: "its-own"}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(inst, target).
		WithStatusSubresource(&v1.Instance{}, &v1.Hypervisor{}).Build()
	r := &InstanceReconciler{Client: c, Reader: c, Driver: fake.New(), Storage: store, NodeName: thisNodeName}

	res, err := r.reconcilePeerConfirm(ctx, inst.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	got := &v1.Instance{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(inst), got); err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter == 0 || got.Status.PeerReport != nil {
		t.Errorf("with the target down: requeue %s, peer report %+v", res.RequeueAfter, got.Status.PeerReport)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Errorf("the source's copy went while the target was down: %v", err)
	}

	target.Status.State = v1.HypervisorUp
	if err := c.Status().Update(ctx, target); err != nil {
		t.Fatal(err)
	}
	if _, err := r.reconcilePeerConfirm(ctx, got.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(inst), got); err != nil {
		t.Fatal(err)
	}
	if pr := got.Status.PeerReport; pr == nil || pr.TaskID != 9 || pr.TaskResult != v1.TaskSucceeded {
		t.Errorf("with the target up: peer report %+v", got.Status.PeerReport)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Errorf("the confirmed source's copy is still there: %v", err)
	}
}

// An evacuation that rebuilds from the image on a node holding older files of the instance
// keeps those files in quarantine: nothing says they are unwanted.
func TestAnEvacuationQuarantinesTheOlderFilesItReplaces(t *testing.T) {
	ctx := context.Background()
	store := &storage.Node{Root: t.TempDir()}
	if _, err := store.StorageID(); err != nil {
		t.Fatal(err)
	}
	dir, _ := store.InstanceDir(uidMoved)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "disk"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	fenced := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "fenced"}, Status: v1.HypervisorStatus{StorageID: "its-own"}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(fenced).Build()
	r := &InstanceReconciler{Client: c, Reader: c, Driver: fake.New(), Storage: store, NodeName: thisNodeName}
	if err := r.setAsideOldFiles(ctx, instance(uidMoved, thisNodeName), "fenced", 4); err != nil {
		t.Fatal(err)
	}
	held, err := store.QuarantinedInstances()
	if err != nil || len(held) != 1 || held[0].UID != uidMoved || !strings.HasPrefix(held[0].Reason, "ReplacedByEvacuation") {
		t.Fatalf("quarantine holds %+v (%v)", held, err)
	}
	if b, err := os.ReadFile(filepath.Join(held[0].Path, "disk")); err != nil || string(b) != "data" {
		t.Errorf("the quarantined disk: %q, %v", b, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the instance's directory is still in the way of the fresh disk: %v", err)
	}
}

// The target of a resize removes its copy on a revert only while the source, which boots its
// own copy next, is up.
func TestARevertWaitsWhileTheSourceIsDown(t *testing.T) {
	ctx := context.Background()
	store := &storage.Node{Root: t.TempDir()}
	if _, err := store.StorageID(); err != nil {
		t.Fatal(err)
	}
	disk, err := store.RootDisk(uidHere)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(disk), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, []byte("resized"), 0o644); err != nil {
		t.Fatal(err)
	}
	inst := instance(uidHere, thisNodeName)
	inst.Status.Resize = &v1.ResizeStatus{Action: v1.ActionMigrate, SourceNode: "node-2", TargetNode: thisNodeName, TaskID: 5}
	inst.Status.AgentReport = &v1.AgentReport{NodeName: thisNodeName}
	task := &v1.Task{ID: 6, Action: v1.ActionRevertResize}
	source := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}, Status: v1.HypervisorStatus{State: v1.HypervisorDown, StorageID: "its-own"}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(source).WithStatusSubresource(&v1.Hypervisor{}).Build()
	drv := fake.New()
	r := &InstanceReconciler{Client: c, Reader: c, Driver: drv, Storage: store, NodeName: thisNodeName}

	if done, err := r.removeResized(ctx, inst, task); err != nil || done {
		t.Fatalf("with the source down: done %v, %v", done, err)
	}
	if _, err := os.Stat(disk); err != nil || inst.Status.AgentReport.Step == v1.StepRemoved {
		t.Fatalf("the copy here went while the source was down: %v, step %q", err, inst.Status.AgentReport.Step)
	}
	if drv.CallCount("Destroy") != 0 {
		t.Error("the resized guest was destroyed while the source was down")
	}

	source.Status.State = v1.HypervisorUp
	if err := c.Status().Update(ctx, source); err != nil {
		t.Fatal(err)
	}
	if _, err := r.removeResized(ctx, inst, task); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) || inst.Status.AgentReport.Step != v1.StepRemoved {
		t.Errorf("with the source up: disk %v, step %q", err, inst.Status.AgentReport.Step)
	}
}

// A running guest of an instance recorded on another node is destroyed only with a record
// that its guest is elsewhere, and paused (never destroyed) once the manager found the guest
// running on two nodes.
func TestAStaleGuestIsDestroyedOnlyWithARecordThatItRunsElsewhere(t *testing.T) {
	recorded := func(mutate func(*v1.Instance)) *v1.Instance {
		inst := instance(uidMoved, "node-2")
		mutate(inst)
		return inst
	}
	onTwoNodes := func(i *v1.Instance) {
		i.Status.AgentReport, i.Status.PowerState = &v1.AgentReport{NodeName: "node-2"}, v1.PowerStateRunning
		i.Status.VMState = v1.VMStateError
		i.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonGuestOnTwoNodes, Message: "on node-2 and " + thisNodeName}
	}
	for _, tc := range []struct {
		what  string
		inst  *v1.Instance
		power v1.PowerState
		want  staleGuestAction
	}{
		{"nothing runs here", recorded(func(*v1.Instance) {}), v1.PowerStateShutdown, destroyStaleGuest},
		{"no record at all", recorded(func(*v1.Instance) {}), v1.PowerStateRunning, keepStaleGuest},
		{"paused here, no record", recorded(func(*v1.Instance) {}), v1.PowerStatePaused, keepStaleGuest},
		{"node-2's agent reports it running", recorded(func(i *v1.Instance) {
			i.Status.AgentReport, i.Status.PowerState = &v1.AgentReport{NodeName: "node-2"}, v1.PowerStateRunning
		}), v1.PowerStateRunning, destroyStaleGuest},
		{"node-2's agent reports it paused (a move that failed halfway)", recorded(func(i *v1.Instance) {
			i.Status.AgentReport, i.Status.PowerState = &v1.AgentReport{NodeName: "node-2"}, v1.PowerStatePaused
		}), v1.PowerStateRunning, keepStaleGuest},
		{"an old report of this node", recorded(func(i *v1.Instance) {
			i.Status.AgentReport, i.Status.PowerState = &v1.AgentReport{NodeName: thisNodeName}, v1.PowerStateRunning
		}), v1.PowerStateRunning, keepStaleGuest},
		{"a move from here succeeded", recorded(func(i *v1.Instance) {
			i.Status.MigrationRequest = &v1.ObjectRequestStatus{SourceNode: thisNodeName, TargetNode: "node-2", Result: v1.RequestSucceeded}
		}), v1.PowerStateRunning, destroyStaleGuest},
		{"a move to here failed", recorded(func(i *v1.Instance) {
			i.Status.MigrationRequest = &v1.ObjectRequestStatus{SourceNode: "node-2", TargetNode: thisNodeName, Result: v1.RequestFailed}
		}), v1.PowerStateRunning, keepStaleGuest},
		{"the guest ran on two nodes, running here", recorded(onTwoNodes), v1.PowerStateRunning, pauseStaleGuest},
		{"the guest ran on two nodes, paused here", recorded(onTwoNodes), v1.PowerStatePaused, keepStaleGuest},
		{"the guest ran on two nodes, shut off here", recorded(onTwoNodes), v1.PowerStateShutdown, destroyStaleGuest},
		{"repaired on node-2 (a hard reboot cleared the Error)", recorded(func(i *v1.Instance) {
			onTwoNodes(i)
			i.Status.VMState, i.Status.Fault = v1.VMStateActive, nil
		}), v1.PowerStatePaused, destroyStaleGuest},
	} {
		if got := staleGuestActionFor(tc.inst, thisNodeName, tc.power); got != tc.want {
			t.Errorf("%s: action %d, want %d", tc.what, got, tc.want)
		}
	}
}
