package utils

import (
	"context"
	"crypto/sha1"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Stopping the hosts of one work directory leaves another's alone, even when the first
// directory's records name the other's processes: a libvirtd that died by itself leaves its
// pid and its mount namespace's id behind, and the kernel gives both to the next comer (a
// freed namespace id goes to the very next namespace made). This happened with the e2e
// suite's two disruptive clusters: one cluster's stop killed the other's restarted host.
func TestStopSparesAnotherDirectorysHostThatGotItsPidAndNamespace(t *testing.T) {
	script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, script, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("libvirt-hosts.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// Not t.TempDir(): a socket's path must fit in 108 bytes.
	base, err := os.MkdirTemp("", "hosts")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	dead, alive := filepath.Join(base, "dead"), filepath.Join(base, "alive")
	for _, dir := range []string{dead, alive} {
		run("start", dir, "1")
		t.Cleanup(func() { _ = exec.Command(script, "stop", dir).Run() })
	}
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}

	deadPid, err := strconv.Atoi(read(filepath.Join(dead, "host-1", "run", "libvirtd.pid")))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(deadPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Reaped by init; gone once signal 0 fails.
	for syscall.Kill(deadPid, 0) == nil {
		if ctx.Err() != nil {
			t.Fatalf("libvirtd %d outlived SIGKILL", deadPid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// What the kernel does by chance, done on purpose: the dead host's records now name the
	// live host's libvirtd and namespace.
	for _, file := range []string{"mntns", "run/libvirtd.pid"} {
		if err := os.WriteFile(filepath.Join(dead, "host-1", file), []byte(read(filepath.Join(alive, "host-1", file))), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	run("stop", dead)
	if out := run("status", alive); !strings.Contains(out, "host-1 running") {
		t.Errorf("the other directory's host no longer answers after stop of %s: %s", dead, out)
	}
	// And stop still stops what is its own.
	run("stop", alive)
	out, err := exec.CommandContext(ctx, script, "status", alive).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "host-1 not-answering") {
		t.Errorf("status after stop: %v: %s", err, out)
	}
}

// A work directory whose subnet is already held elsewhere gets another one, and a bridge left by
// a run that died (its work directory gone, nothing attached) is removed; one whose directory is
// still there is not. The first failed a CI run: a killed run's bridge held the subnet that a new
// temporary directory's name hashed to, and start refused.
func TestStartFindsAFreeSubnetAndRemovesOnlyLeftBridges(t *testing.T) {
	script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sh := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	base, err := os.MkdirTemp("", "hosts")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	dir := filepath.Join(base, "d")
	sum := sha1.Sum([]byte(dir))
	hashed := fmt.Sprintf("10.254.%d", int(sum[0])%250+1)

	suffix := strconv.Itoa(os.Getpid() % 100000)
	holder, left, kept := "kntake"+suffix, "knbrleft"+suffix, "knbrkept"+suffix
	for _, link := range []string{holder, left, kept} {
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", link).Run() })
	}
	sh("ip", "link", "add", holder, "type", "bridge") // no dummy driver on every machine
	sh("ip", "addr", "add", hashed+".1/24", "dev", holder)
	sh("ip", "link", "add", left, "type", "bridge")
	sh("ip", "link", "set", left, "alias", "kubenova-libvirt-hosts:"+filepath.Join(base, "gone"))
	sh("ip", "link", "add", kept, "type", "bridge")
	sh("ip", "link", "set", kept, "alias", "kubenova-libvirt-hosts:"+base)

	sh(script, "start", dir, "1")
	t.Cleanup(func() { _ = exec.Command(script, "stop", dir).Run() })
	cidr, err := os.ReadFile(filepath.Join(dir, "network", "cidr"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(cidr)); got == hashed+".0/24" || !strings.HasPrefix(got, "10.254.") {
		t.Errorf("subnet %s: want one in 10.254.0.0/16 other than %s.0/24, which %s holds", got, hashed, holder)
	}
	if err := exec.CommandContext(ctx, "ip", "link", "show", left).Run(); err == nil {
		t.Errorf("bridge %s, whose work directory is gone, is still there", left)
	}
	sh("ip", "link", "show", kept)
	sh("ip", "link", "show", holder)
}

// A host started again after kill-host (a test's "power failure" of libvirt) is the host it was:
// its first start's profile (production: QEMU as libvirt-qemu, virtlogd), and, while another
// process holds its mount namespace (the node's containerd and kubelet, hack/kube-node.sh), that
// namespace with what was mounted there. A libvirtd in a new namespace did not see the node's
// storage root: the deployed profile's next launch on that node failed on its console log.
func TestAHostStartedAgainKeepsItsProfileAndItsNodesNamespace(t *testing.T) {
	script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, err := os.MkdirTemp("", "hosts")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(base) })
	dir := filepath.Join(base, "d")
	start := exec.CommandContext(ctx, script, "start", dir, "1")
	start.Env = append(os.Environ(), "LIBVIRT_HOST_PROFILE=production")
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("start: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(script, "stop", dir).Run() })
	hd := filepath.Join(dir, "host-1")
	pid := func(file string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(hd, "run", file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}

	// The "node": a process in the host's namespace that mounted something there (a marker
	// over the host's storage directory, seen only inside).
	marker := filepath.Join(base, "marker")
	if err := os.MkdirAll(marker, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(marker, "mounted-by-the-node"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	storage := filepath.Join(hd, "storage")
	node := exec.Command("nsenter", "--target", pid("libvirtd.pid"), "--mount", "--",
		"sh", "-c", `mount --bind "$0" "$1" && exec sleep 600`, marker, storage)
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Process.Kill(); _ = node.Wait() })
	seen := func(p string) bool {
		_, err := os.Stat(filepath.Join("/proc", p, "root", storage, "mounted-by-the-node"))
		return err == nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for !seen(strconv.Itoa(node.Process.Pid)) {
		if time.Now().After(deadline) {
			t.Fatal("the node's mount did not appear in the host's namespace")
		}
		time.Sleep(50 * time.Millisecond) // the mount command runs
	}

	for _, cmd := range []string{"kill-host", "start-host"} { // without LIBVIRT_HOST_PROFILE
		if out, err := exec.CommandContext(ctx, script, cmd, dir, "host-1").CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	if !seen(pid("libvirtd.pid")) {
		t.Error("the libvirtd started again does not see what the node mounted: it is in another namespace")
	}
	conf, err := os.ReadFile(filepath.Join(hd, "etc", "qemu.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), `user = "libvirt-qemu"`) {
		t.Errorf("qemu.conf after start-host is not the production profile's:\n%s", conf)
	}
	if err := syscall.Kill(mustAtoi(t, pid("virtlogd.pid")), 0); err != nil {
		t.Errorf("no virtlogd after start-host: %v", err)
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
