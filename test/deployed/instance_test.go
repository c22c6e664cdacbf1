package deployed

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/test/utils"
)

// The deployed manager imports an image from its image sources (the samples' source.file,
// through the hostPath config/manager mounts) and schedules an instance; a deployed agent
// boots it on its node's libvirtd. The guest's own console says it booted, and virsh on that
// node shows the domain running.
func TestAnInstanceBootsOnARealNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	started := time.Now()
	guest, sha, err := utils.GuestImage()
	if err != nil {
		t.Fatal(err)
	}
	if err := copyFile(guest, filepath.Join(cluster.ImageSources, "guest.qcow2")); err != nil {
		t.Fatal(err)
	}
	flavors, err := os.ReadFile(filepath.Join(utils.RepoRoot(), "config", "samples", "flavors.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cluster.WorkDir, "flavors.yaml"), flavors, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := cluster.KubectlWith(ctx, cluster.AdminKubeconfig, "apply", "-f", filepath.Join(cluster.WorkDir, "flavors.yaml")); err != nil {
		t.Fatalf("flavors: %v: %s", err, out)
	}
	img := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "test-guest"},
		Spec: v1.ImageSpec{Source: v1.ImageSource{File: "/var/lib/kubenova-image-sources/guest.qcow2"}, SHA256: sha, DiskFormat: v1.DiskFormatQCOW2}}
	if err := cluster.Client.Create(ctx, img); err != nil {
		t.Fatal(err)
	}
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "on-a-real-node"},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}}}
	if err := cluster.Client.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Minute, "instance Active", func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
			return err
		}
		if inst.Status.VMState != v1.VMStateActive {
			return fmt.Errorf("vm state %q, task %q, conditions %v", inst.Status.VMState, inst.Status.TaskState, inst.Status.Conditions)
		}
		return nil
	})
	t.Logf("image and instance created to Active on %s: %s", inst.Status.NodeName, time.Since(started).Round(time.Second))

	var node *utils.DeployedNode
	for i := range cluster.Nodes {
		if cluster.Nodes[i].Name == inst.Status.NodeName {
			node = &cluster.Nodes[i]
		}
	}
	if node == nil {
		t.Fatalf("instance placed on %q, which is no node of the cluster", inst.Status.NodeName)
	}
	out, err := node.Virsh(ctx, "domstate", string(inst.UID))
	if err != nil || strings.TrimSpace(out) != "running" {
		t.Errorf("virsh domstate on %s: %q, %v; want running", node.Name, out, err)
	}
	// Production libvirt: QEMU runs as libvirt-qemu, not root, and the serial console's log is
	// written by the host's virtlogd, which holds it open.
	qemuPID, err := os.ReadFile(filepath.Join(cluster.WorkDir, "hosts", node.Name, "run", "qemu", agent.DomainName(inst.UID)+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	if uid, err := processUID(strings.TrimSpace(string(qemuPID))); err != nil || uid != libvirtQEMUUID(t) {
		t.Errorf("QEMU %s runs as uid %q (%v), want libvirt-qemu's %q", strings.TrimSpace(string(qemuPID)), uid, err, libvirtQEMUUID(t))
	}
	// The agent reports the log at its path on the node; the node's storage root is
	// hosts/<node>/storage here.
	if inst.Status.AgentReport == nil {
		t.Fatal("no agent report")
	}
	rel, ok := strings.CutPrefix(inst.Status.AgentReport.ConsoleLogPath, "/var/lib/kubenova/")
	if !ok {
		t.Fatalf("console log %q is not under the deployed storage root /var/lib/kubenova", inst.Status.AgentReport.ConsoleLogPath)
	}
	logPath := filepath.Join(cluster.WorkDir, "hosts", node.Name, "storage", rel)
	eventually(t, 2*time.Minute, "the guest's console says it booted", func() error {
		c, err := utils.ReadConsole(logPath)
		if err != nil {
			return err
		}
		if c.Last(utils.BootCount) != 1 {
			return fmt.Errorf("no first boot in %s yet", logPath)
		}
		return nil
	})
	virtlogd, err := os.ReadFile(filepath.Join(cluster.WorkDir, "hosts", node.Name, "run", "virtlogd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if !holdsOpen(strings.TrimSpace(string(virtlogd)), logPath) {
		t.Errorf("virtlogd %s does not hold the console log %s open: QEMU writes it itself", strings.TrimSpace(string(virtlogd)), logPath)
	}

	// The console log through the manager's aggregated API: kube-apiserver reaches the
	// manager's pod by its Service (kube-proxy's rules, no aggregator routing), the manager the
	// node's agent.
	path := fmt.Sprintf("/apis/%s/%s/namespaces/%s/instances/%s/%s", consolelog.APIGroup, consolelog.APIVersion,
		inst.Namespace, inst.Name, consolelog.Subresource)
	out, err = cluster.KubectlWith(ctx, cluster.AdminKubeconfig, "get", "--raw", path)
	if err != nil || !utils.BootCount.MatchString(out) {
		t.Errorf("kubectl get --raw %s: %v; want the guest's boot line in:\n%s", path, err, out)
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// processUID is the real uid of a process, from /proc/PID/status.
func processUID(pid string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0], nil
			}
		}
	}
	return "", fmt.Errorf("no Uid line in /proc/%s/status", pid)
}

func libvirtQEMUUID(t *testing.T) string {
	t.Helper()
	u, err := user.Lookup("libvirt-qemu")
	if err != nil {
		t.Fatal(err)
	}
	return u.Uid
}

// holdsOpen: one of process pid's file descriptors is path (the same file, by device and inode).
func holdsOpen(pid, path string) bool {
	want, err := os.Stat(path)
	if err != nil {
		return false
	}
	fds, err := os.ReadDir(filepath.Join("/proc", pid, "fd"))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if got, err := os.Stat(filepath.Join("/proc", pid, "fd", fd.Name())); err == nil && os.SameFile(got, want) {
			return true
		}
	}
	return false
}
