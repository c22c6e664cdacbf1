package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
)

// TestALiveMigrationWhoseReplyIsLost: libvirt starts the guest on the target and the source
// never hears of it, so it resumes its own copy and the call fails (the case libvirt leaves to
// lock managers). The manager does not record a failed move while the target has the guest:
// the instance goes to Error naming both nodes, the target's copy is paused, never destroyed,
// and a hard reboot repairs the instance on its source.
func TestALiveMigrationWhoseReplyIsLost(t *testing.T) {
	ctx := context.Background()
	c := theCluster
	_, inst := prepare(t, c, operation{name: "live migration", setup: launched})
	source, target := nodes[0], nodes[1]
	c.hosts[source].SetMigrateReplyLost(v1.PowerStateRunning)
	if err := migrate(v1.MigrationLive)(ctx, c, inst); err != nil {
		t.Fatal(err)
	}
	outcome := ""
	if err := waitFor(ctx, settleBound, "the move's outcome", func() (bool, error) {
		var err error
		outcome, err = migrationDone(instanceIn(v1.VMStateActive))(ctx, c, inst)
		return outcome != "", err
	}); err != nil {
		t.Fatalf("%v\n%s", err, c.tail(40))
	}
	addRow(row{operation: "live migration", process: "libvirt's Finish reply lost", step: "-", result: outcome})
	if inst.Status.VMState != v1.VMStateError || inst.Status.NodeName != source {
		t.Fatalf("after a lost reply: %s on %s (%s); want Error on %s", inst.Status.VMState, inst.Status.NodeName, outcome, source)
	}
	if f := inst.Status.Fault; f == nil || f.Reason != v1.ReasonGuestOnTwoNodes || !strings.Contains(f.Message, source) || !strings.Contains(f.Message, target) {
		t.Errorf("fault %+v; want GuestOnTwoNodes naming %s and %s", inst.Status.Fault, source, target)
	}
	if err := waitFor(ctx, opBound, "the target's copy paused", func() (bool, error) {
		st, err := c.hosts[target].State(ctx, string(inst.UID))
		return st.Power == v1.PowerStatePaused, err
	}); err != nil {
		t.Errorf("%v\n%s", err, c.tail(30))
	}
	if st, err := c.hosts[source].State(ctx, string(inst.UID)); err != nil || st.Power != v1.PowerStateRunning {
		t.Errorf("the source's copy: %s (%v); want it running on", st.Power, err)
	}

	if err := reboot(ctx, c, inst); err != nil {
		t.Fatal(err)
	}
	if err := settle(ctx, c, inst, answered(rebootAnswer, instanceIn(v1.VMStateActive)), ""); err != nil && !strings.Contains(err.Error(), "request Succeeded") {
		t.Fatalf("the repair: %v\n%s", err, c.tail(30))
	}
	if inst.Status.VMState != v1.VMStateActive || inst.Status.NodeName != source || inst.Status.Fault != nil {
		t.Errorf("after the hard reboot: %s on %s, fault %+v", inst.Status.VMState, inst.Status.NodeName, inst.Status.Fault)
	}
	// Repaired on its source, the instance's guest runs there: the paused copy is stale like
	// any other, and the target's sweep destroys it.
	if err := waitFor(ctx, opBound, "the paused copy destroyed after the repair", func() (bool, error) {
		st, err := c.hosts[target].State(ctx, string(inst.UID))
		return st.Power == v1.PowerStateNoState || st.Power == v1.PowerStateShutdown, err
	}); err != nil {
		t.Errorf("%v\n%s", err, c.tail(30))
	}
	tearDown(t, c, inst)
}

// TestAnImageWhoseDigestMatchesButWhoseTablesAreCorrupt: the image service refuses it
// (CorruptImage), and an instance of it waits with ImageError instead of booting garbage.
func TestAnImageWhoseDigestMatchesButWhoseTablesAreCorrupt(t *testing.T) {
	ctx := context.Background()
	c := theCluster
	path := filepath.Join(c.sources, "corrupt.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", path, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// The first L1 entry points at an L2 table far past the file's end.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	header := make([]byte, 48)
	if _, err := f.ReadAt(header, 0); err != nil {
		t.Fatal(err)
	}
	entry := binary.BigEndian.AppendUint64(nil, 1<<63|0x7fff0000)
	if _, err := f.WriteAt(entry, int64(binary.BigEndian.Uint64(header[40:48]))); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	img := &v1.ClusterImage{ObjectMeta: metav1.ObjectMeta{Name: "chaos-corrupt"},
		Spec: v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: hex.EncodeToString(sum[:]), DiskFormat: v1.DiskFormatQCOW2}}
	if err := c.k8s.Create(ctx, img); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, opBound, "the corrupt image's import to end", func() (bool, error) {
		if err := c.k8s.Get(ctx, client.ObjectKeyFromObject(img), img); err != nil {
			return false, err
		}
		return img.Status.Phase == v1.ImageError || img.Status.Phase == v1.ImageAvailable, nil
	}); err != nil {
		t.Fatal(err)
	}
	ready := meta.FindStatusCondition(img.Status.Conditions, v1.ConditionReady)
	if img.Status.Phase != v1.ImageError || ready == nil || ready.Reason != imagestore.ReasonCorruptImage {
		t.Fatalf("the corrupt image: %s, %+v; want Error with %s", img.Status.Phase, ready, imagestore.ReasonCorruptImage)
	}
	addRow(row{operation: "import", process: "a qcow2 whose digest matches, tables corrupt", step: "-", result: "image " + string(img.Status.Phase) + " (" + ready.Reason + ")"})

	ns := "chaos-corrupt-image"
	if err := c.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instanceName},
		Spec: v1.InstanceSpec{Flavor: flavorSmall, Image: v1.ImageReference{Kind: v1.KindClusterImage, Name: img.Name}}}
	if err := c.k8s.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, opBound, "the instance refused", func() (bool, error) {
		if err := c.k8s.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
			return false, err
		}
		r := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady)
		return r != nil && r.Reason == v1.ReasonImageError, nil
	}); err != nil {
		t.Errorf("%v: %+v", err, inst.Status.Conditions)
	}
	if inst.Status.NodeName != "" || inst.Status.VMState != v1.VMStateBuilding {
		t.Errorf("an instance of a corrupt image is %s on %q", inst.Status.VMState, inst.Status.NodeName)
	}
	tearDown(t, c, inst)
}
