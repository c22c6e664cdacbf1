package libvirt

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/onsi/gomega"
	"libvirt.org/go/libvirtxml"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/test/utils"
)

// These tests run the driver against a real libvirtd (one host started by
// hack/libvirt-hosts.sh) booting the test guest under QEMU/TCG.
var (
	hostURI string
	hostDir string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kubenova-libvirt-driver-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	script := filepath.Join(utils.RepoRoot(), "hack", "libvirt-hosts.sh")
	if out, err := exec.Command(script, "start", dir, "1").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "start a libvirt host (run make libvirt first): %v\n%s", err, out)
		os.Exit(1)
	}
	uri, err := os.ReadFile(filepath.Join(dir, "host-1", "uri"))
	if err == nil {
		hostURI, hostDir = strings.TrimSpace(string(uri)), dir
	}
	code := 1
	if err == nil {
		code = m.Run()
	} else {
		fmt.Fprintln(os.Stderr, err)
	}
	if out, err := exec.Command(script, "stop", dir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "stop the libvirt host: %v\n%s", err, out)
	}
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// machine makes a machine whose root disk is an overlay on the test guest.
func machine(t *testing.T, uuid string) driver.Machine {
	t.Helper()
	guest, _, err := utils.GuestImage()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(hostDir, "host-1", "storage", uuid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", guest, disk).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return driver.Machine{UUID: uuid, Name: "kubenova-" + uuid, Namespace: "tests", InstanceName: "vm-" + uuid[:4],
		VCPUs: 1, MemoryMiB: 256, RootDisk: disk, ConsoleLog: filepath.Join(dir, "console.log"), VirtType: v1.VirtTypeQEMU}
}

// waitFor polls cond with Gomega's Eventually until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	gomega.NewWithT(t).Eventually(cond).WithTimeout(timeout).WithPolling(100*time.Millisecond).
		Should(gomega.BeTrue(), what)
}

func TestSpawnIsIdempotentAndBootsTheGuest(t *testing.T) {
	ctx := context.Background()
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	m := machine(t, "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e001")

	if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateNoState || st.Active() {
		t.Fatalf("before spawn: %+v, %v; want NoState", st, err)
	}
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatalf("a second spawn of a running domain must succeed: %v", err)
	}
	if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateRunning || st.Reason != "Booted" || !st.Active() {
		t.Fatalf("after spawn: %+v, %v", st, err)
	}
	waitFor(t, "the guest's boot line on the console log", 90*time.Second, func() (bool, error) {
		b, err := os.ReadFile(m.ConsoleLog)
		if os.IsNotExist(err) {
			return false, nil
		}
		return strings.Contains(string(b), "kubenova-test-guest: booted count=1"), err
	})

	doms, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, dom := range doms {
		if dom.UUID == m.UUID {
			found = true
			if dom.Namespace != "tests" || dom.InstanceName != m.InstanceName || dom.Power != v1.PowerStateRunning {
				t.Errorf("listed as %+v", dom)
			}
		}
	}
	if !found {
		t.Fatalf("List does not show the domain: %+v", doms)
	}

	if err := d.Destroy(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	if err := d.Destroy(ctx, m.UUID); err != nil {
		t.Fatalf("destroying a missing domain must succeed: %v", err)
	}
	if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateNoState {
		t.Fatalf("after destroy: %+v, %v", st, err)
	}
	if _, err := os.Stat(m.RootDisk); err != nil {
		t.Errorf("Destroy must leave the disk alone: %v", err)
	}
}

func TestSpawnStartsAStoppedDomainAgainFromTheSameDisk(t *testing.T) {
	ctx := context.Background()
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	m := machine(t, "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e002")
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Destroy(ctx, m.UUID) }()
	bootLine := func(n int) func() (bool, error) {
		return func() (bool, error) {
			b, err := os.ReadFile(m.ConsoleLog)
			if os.IsNotExist(err) {
				return false, nil
			}
			return strings.Contains(string(b), fmt.Sprintf("booted count=%d", n)), err
		}
	}
	waitFor(t, "first boot", 90*time.Second, bootLine(1))
	// Power the domain off behind the driver's back, as a guest shutting itself down would.
	if out, err := exec.Command("virsh", "-c", hostURI, "destroy", m.Name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateShutdown || st.Reason != "Destroyed" {
		t.Fatalf("after virsh destroy: %+v, %v; want Shutdown (Destroyed)", st, err)
	}
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "second boot from the same disk (the guest's counter on its disk goes up)", 90*time.Second, bootLine(2))
}

