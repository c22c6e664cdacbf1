package deployed

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/test/utils"
)

// The moves between the two real nodes, as a user asks for them (kubectl nova), on one
// instance in turn: live migration over TLS as the DaemonSet ships it, cold migration, resize,
// snapshot, shelve and unshelve. They run after TestAnInstanceBootsOnARealNode, whose flavors
// and image they use. The test guest counts its boots on its own disk ("booted count=N") and
// prints "alive seq=K" every few seconds, so the console says whether the guest kept running
// through a move and whether its disk came along.
const mover = "mover"

// nova runs kubectl nova as the cluster's administrator, in the default namespace.
func nova(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(utils.BinDir(), "kubectl-nova"), append([]string{"-n", "default"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cluster.AdminKubeconfig)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustNova runs kubectl nova and fails the test if it fails.
func mustNova(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := nova(ctx, args...)
	if err != nil {
		t.Fatalf("kubectl nova %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func getInstance(ctx context.Context, t *testing.T, name string) *v1.Instance {
	t.Helper()
	inst := &v1.Instance{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, inst); err != nil {
		t.Fatal(err)
	}
	return inst
}

// waitSettled waits until the instance rests in vm state want, Ready, and returns it.
func waitSettled(ctx context.Context, t *testing.T, name string, want v1.VMState, timeout time.Duration) *v1.Instance {
	t.Helper()
	return waitInstance(ctx, t, name, want, metav1.ConditionTrue, timeout)
}

// waitResized waits until the instance waits in Resized for its confirmation: not Ready (reason
// Resized) until a person decides.
func waitResized(ctx context.Context, t *testing.T, name string, timeout time.Duration) *v1.Instance {
	t.Helper()
	inst := waitInstance(ctx, t, name, v1.VMStateResized, metav1.ConditionFalse, timeout)
	if ready := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady); ready.Reason != controllers.ReasonResized {
		t.Fatalf("Resized, not Ready for reason %q (%s), want %q", ready.Reason, ready.Message, controllers.ReasonResized)
	}
	return inst
}

// waitInstance waits until the instance is in vm state want with no task, its Ready condition
// of this generation with status ready, and returns it.
func waitInstance(ctx context.Context, t *testing.T, name string, want v1.VMState, ready metav1.ConditionStatus, timeout time.Duration) *v1.Instance {
	t.Helper()
	inst := &v1.Instance{}
	eventually(t, timeout, fmt.Sprintf("%s %s, Ready %s", name, want, ready), func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, inst); err != nil {
			return err
		}
		c := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady)
		if inst.Status.VMState != want || inst.Status.TaskState != "" || c == nil ||
			c.Status != ready || c.ObservedGeneration != inst.Generation {
			return fmt.Errorf("vm state %q, task %q, Ready %v", inst.Status.VMState, inst.Status.TaskState, c)
		}
		return nil
	})
	return inst
}

func nodeNamed(t *testing.T, name string) utils.DeployedNode {
	t.Helper()
	for _, n := range cluster.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("%q is no node of the cluster", name)
	return utils.DeployedNode{}
}

// otherNode is the node that is not name (the cluster has two).
func otherNode(t *testing.T, name string) utils.DeployedNode {
	t.Helper()
	for _, n := range cluster.Nodes {
		if n.Name != name {
			return n
		}
	}
	t.Fatalf("no node but %s", name)
	return utils.DeployedNode{}
}

// instanceDir is where the instance's files are on a node: its storage root is
// hosts/<node>/storage here, /var/lib/kubenova in the agent's pod.
func instanceDir(node utils.DeployedNode, inst *v1.Instance) string {
	return filepath.Join(cluster.WorkDir, "hosts", node.Name, "storage", "instances", string(inst.UID))
}

