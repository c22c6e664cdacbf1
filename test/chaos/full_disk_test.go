package chaos

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// TestAFullStorageRoot fills a node's storage root while an instance runs there: a snapshot
// then fails with a reason that says so, the instance runs on, Active, and its disk is the
// same; once there is room again, a snapshot succeeds.
func TestAFullStorageRoot(t *testing.T) {
	ctx := context.Background()
	c := theCluster
	for _, p := range c.processes() {
		p.current().arm("", nil)
	}
	ns := "chaos-full-disk"
	if err := c.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instanceName},
		Spec: v1.InstanceSpec{Flavor: flavorSmall, Image: v1.ImageReference{Kind: v1.KindClusterImage, Name: imageName},
			NodeSelector: map[string]string{corev1.LabelHostname: smallNode}}}
	if err := c.k8s.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := settle(ctx, c, inst, instanceIn(v1.VMStateActive), v1.VMStateActive); err != nil {
		t.Fatalf("%v\n%s", err, c.tail(30))
	}
	disk, err := c.rootDisk(smallNode, string(inst.UID))
	if err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, disk)

	filler := filepath.Join(c.roots[smallNode], "filler")
	fill(t, filler)
	snap := takeSnapshot(t, c, inst, "full")
	if snap.Status.Phase != v1.SnapshotFailed || !strings.Contains(conditionMessages(snap.Status.Conditions), "no space left") {
		t.Errorf("a snapshot onto a full disk: %s, %v; want Failed, saying there is no space left", snap.Status.Phase, snap.Status.Conditions)
	}
	addRow(row{operation: "snapshot", process: "storage root full", step: "-", result: "snapshot " + string(snap.Status.Phase)})
	if err := settle(ctx, c, inst, instanceIn(v1.VMStateActive), v1.VMStateActive); err != nil {
		t.Errorf("the instance after the failed snapshot: %v", err)
	}
	if st, err := c.hosts[smallNode].State(ctx, string(inst.UID)); err != nil || st.Power != v1.PowerStateRunning {
		t.Errorf("the guest after the failed snapshot: %s (%v)", st.Power, err)
	}
	if after := fileSum(t, disk); after != before {
		t.Errorf("the disk changed while the storage root was full")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	snap = takeSnapshot(t, c, inst, "room-again")
	if snap.Status.Phase != v1.SnapshotSucceeded {
		t.Errorf("a snapshot once there is room again: %s, %v", snap.Status.Phase, snap.Status.Conditions)
	}
	addRow(row{operation: "snapshot", process: "storage root freed", step: "-", result: "snapshot " + string(snap.Status.Phase)})
	tearDown(t, c, inst)
}

// fill writes zeros into path until the filesystem has no room left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// takeSnapshot asks for a snapshot and waits until it ended.
func takeSnapshot(t *testing.T, c *cluster, inst *v1.Instance, name string) *v1.Snapshot {
	t.Helper()
	ctx := context.Background()
	snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: name}, Spec: v1.SnapshotSpec{InstanceName: inst.Name}}
	if err := c.k8s.Create(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, settleBound, "snapshot "+name, func() (bool, error) {
		if err := c.k8s.Get(ctx, client.ObjectKeyFromObject(snap), snap); err != nil {
			return false, err
		}
		return snap.Status.Phase == v1.SnapshotSucceeded || snap.Status.Phase == v1.SnapshotFailed, nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, c.tail(30))
	}
	return snap
}

func conditionMessages(conds []metav1.Condition) string {
	var out []string
	for _, c := range conds {
		out = append(out, c.Message)
	}
	return strings.ToLower(strings.Join(out, "; "))
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}
