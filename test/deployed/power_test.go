package deployed

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/test/utils"
)

// The power operations and the ones that write a guest's disks (a suspend's memory image, a
// rescue disk, a rebuild's fresh root disk) under production libvirt, where QEMU runs as
// libvirt-qemu and libvirt hands it each file. They run after the moves, on their instance; the
// boot count the guest keeps on its root disk says which disk booted.

// powerStep runs kubectl nova VERB NAME --wait and checks the instance's vm state and virsh's
// domain state on its node.
func powerStep(ctx context.Context, t *testing.T, verb string, want v1.VMState, virsh string, extra ...string) (*v1.Instance, utils.DeployedNode) {
	t.Helper()
	started := time.Now()
	mustNova(ctx, t, append([]string{verb, mover, "--wait", "--timeout=3m"}, extra...)...)
	inst := waitSettled(ctx, t, mover, want, time.Minute)
	t.Logf("FIGURE %s %s: %s", verb, strings.Join(extra, " "), time.Since(started).Round(10*time.Millisecond))
	node := nodeNamed(t, inst.Status.NodeName)
	if out, err := node.Virsh(ctx, "domstate", string(inst.UID)); err != nil || strings.TrimSpace(out) != virsh {
		t.Errorf("after %s: virsh domstate on %s: %q, %v; want %s", verb, node.Name, out, err, virsh)
	}
	return inst, node
}

func TestPowerOperationsOnARealNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	inst := waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	node := nodeNamed(t, inst.Status.NodeName)
	boots := consoleOn(t, node, inst).Last(utils.BootCount)
	if boots == 0 {
		t.Fatal("no boot count on the guest's console")
	}
	bootedAgain := func(what string) {
		t.Helper()
		boots++
		want := boots
		waitConsole(t, node, inst, what, func(c utils.Console) bool { return c.Last(utils.BootCount) == want })
	}

	powerStep(ctx, t, "stop", v1.VMStateStopped, "shut off")
	powerStep(ctx, t, "start", v1.VMStateActive, "running")
	bootedAgain("a boot after the start")
	powerStep(ctx, t, "reboot", v1.VMStateActive, "running")
	bootedAgain("a boot after the soft reboot")
	powerStep(ctx, t, "reboot", v1.VMStateActive, "running", "--hard")
	bootedAgain("a boot after the hard reboot")

	// Suspend: libvirt saves the memory to a file it writes as QEMU's user; the resumed guest
	// counts on without booting.
	waitConsole(t, node, inst, "the guest counting", func(c utils.Console) bool { return c.Last(utils.AliveSeq) > 0 })
	seq := consoleOn(t, node, inst).Last(utils.AliveSeq)
	powerStep(ctx, t, "suspend", v1.VMStateSuspended, "shut off")
	save := filepath.Join(cluster.WorkDir, "hosts", node.Name, "lib", "qemu", "save", agent.DomainName(inst.UID)+".save")
	if _, err := os.Stat(save); err != nil {
		t.Errorf("the suspended guest's memory: %v", err)
	}
	powerStep(ctx, t, "resume", v1.VMStateActive, "running")
	waitConsole(t, node, inst, "the resumed guest counting on", func(c utils.Console) bool { return c.Last(utils.AliveSeq) > seq })
	if got := consoleOn(t, node, inst).Last(utils.BootCount); got != boots {
		t.Errorf("boot count %d after the resume, want %d: the guest booted", got, boots)
	}
}

// Rescue boots a fresh copy of the image (its boot count starts at 1) with the instance's own
// disk attached; unrescue boots the own disk again (its count goes on); a rebuild replaces the
// root disk with a fresh one from the image (the count starts over).
func TestRescueAndRebuildOnARealNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	inst := waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	node := nodeNamed(t, inst.Status.NodeName)
	boots := consoleOn(t, node, inst).Last(utils.BootCount)
	if boots < 2 {
		t.Fatalf("boot count %d: the guest's disk should have booted several times by now, or the rescue's first boot proves nothing", boots)
	}

	powerStep(ctx, t, "rescue", v1.VMStateRescued, "running")
	waitConsole(t, node, inst, "the rescue disk's first boot", func(c utils.Console) bool { return c.Last(utils.BootCount) == 1 })
	out, err := node.Virsh(ctx, "domblklist", string(inst.UID))
	if err != nil || !strings.Contains(out, "vdb") {
		t.Errorf("virsh domblklist of the rescued guest: %v; want its own disk attached second:\n%s", err, out)
	}
	powerStep(ctx, t, "unrescue", v1.VMStateActive, "running")
	waitConsole(t, node, inst, "the own disk booting again", func(c utils.Console) bool { return c.Last(utils.BootCount) == boots+1 })

	powerStep(ctx, t, "rebuild", v1.VMStateActive, "running")
	// The last boot line said boots+1 (above): a count of 1 is the new disk's first boot.
	waitConsole(t, node, inst, "the rebuilt disk's first boot", func(c utils.Console) bool { return c.Last(utils.BootCount) == 1 })
	qemuUser(t, node, inst)
}