func consoleOn(t *testing.T, node utils.DeployedNode, inst *v1.Instance) utils.Console {
	t.Helper()
	c, err := utils.ReadConsole(filepath.Join(instanceDir(node, inst), "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitConsole waits until the guest's console on node satisfies ok.
func waitConsole(t *testing.T, node utils.DeployedNode, inst *v1.Instance, what string, ok func(utils.Console) bool) {
	t.Helper()
	path := filepath.Join(instanceDir(node, inst), "console.log")
	eventually(t, 3*time.Minute, what, func() error {
		c, err := utils.ReadConsole(path)
		if err != nil {
			return err
		}
		if !ok(c) {
			return fmt.Errorf("not in %s (boot count %d, alive seq %d)", path, c.Last(utils.BootCount), c.Last(utils.AliveSeq))
		}
		return nil
	})
}

// waitFilesGone waits until the instance's directory is gone from node's storage.
func waitFilesGone(t *testing.T, node utils.DeployedNode, inst *v1.Instance, what string) {
	t.Helper()
	eventually(t, time.Minute, what, func() error {
		if _, err := os.Stat(instanceDir(node, inst)); !os.IsNotExist(err) {
			return fmt.Errorf("%s: %v", instanceDir(node, inst), err)
		}
		return nil
	})
}

// runsOnlyOn checks with virsh that the instance's domain runs on node and is not defined on
// the other one.
func runsOnlyOn(ctx context.Context, t *testing.T, node utils.DeployedNode, inst *v1.Instance) {
	t.Helper()
	if out, err := node.Virsh(ctx, "domstate", string(inst.UID)); err != nil || strings.TrimSpace(out) != "running" {
		t.Errorf("virsh domstate on %s: %q, %v; want running", node.Name, out, err)
	}
	other := otherNode(t, node.Name)
	eventually(t, time.Minute, "the domain gone from "+other.Name, func() error {
		out, err := other.Virsh(ctx, "list", "--all", "--uuid")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if strings.Contains(out, string(inst.UID)) {
			return fmt.Errorf("still defined there")
		}
		return nil
	})
}

// qemuUser checks that the instance's QEMU on node runs as libvirt-qemu, and returns its pid.
func qemuUser(t *testing.T, node utils.DeployedNode, inst *v1.Instance) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cluster.WorkDir, "hosts", node.Name, "run", "qemu", agent.DomainName(inst.UID)+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	if uid, err := processUID(pid); err != nil || uid != libvirtQEMUUID(t) {
		t.Errorf("QEMU %s on %s runs as uid %q (%v), want libvirt-qemu's", pid, node.Name, uid, err)
	}
	return pid
}

var createdMigration = regexp.MustCompile(`migration\.compute\.kubenova\.io/(\S+) created`)

// The DaemonSet as shipped: each node's agent advertises qemu+tls://<node IP>/system, the node's
// libvirtd listens there with TLS only, and the move encrypts the data too (--migration-tls).
// The guest moves live with its disk (each node has its own storage) and runs on: its counter
// goes on, no boot between.
func TestLiveMigrationOverTLSBetweenRealNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: mover},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}}}
	if err := cluster.Client.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	inst = waitSettled(ctx, t, mover, v1.VMStateActive, 4*time.Minute)
	source := nodeNamed(t, inst.Status.NodeName)
	target := otherNode(t, source.Name)
	waitConsole(t, source, inst, "the guest booted and counts", func(c utils.Console) bool {
		return c.Last(utils.BootCount) == 1 && c.Last(utils.AliveSeq) > 0
	})

	hv := &v1.Hypervisor{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Name: target.Name}, hv); err != nil {
		t.Fatal(err)
	}
	if want := "qemu+tls://" + target.IP + "/system"; hv.Status.MigrationURI != want {
		t.Fatalf("Hypervisor %s advertises %q, want the DaemonSet's %q", target.Name, hv.Status.MigrationURI, want)
	}
	listening, err := exec.CommandContext(ctx, "ss", "-Htln").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(listening), target.IP+":16514 ") {
		t.Fatalf("nothing listens on %s:16514 (libvirtd's TLS port):\n%s", target.IP, listening)
	}
	if strings.Contains(string(listening), ":16509 ") {
		t.Errorf("a libvirtd listens without TLS (16509):\n%s", listening)
	}

	// The data is encrypted: without the target's QEMU certificate libvirt refuses the move
	// (QEMU cannot make its TLS credentials), and the guest runs on at the source.
	serverCert := filepath.Join(cluster.WorkDir, "hosts", target.Name, "tls", "pki", "qemu", "server-cert.pem")
	if err := os.Rename(serverCert, serverCert+".away"); err != nil {
		t.Fatal(err)
	}
	out, err := nova(ctx, "migrate", mover, "--live", "--node", target.Name, "--wait", "--timeout=3m")
	if err := os.Rename(serverCert+".away", serverCert); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(out, "/etc/pki/qemu/server-cert.pem") {
		t.Fatalf("a live migration to a node without its QEMU certificate: %v; want it refused for the certificate:\n%s", err, out)
	}
	inst = waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	if inst.Status.NodeName != source.Name {
		t.Fatalf("after the refused move the instance is on %s, want %s", inst.Status.NodeName, source.Name)
	}
	runsOnlyOn(ctx, t, source, inst)

	seqBefore := consoleOn(t, source, inst).Last(utils.AliveSeq)
	started := time.Now()
	out = mustNova(ctx, t, "migrate", mover, "--live", "--node", target.Name, "--wait", "--timeout=5m")
	took := time.Since(started)
	created := createdMigration.FindStringSubmatch(out)
	if created == nil || !strings.Contains(out, "runs on "+target.Name) {
		t.Fatalf("kubectl nova migrate --live said:\n%s", out)
	}
	mig := &v1.Migration{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: created[1]}, mig); err != nil {
		t.Fatal(err)
	}
	if mig.Status.Phase != v1.MigrationSucceeded || mig.Status.SourceNode != source.Name ||
		mig.Status.TargetNode != target.Name || !mig.Status.BlockMigration {
		t.Errorf("Migration %s: phase %s, %s -> %s, block %v; want Succeeded, %s -> %s, block (local storage)",
			mig.Name, mig.Status.Phase, mig.Status.SourceNode, mig.Status.TargetNode, mig.Status.BlockMigration, source.Name, target.Name)
	}
	t.Logf("FIGURE live migration over TLS %s -> %s with its disk: %s from kubectl to Succeeded; libvirt %d ms, downtime %d ms",
		source.Name, target.Name, took.Round(10*time.Millisecond), mig.Status.TotalMillis, mig.Status.DowntimeMillis)

	inst = waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	if inst.Status.NodeName != target.Name {
		t.Fatalf("instance on %s after the move, want %s", inst.Status.NodeName, target.Name)
	}
	runsOnlyOn(ctx, t, target, inst)
	qemuUser(t, target, inst)
	// The target's console log starts at the move: the guest counts on from where it was, and
	// never booted there.
	waitConsole(t, target, inst, "the same guest counting on, on "+target.Name, func(c utils.Console) bool {
		return c.Last(utils.AliveSeq) > seqBefore
	})
	if c := consoleOn(t, target, inst); c.Boots() != 0 {
		t.Errorf("the guest booted on %s: %d boot lines", target.Name, c.Boots())
	}
	waitFilesGone(t, source, inst, "the source's copy removed once the guest runs on the target")
}

