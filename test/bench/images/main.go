// Command images measures the image operations through kubenova (snapshot, rebuild, rescue,
// unrescue, shelve with its offload, unshelve) beside the same steps done by hand with virsh
// and qemu-img on the same libvirt host, test guest and domain XML, taking turns at going
// first. It prints the median time of each side, their ratio and their difference.
//
//	go run ./test/bench/images --runs 3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	runs := flag.Int("runs", 3, "runs of each operation on each side")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench-images", "where the cluster keeps its state")
	flag.Parse()
	if err := run(*runs, *workDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// operation is one image operation on both sides; each returns once the operation is done as
// a user sees it (for those that boot the guest: its next boot line).
type operation struct {
	name     string
	kubenova func(b *bench, ctx context.Context, i int) error
	baseline func(b *bench, ctx context.Context, i int) error
}

type bench struct {
	cluster *utils.Cluster
	host    utils.Host
	c       client.Client
	inst    *v1.Instance
	// The baseline: a domain driven by hand, its files in dir, and a directory playing the
	// image store.
	id, domain, dir, store string
	guest                  string
}

func run(runs int, workDir string) error {
	ctx := context.Background()
	cluster, err := benchutil.StartOneHost(ctx, workDir)
	if err != nil {
		return err
	}
	defer cluster.Stop()
	b := &bench{cluster: cluster, host: cluster.Hosts[0], c: cluster.Client}
	if err := b.setUp(ctx); err != nil {
		return err
	}
	defer func() {
		_, _ = b.host.Virsh(ctx, "destroy", b.domain)
		_, _ = b.host.Virsh(ctx, "undefine", b.domain)
	}()

	ops := []operation{
		{"snapshot", (*bench).kubenovaSnapshot, (*bench).virshSnapshot},
		{"rebuild", (*bench).kubenovaRebuild, (*bench).virshRebuild},
		{"rescue", (*bench).kubenovaRescue, (*bench).virshRescue},
		{"unrescue", (*bench).kubenovaUnrescue, (*bench).virshUnrescue},
		{"shelve", (*bench).kubenovaShelve, (*bench).virshShelve},
		{"unshelve", (*bench).kubenovaUnshelve, (*bench).virshUnshelve},
	}
	times := map[string][2][]time.Duration{}
	// Operations run in rounds (snapshot, rebuild, rescue, unrescue, shelve, unshelve), each
	// round leaving both guests running as they started.
	for i := range runs {
		for _, op := range ops {
			sides := []struct {
				idx int
				f   func(*bench, context.Context, int) error
			}{{0, op.baseline}, {1, op.kubenova}}
			if i%2 == 1 {
				slices.Reverse(sides)
			}
			t := times[op.name]
			for _, side := range sides {
				start := time.Now()
				if err := side.f(b, ctx, i); err != nil {
					return fmt.Errorf("%s (run %d): %w", op.name, i+1, err)
				}
				t[side.idx] = append(t[side.idx], time.Since(start))
			}
			times[op.name] = t
		}
	}
	fmt.Printf("image operations of the test guest (1 vCPU, 256 MiB, TCG) on %s, %d runs per side\n\n", benchutil.Machine(), runs)
	fmt.Printf("%-10s %12s %12s %7s %10s\n", "operation", "by hand", "kubenova", "ratio", "diff")
	for _, op := range ops {
		mb, mk := benchutil.Median(times[op.name][0]), benchutil.Median(times[op.name][1])
		fmt.Printf("%-10s %12s %12s %7.2f %10s\n", op.name, benchutil.Ms(mb), benchutil.Ms(mk), float64(mk)/float64(mb), benchutil.Ms(mk-mb))
	}
	fmt.Println("\nBy hand: the same steps with virsh and qemu-img on the same host, guest and domain XML (snapshot: virsh backup-begin")
	fmt.Println("to a file, copied to a store directory; rebuild: destroy, a new overlay, start; rescue and unrescue: destroy, define")
	fmt.Println("with or without the rescue disk, start; shelve: ACPI shutdown, qemu-img convert to the store, undefine, delete the")
	fmt.Println("disk; unshelve: copy from the store, a new overlay, define, start). Times run from the request to the state reached")
	fmt.Println("and, for the operations that boot the guest, to its next boot line; kubenova's snapshot and shelve include the image")
	fmt.Println("service verifying the upload.")
	return nil
}

func (b *bench) setUp(ctx context.Context) error {
	b.inst = &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bench"},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}}}
	if err := b.c.Create(ctx, b.inst); err != nil {
		return err
	}
	if err := b.waitInstance(ctx, func(i *v1.Instance) bool { return benchutil.RestsIn(i, v1.VMStateActive) }); err != nil {
		return err
	}
	var err error
	if b.guest, _, err = utils.GuestImage(); err != nil {
		return err
	}
	b.id = uuid.NewString()
	b.domain = "baseline-" + b.id
	b.dir = filepath.Join(b.host.StorageRoot, "baseline", b.id)
	b.store = filepath.Join(b.host.StorageRoot, "baseline-store")
	for _, d := range []string{b.dir, b.store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := b.qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b.guest, b.disk(), "1G"); err != nil {
		return err
	}
	if err := b.defineAndStart(ctx, ""); err != nil {
		return err
	}
	if err := booted(b.instLog(), 0); err != nil {
		return err
	}
	return booted(b.baseLog(), 0)
}

func (b *bench) disk() string    { return filepath.Join(b.dir, "disk") }
func (b *bench) baseLog() string { return filepath.Join(b.dir, "console.log") }
func (b *bench) instLog() string { return b.inst.Status.AgentReport.ConsoleLogPath }

func (b *bench) qemuImg(ctx context.Context, args ...string) error {
	if out, err := benchutil.Run(ctx, "qemu-img", args...); err != nil {
		return fmt.Errorf("qemu-img %s: %w: %s", args[0], err, out)
	}
	return nil
}

func (b *bench) virsh(ctx context.Context, args ...string) error {
	if out, err := b.host.Virsh(ctx, args...); err != nil {
		return fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// defineAndStart defines the baseline domain (with a rescue disk when set) and starts it.
func (b *bench) defineAndStart(ctx context.Context, rescueDisk string) error {
	x, err := domainxml.Build(driver.Machine{UUID: b.id, Name: b.domain, VCPUs: 1, MemoryMiB: 256,
		RootDisk: b.disk(), RescueDisk: rescueDisk, ConsoleLog: b.baseLog(), VirtType: v1.VirtTypeQEMU})
	if err != nil {
		return err
	}
	path := filepath.Join(b.dir, "domain.xml")
	if err := os.WriteFile(path, []byte(x), 0o644); err != nil {
		return err
	}
	if err := b.virsh(ctx, "define", path); err != nil {
		return err
	}
	return b.virsh(ctx, "start", b.domain)
}

// boots is how many boot lines a console log shows.
func boots(log string) int {
	c, _ := utils.ReadConsole(log)
	return c.Boots()
}

// booted waits until a console log shows more than before boot lines.
func booted(log string, before int) error {
	return benchutil.Poll(120*time.Second, func() (bool, error) { return boots(log) > before, nil })
}

func (b *bench) waitInstance(ctx context.Context, done func(*v1.Instance) bool) error {
	return benchutil.Poll(180*time.Second, func() (bool, error) {
		err := b.c.Get(ctx, client.ObjectKeyFromObject(b.inst), b.inst)
		return err == nil && done(b.inst), err
	})
}

func (b *bench) patch(ctx context.Context, body string) error {
	return b.c.Patch(ctx, b.inst, client.RawPatch(types.MergePatchType, []byte(body)))
}

// --- kubenova ------------------------------------------------------------------------------

func (b *bench) kubenovaSnapshot(ctx context.Context, i int) error {
	snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("bench-%d", i)},
		Spec: v1.SnapshotSpec{InstanceName: b.inst.Name, DeleteImageWithSnapshot: true}}
	if err := b.c.Create(ctx, snap); err != nil {
		return err
	}
	return benchutil.Poll(180*time.Second, func() (bool, error) {
		err := b.c.Get(ctx, client.ObjectKeyFromObject(snap), snap)
		if err == nil && snap.Status.Phase == v1.SnapshotFailed {
			return false, fmt.Errorf("snapshot failed: %s", snap.Status.Message)
		}
		return err == nil && snap.Status.Phase == v1.SnapshotSucceeded, err
	})
}

func (b *bench) kubenovaRebuild(ctx context.Context, _ int) error {
	before := boots(b.instLog())
	at := metav1.NewMicroTime(time.Now().Truncate(time.Microsecond))
	if err := b.patch(ctx, fmt.Sprintf(`{"spec":{"rebuildRequest":{"requestedAt":%q}}}`, at.UTC().Format(metav1.RFC3339Micro))); err != nil {
		return err
	}
	if err := b.waitInstance(ctx, func(i *v1.Instance) bool {
		ack := i.Status.RebuildRequest
		return ack != nil && ack.RequestedAt.Equal(&at) && ack.Result == v1.RequestSucceeded && benchutil.RestsIn(i, v1.VMStateActive)
	}); err != nil {
		return err
	}
	return booted(b.instLog(), before)
}

func (b *bench) kubenovaRescue(ctx context.Context, _ int) error {
	return b.kubenovaBoot(ctx, `{"spec":{"rescue":{}}}`, v1.VMStateRescued)
}

func (b *bench) kubenovaUnrescue(ctx context.Context, _ int) error {
	return b.kubenovaBoot(ctx, `{"spec":{"rescue":null}}`, v1.VMStateActive)
}

func (b *bench) kubenovaShelve(ctx context.Context, _ int) error {
	if err := b.patch(ctx, `{"spec":{"powerState":"Shelved"}}`); err != nil {
		return err
	}
	return b.waitInstance(ctx, func(i *v1.Instance) bool { return benchutil.RestsIn(i, v1.VMStateShelvedOffloaded) })
}

func (b *bench) kubenovaUnshelve(ctx context.Context, _ int) error {
	return b.kubenovaBoot(ctx, `{"spec":{"powerState":"Running"}}`, v1.VMStateActive)
}

// kubenovaBoot patches the spec and waits until the instance rests in want and its guest
// printed a new boot line. (An offloaded instance has no console log: it starts anew.)
func (b *bench) kubenovaBoot(ctx context.Context, body string, want v1.VMState) error {
	before := boots(b.instLog())
	if err := b.patch(ctx, body); err != nil {
		return err
	}
	if err := b.waitInstance(ctx, func(i *v1.Instance) bool { return benchutil.RestsIn(i, want) }); err != nil {
		return err
	}
	return booted(b.instLog(), before)
}

// --- by hand ---------------------------------------------------------------------------------

func (b *bench) virshSnapshot(ctx context.Context, i int) error {
	target := filepath.Join(b.dir, "snapshot.qcow2")
	_ = os.Remove(target)
	backup := fmt.Sprintf("<domainbackup mode='push'><disks><disk name='vda' backup='yes' type='file'><target file='%s'/><driver type='qcow2'/></disk></disks></domainbackup>", target)
	path := filepath.Join(b.dir, "backup.xml")
	if err := os.WriteFile(path, []byte(backup), 0o644); err != nil {
		return err
	}
	if err := b.virsh(ctx, "backup-begin", b.domain, path); err != nil {
		return err
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) {
		out, err := b.host.Virsh(ctx, "domjobinfo", b.domain)
		return strings.Contains(out, "None"), err
	}); err != nil {
		return err
	}
	out, err := benchutil.Run(ctx, "cp", target, filepath.Join(b.store, fmt.Sprintf("snapshot-%d", i)))
	if err != nil {
		return fmt.Errorf("cp: %w: %s", err, out)
	}
	return nil
}

