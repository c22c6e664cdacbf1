package libvirt

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/onsi/gomega"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/test/utils"
)

// console is what the guest printed so far.
type console = utils.Console

var (
	seqLine  = utils.AliveSeq
	bootLine = utils.BootCount
)

func readConsole(t *testing.T, path string) console {
	t.Helper()
	c, err := utils.ReadConsole(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func expectState(t *testing.T, d *Driver, uuid string, power v1.PowerState, reason string) driver.State {
	t.Helper()
	var st driver.State
	gomega.NewWithT(t).Eventually(func() (driver.State, error) {
		var err error
		st, err = d.State(context.Background(), uuid)
		return st, err
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.And(
		gomega.HaveField("Power", power), gomega.HaveField("Reason", reason)))
	return st
}

// expectEvent waits for an event about uuid.
func expectEvent(t *testing.T, d *Driver, uuid string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-d.Events():
			if e.UUID == uuid {
				return
			}
		case <-deadline:
			t.Fatalf("no lifecycle event for %s within 10 s", uuid)
		}
	}
}

func drainEvents(d *Driver) {
	for {
		select {
		case <-d.Events():
		default:
			return
		}
	}
}

// qemuRuns says whether a QEMU process runs for the domain: pgrep's exit 1 is "none", any
// other failure fails the test rather than pass for "gone".
func qemuRuns(t *testing.T, name string) bool {
	t.Helper()
	err := exec.Command("pgrep", "-f", "guest="+name+",").Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		return false
	}
	if err != nil {
		t.Fatalf("pgrep: %v", err)
	}
	return true
}

func TestPowerOperationsOnARealGuest(t *testing.T) {
	ctx := context.Background()
	g := gomega.NewWithT(t)
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	m := machine(t, "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e003")
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Destroy(ctx, m.UUID) }()
	waitFor(t, "first boot and a first alive line", 90*time.Second, func() (bool, error) {
		c := readConsole(t, m.ConsoleLog)
		return c.Last(bootLine) == 1 && c.Last(seqLine) >= 1, nil
	})
	first, err := d.State(ctx, m.UUID)
	if err != nil || !first.Active() {
		t.Fatalf("running domain: %+v, %v", first, err)
	}
	if !qemuRuns(t, m.Name) {
		t.Fatal("no QEMU process matches the running guest: qemuRuns would call every guest gone")
	}

	// Pause: the vCPUs stop, so the guest's counter stops; unpause: it goes on, no reboot.
	drainEvents(d)
	if err := d.Pause(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, d, m.UUID)
	expectState(t, d, m.UUID, v1.PowerStatePaused, "User")
	if err := d.Pause(ctx, m.UUID); err != nil {
		t.Fatalf("pausing a paused domain must succeed: %v", err)
	}
	pausedAt := readConsole(t, m.ConsoleLog).Last(seqLine)
	g.Consistently(func() int { return readConsole(t, m.ConsoleLog).Last(seqLine) }).
		WithTimeout(7*time.Second).WithPolling(250*time.Millisecond).Should(gomega.Equal(pausedAt), "a paused guest makes no progress")
	if err := d.Unpause(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	expectState(t, d, m.UUID, v1.PowerStateRunning, "Unpaused")
	waitFor(t, "the counter going on after unpause", 30*time.Second, func() (bool, error) {
		return readConsole(t, m.ConsoleLog).Last(seqLine) > pausedAt, nil
	})

	// Suspend: memory to disk, QEMU gone; resume: the same guest goes on.
	if err := d.Suspend(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	st := expectState(t, d, m.UUID, v1.PowerStateSuspended, "Saved")
	if st.Active() || qemuRuns(t, m.Name) {
		t.Fatalf("a suspended domain has no QEMU process: %+v", st)
	}
	if err := d.Suspend(ctx, m.UUID); err != nil {
		t.Fatalf("suspending a suspended domain must succeed: %v", err)
	}
	suspendedAt := readConsole(t, m.ConsoleLog).Last(seqLine)
	if err := d.Resume(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	st = expectState(t, d, m.UUID, v1.PowerStateRunning, "Restored")
	if st.RunID == first.RunID {
		t.Errorf("a resumed domain is a new run of QEMU: %+v", st)
	}
	waitFor(t, "the counter going on after resume", 30*time.Second, func() (bool, error) {
		return readConsole(t, m.ConsoleLog).Last(seqLine) > suspendedAt, nil
	})
	if c := readConsole(t, m.ConsoleLog); c.Last(bootLine) != 1 {
		t.Fatalf("resume must not reboot the guest:\n%s", c)
	}

	// Power off drops saved state: a later resume refuses rather than cold-boot.
	if err := d.Suspend(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	expectState(t, d, m.UUID, v1.PowerStateSuspended, "Saved")
	if err := d.PowerOff(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx, m.UUID); err != nil || st.Power != v1.PowerStateShutdown {
		t.Fatalf("after power off of a suspended domain: %+v, %v; want Shutdown", st, err)
	}
	if err := d.Resume(ctx, m.UUID); err == nil || !strings.Contains(err.Error(), "no saved state") {
		t.Fatalf("resume without saved state: %v", err)
	}

	// A clean shutdown through the ACPI power button.
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "second boot, listening to its power button", 90*time.Second, func() (bool, error) {
		c := readConsole(t, m.ConsoleLog)
		return c.Last(bootLine) == 2 && c.Listening(2), nil
	})
	if err := d.RequestShutdown(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	expectState(t, d, m.UUID, v1.PowerStateShutdown, "Shutdown")
	if err := d.RequestShutdown(ctx, m.UUID); err != nil {
		t.Fatalf("pressing the power button of a shut-off domain must succeed: %v", err)
	}

	// A QEMU that dies is a crash, not a clean shutdown.
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "third boot", 90*time.Second, func() (bool, error) {
		return readConsole(t, m.ConsoleLog).Last(bootLine) == 3, nil
	})
	if out, err := exec.Command("pkill", "-KILL", "-f", "guest="+m.Name+",").CombinedOutput(); err != nil {
		t.Fatalf("kill QEMU: %v: %s", err, out)
	}
	expectState(t, d, m.UUID, v1.PowerStateCrashed, "Crashed")
}