func TestHostInfo(t *testing.T) {
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	info, err := d.HostInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Hostname != "host-1" || info.HostUUID == "" || info.VCPUs < 1 || info.MemoryMiB < 256 ||
		!regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(info.LibvirtVersion) || info.QEMUVersion == "" {
		t.Errorf("host info %+v", info)
	}
	// KVM is what the host's libvirtd lists in its capabilities, read apart here with virsh.
	caps, err := exec.Command("virsh", "-c", hostURI, "capabilities").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Contains(string(caps), "<domain type='kvm'"); info.KVM != want {
		t.Errorf("HostInfo.KVM %v, but virsh capabilities lists a kvm domain: %v", info.KVM, want)
	}
}

// offersKVM reads the host architecture's guests only.
func TestOffersKVM(t *testing.T) {
	for _, tc := range []struct {
		name, xml string
		want      bool
	}{
		{"kvm for the host's arch", `<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
			<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>`, true},
		{"qemu only", `<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
			<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/></arch></guest></capabilities>`, false},
		{"kvm for another arch", `<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
			<guest><os_type>hvm</os_type><arch name='i686'><domain type='kvm'/></arch></guest>
			<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/></arch></guest></capabilities>`, false},
	} {
		var caps libvirtxml.Caps
		if err := caps.Unmarshal(tc.xml); err != nil {
			t.Fatal(err)
		}
		if got := offersKVM(&caps); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestLongCallsSurviveALibvirtdRestart: six spawns at once, each on an operation connection of
// its own; after libvirtd restarts under the driver, the dead operation connections are
// replaced, not failed on.
func TestLongCallsSurviveALibvirtdRestart(t *testing.T) {
	ctx := context.Background()
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	var machines []driver.Machine
	for i := range 6 {
		machines = append(machines, machine(t, fmt.Sprintf("0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e1%02d", i)))
	}
	errs := make(chan error, len(machines))
	for _, m := range machines {
		go func() { errs <- d.Spawn(ctx, m) }()
	}
	for range machines {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range machines {
		defer func() { _ = d.Destroy(ctx, m.UUID) }()
		if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateRunning {
			t.Fatalf("%s after the spawns: %+v, %v", m.Name, st, err)
		}
	}

	script := filepath.Join(utils.RepoRoot(), "hack", "libvirt-hosts.sh")
	if out, err := exec.Command(script, "restart-daemon", hostDir, "host-1").CombinedOutput(); err != nil {
		t.Fatalf("restart libvirtd: %v: %s", err, out)
	}
	// The operation connections were opened before the restart and are dead now: the calls
	// meet them and must reconnect.
	for _, m := range machines {
		if err := d.PowerOff(ctx, m.UUID); err != nil {
			t.Fatalf("power off %s after the restart: %v", m.Name, err)
		}
		if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateShutdown {
			t.Fatalf("%s after the power off: %+v, %v", m.Name, st, err)
		}
	}
}

// TestPingTellsWhetherLibvirtdAnswers: the agent's readiness. Ping answers while libvirtd
// runs, fails while it is down, and answers again, on a new connection, once it is back.
func TestPingTellsWhetherLibvirtdAnswers(t *testing.T) {
	ctx := context.Background()
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Ping(ctx); err != nil {
		t.Fatalf("ping while libvirtd runs: %v", err)
	}
	script := filepath.Join(utils.RepoRoot(), "hack", "libvirt-hosts.sh")
	if out, err := exec.Command(script, "kill-host", hostDir, "host-1").CombinedOutput(); err != nil {
		t.Fatalf("kill libvirtd: %v: %s", err, out)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = exec.Command(script, "start-host", hostDir, "host-1").Run()
		}
	}()
	if err := d.Ping(ctx); err == nil {
		t.Fatal("ping while libvirtd is down answered")
	}
	if out, err := exec.Command(script, "start-host", hostDir, "host-1").CombinedOutput(); err != nil {
		t.Fatalf("start libvirtd again: %v: %s", err, out)
	}
	restarted = true
	waitFor(t, "ping answers once libvirtd is back", 30*time.Second, func() (bool, error) {
		return d.Ping(ctx) == nil, nil
	})
}