func (b *bench) virshRebuild(ctx context.Context, _ int) error {
	before := boots(b.baseLog())
	if err := b.virsh(ctx, "destroy", b.domain); err != nil {
		return err
	}
	_ = os.Remove(b.disk())
	if err := b.qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b.guest, b.disk(), "1G"); err != nil {
		return err
	}
	if err := b.virsh(ctx, "start", b.domain); err != nil {
		return err
	}
	return booted(b.baseLog(), before)
}

func (b *bench) rescueDisk() string { return filepath.Join(b.dir, "disk.rescue") }

func (b *bench) virshRescue(ctx context.Context, _ int) error {
	before := boots(b.baseLog())
	if err := b.virsh(ctx, "destroy", b.domain); err != nil {
		return err
	}
	if err := b.qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b.guest, b.rescueDisk()); err != nil {
		return err
	}
	if err := b.defineAndStart(ctx, b.rescueDisk()); err != nil {
		return err
	}
	return booted(b.baseLog(), before)
}

func (b *bench) virshUnrescue(ctx context.Context, _ int) error {
	before := boots(b.baseLog())
	if err := b.virsh(ctx, "destroy", b.domain); err != nil {
		return err
	}
	if err := b.defineAndStart(ctx, ""); err != nil {
		return err
	}
	if err := booted(b.baseLog(), before); err != nil {
		return err
	}
	return os.Remove(b.rescueDisk())
}

func (b *bench) shelved() string { return filepath.Join(b.store, "shelved") }

func (b *bench) virshShelve(ctx context.Context, _ int) error {
	if err := b.virsh(ctx, "shutdown", "--mode", "acpi", b.domain); err != nil {
		return err
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) {
		out, err := b.host.Virsh(ctx, "domstate", b.domain)
		return strings.TrimSpace(out) == "shut off", err
	}); err != nil {
		return err
	}
	if err := b.qemuImg(ctx, "convert", "-q", "-O", "qcow2", b.disk(), b.shelved()); err != nil {
		return err
	}
	if err := b.virsh(ctx, "undefine", b.domain); err != nil {
		return err
	}
	return os.Remove(b.disk())
}

func (b *bench) virshUnshelve(ctx context.Context, _ int) error {
	before := boots(b.baseLog())
	base := filepath.Join(b.dir, "base")
	if out, err := benchutil.Run(ctx, "cp", b.shelved(), base); err != nil {
		return fmt.Errorf("cp: %w: %s", err, out)
	}
	if err := b.qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, b.disk(), "1G"); err != nil {
		return err
	}
	if err := b.defineAndStart(ctx, ""); err != nil {
		return err
	}
	return booted(b.baseLog(), before)
}