// A cold migration back: the guest is powered off, its disk copied, and it boots on the other
// node, where it waits in Resized until confirmed. The boot count on its disk says it is the
// same disk.
func TestColdMigrationBetweenRealNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	inst := getInstance(ctx, t, mover)
	source := nodeNamed(t, inst.Status.NodeName)
	target := otherNode(t, source.Name)
	started := time.Now()
	out := mustNova(ctx, t, "migrate", mover, "--node", target.Name, "--wait", "--timeout=5m")
	if !strings.Contains(out, target.Name) {
		t.Fatalf("kubectl nova migrate said:\n%s", out)
	}
	inst = waitResized(ctx, t, mover, time.Minute)
	if inst.Status.NodeName != target.Name {
		t.Fatalf("instance on %s, want %s", inst.Status.NodeName, target.Name)
	}
	runsOnlyOn(ctx, t, target, inst)
	mustNova(ctx, t, "resize", mover, "--confirm", "--wait", "--timeout=3m")
	inst = waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	t.Logf("FIGURE cold migration %s -> %s and its confirmation: %s", source.Name, target.Name, time.Since(started).Round(10*time.Millisecond))
	qemuUser(t, target, inst)
	waitConsole(t, target, inst, "the guest's second boot, from its own disk, on "+target.Name, func(c utils.Console) bool {
		return c.Last(utils.BootCount) == 2
	})
	waitFilesGone(t, source, inst, "the source's copy removed once the move is confirmed")
}

// A resize to the bigger flavor: the guest boots with its memory and disk, from its own disk.
func TestResizeOnRealNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	started := time.Now()
	mustNova(ctx, t, "resize", mover, "m1.small", "--wait", "--timeout=5m")
	waitResized(ctx, t, mover, time.Minute)
	mustNova(ctx, t, "resize", mover, "--confirm", "--wait", "--timeout=3m")
	inst := waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	t.Logf("FIGURE resize m1.tiny -> m1.small and its confirmation: %s", time.Since(started).Round(10*time.Millisecond))
	node := nodeNamed(t, inst.Status.NodeName)
	out, err := node.Virsh(ctx, "dominfo", string(inst.UID))
	if err != nil || !regexp.MustCompile(`(?m)^Max memory:\s+524288 KiB`).MatchString(out) {
		t.Errorf("virsh dominfo on %s: %v; want m1.small's 512 MiB:\n%s", node.Name, err, out)
	}
	out, err = node.Virsh(ctx, "domblkinfo", string(inst.UID), "vda")
	if err != nil || !regexp.MustCompile(`(?m)^Capacity:\s+2147483648$`).MatchString(out) {
		t.Errorf("virsh domblkinfo on %s: %v; want m1.small's 2 GiB disk:\n%s", node.Name, err, out)
	}
	waitConsole(t, node, inst, "the guest's third boot, with the new flavor", func(c utils.Console) bool {
		return c.Last(utils.BootCount) == 3
	})
}

// A snapshot lands in the image store (on the node labelled for it) as an Image; a shelved
// instance is offloaded (no domain, no files on its node) and boots again, unshelved, from
// the image the shelve saved: its boot count goes on.
func TestSnapshotShelveAndUnshelveOnRealNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	started := time.Now()
	mustNova(ctx, t, "snapshot", mover, "mover-snap", "--wait", "--timeout=4m")
	img := &v1.Image{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "mover-snap"}, img); err != nil {
		t.Fatal(err)
	}
	if img.Status.Phase != v1.ImageAvailable || img.Status.SHA256 == "" {
		t.Fatalf("snapshot image: phase %q, digest %q; want Available with a digest", img.Status.Phase, img.Status.SHA256)
	}
	t.Logf("FIGURE snapshot of a running guest to an Available image: %s", time.Since(started).Round(10*time.Millisecond))
	if !fileWithDigestIn(t, cluster.ImageStore, img.Status.SHA256) {
		t.Errorf("no file in the image store %s has the snapshot's digest %s", cluster.ImageStore, img.Status.SHA256)
	}

	inst := getInstance(ctx, t, mover)
	node := nodeNamed(t, inst.Status.NodeName)
	started = time.Now()
	mustNova(ctx, t, "shelve", mover, "--wait", "--timeout=5m")
	inst = waitSettled(ctx, t, mover, v1.VMStateShelvedOffloaded, 2*time.Minute)
	t.Logf("FIGURE shelve and offload: %s", time.Since(started).Round(10*time.Millisecond))
	if out, err := node.Virsh(ctx, "list", "--all", "--uuid"); err != nil || strings.Contains(out, string(inst.UID)) {
		t.Errorf("virsh list on %s after the offload: %v\n%s", node.Name, err, out)
	}
	waitFilesGone(t, node, inst, "the offloaded instance's files gone from "+node.Name)

	started = time.Now()
	mustNova(ctx, t, "unshelve", mover, "--wait", "--timeout=5m")
	inst = waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	t.Logf("FIGURE unshelve of an offloaded instance to Active on %s: %s", inst.Status.NodeName, time.Since(started).Round(10*time.Millisecond))
	node = nodeNamed(t, inst.Status.NodeName)
	runsOnlyOn(ctx, t, node, inst)
	qemuUser(t, node, inst)
	waitConsole(t, node, inst, "the guest's fourth boot, from the shelved image", func(c utils.Console) bool {
		return c.Last(utils.BootCount) == 4
	})
}

// fileWithDigestIn says whether a file under dir has the SHA-256 digest sum.
func fileWithDigestIn(t *testing.T, dir, sum string) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || found {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		found = hex.EncodeToString(h.Sum(nil)) == sum
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
