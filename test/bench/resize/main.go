// Command resize measures kubenova's cold moves beside the same moves done by hand with virsh
// and qemu-img on the same test guest and hosts, taking turns at going first: a cold migration
// between hosts that share storage (host-1 and host-2), one through the image store (host-1
// and host-3, which has its own storage), and a resize in place between two flavors. Each side
// powers the guest off cleanly, moves (or copies and grows) the disk, and boots it with the
// new definition; kubenova's moves are then confirmed, and the confirmation is timed apart. It
// prints the median of each side, their ratio and their difference.
//
//	go run ./test/bench/resize --runs 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
	libvirtdriver "github.com/kubenova/kubenova/internal/driver/libvirt"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	runs := flag.Int("runs", 5, "moves of each kind on each side")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench-resize", "where the cluster keeps its state")
	flag.Parse()
	if err := run(*runs, *workDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// The two flavors a resize in place goes between: the same disk, another size of guest.
var flavors = [2]v1.FlavorSpec{{VCPUs: 1, MemoryMiB: 256, DiskGiB: 2}, {VCPUs: 2, MemoryMiB: 384, DiskGiB: 2}}

// kind is one kind of move: an instance and a baseline domain that go back and forth.
type kind struct {
	name  string
	hosts [2]utils.Host
	// inPlace: a resize on one host between the two flavors; else a cold migration between
	// two hosts, through the image store unless shared.
	inPlace, shared bool
	inst            *v1.Instance
	// where each side is now (an index into hosts), and which flavor each has.
	instAt, baseAt     int
	instSize, baseSize int
	id, domain         string
	byHand, kubenova   []time.Duration
	confirms           []time.Duration
}

type bench struct {
	c     client.Client
	guest string
	// store is the image store's directory, where the hand-made move puts its copy too.
	store string
	// libvirt holds one connection per host, on which the hand-made move watches the state.
	libvirt map[string]*libvirtdriver.Driver
}

func run(runs int, workDir string) error {
	ctx := context.Background()
	_ = os.RemoveAll(filepath.Join(workDir, "hosts"))
	cluster, err := utils.StartCluster(ctx, workDir, 3, utils.WithSharedStorage(2))
	if err != nil {
		return err
	}
	defer cluster.Stop()
	if err := benchutil.Prepare(ctx, cluster, workDir); err != nil {
		return err
	}
	b := &bench{c: cluster.Client, store: cluster.ImageStore, libvirt: map[string]*libvirtdriver.Driver{}}
	for _, h := range cluster.Hosts {
		lv, err := libvirtdriver.New(h.URI)
		if err != nil {
			return err
		}
		defer func() { _ = lv.Close() }()
		b.libvirt[h.Name] = lv
	}
	if b.guest, _, err = utils.GuestImage(); err != nil {
		return err
	}
	for i, f := range flavors {
		fl := &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench.%d", i)}, Spec: f}
		if err := client.IgnoreAlreadyExists(b.c.Create(ctx, fl)); err != nil {
			return err
		}
	}
	h := cluster.Hosts
	kinds := []*kind{
		{name: "cold, shared", hosts: [2]utils.Host{h[0], h[1]}, shared: true},
		{name: "cold, image store", hosts: [2]utils.Host{h[0], h[2]}},
		{name: "resize in place", hosts: [2]utils.Host{h[0], h[0]}, inPlace: true},
	}
	for i, k := range kinds {
		if err := b.setUp(ctx, k, fmt.Sprintf("bench-%d", i)); err != nil {
			return err
		}
		defer b.tearDown(k)
	}
	for i := range runs {
		for _, k := range kinds {
			sides := []func(context.Context, *kind) error{b.byHand, b.kubenovaMove}
			if i%2 == 1 {
				slices.Reverse(sides)
			}
			for _, side := range sides {
				if err := side(ctx, k); err != nil {
					return fmt.Errorf("%s (run %d): %w", k.name, i+1, err)
				}
			}
		}
	}
	fmt.Printf("cold moves of the test guest (TCG) on %s, %d moves per side\n\n", benchutil.Machine(), runs)
	fmt.Printf("%-18s %12s %12s %7s %10s %12s\n", "move", "by hand", "kubenova", "ratio", "diff", "confirm")
	for _, k := range kinds {
		mh, mk := benchutil.Median(k.byHand), benchutil.Median(k.kubenova)
		fmt.Printf("%-18s %12s %12s %7.2f %10s %12s\n", k.name, benchutil.Ms(mh), benchutil.Ms(mk), float64(mk)/float64(mh),
			benchutil.Ms(mk-mh), benchutil.Ms(benchutil.Median(k.confirms)))
	}
	fmt.Println("\nby hand: virsh shutdown until libvirt reports it shut off (over one open connection), virsh undefine, then the")
	fmt.Println("disk moved (shared storage and in place:")
	fmt.Println("set aside and copied beside itself with cp --sparse, the two flavors having one disk size; image store:")
	fmt.Println("qemu-img convert to a standalone copy, cp into the store, cp from the store to the target, a qcow2 overlay on it),")
	fmt.Println("define with the new size, start. kubenova: from the Migration's creation (or")
	fmt.Println("spec.flavor's change) to the instance waiting in Resized; confirm: from spec.resizeRequest to Active. Both")
	fmt.Println("guests have booted (printed alive) before each move.")
	return nil
}

// setUp launches the kind's instance and defines and starts its baseline domain, both on the
// kind's first host.
func (b *bench) setUp(ctx context.Context, k *kind, name string) error {
	var err error
	if k.inst, err = benchutil.LaunchOn(ctx, b.c, name, "bench.0", k.hosts[0].Name); err != nil {
		return err
	}
	k.id = uuid.NewString()
	k.domain = "baseline-" + k.id
	host := k.hosts[0]
	if err := os.MkdirAll(k.dir(host), 0o755); err != nil {
		return err
	}
	if out, err := benchutil.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b.guest, k.disk(host), "2G"); err != nil {
		return fmt.Errorf("qemu-img create: %w: %s", err, out)
	}
	if err := k.defineAndStart(ctx, host); err != nil {
		return err
	}
	return b.bothAlive(ctx, k)
}

func (k *kind) dir(h utils.Host) string  { return filepath.Join(h.StorageRoot, "baseline", k.id) }
func (k *kind) disk(h utils.Host) string { return filepath.Join(k.dir(h), "disk") }

// defineAndStart defines the baseline domain on h with its current flavor and starts it.
func (k *kind) defineAndStart(ctx context.Context, h utils.Host) error {
	f := flavors[k.baseSize]
	x, err := domainxml.Build(driver.Machine{UUID: k.id, Name: k.domain, VCPUs: f.VCPUs, MemoryMiB: f.MemoryMiB,
		RootDisk: k.disk(h), ConsoleLog: filepath.Join(k.dir(h), "console.log"), VirtType: v1.VirtTypeQEMU})
	if err != nil {
		return err
	}
	path := filepath.Join(k.dir(h), "domain.xml")
	if err := os.WriteFile(path, []byte(x), 0o644); err != nil {
		return err
	}
	if out, err := h.Virsh(ctx, "define", path); err != nil {
		return fmt.Errorf("virsh define: %w: %s", err, out)
	}
	if out, err := h.Virsh(ctx, "start", k.domain); err != nil {
		return fmt.Errorf("virsh start: %w: %s", err, out)
	}
	return nil
}

// bothAlive waits until both guests print their counter after their last boot: a guest early
// in its boot may miss the power button, on either side.
func (b *bench) bothAlive(ctx context.Context, k *kind) error {
	return benchutil.Poll(180*time.Second, func() (bool, error) {
		if err := b.c.Get(ctx, client.ObjectKeyFromObject(k.inst), k.inst); err != nil {
			return false, err
		}
		inst, _ := utils.ReadConsole(k.inst.Status.AgentReport.ConsoleLogPath)
		base, _ := utils.ReadConsole(filepath.Join(k.dir(k.hosts[k.baseAt]), "console.log"))
		return aliveSinceBoot(inst) && aliveSinceBoot(base), nil
	})
}

// aliveSinceBoot says whether the guest printed its counter after its last boot line.
func aliveSinceBoot(c utils.Console) bool {
	return c.SinceLastBoot().Last(utils.AliveSeq) > 0
}

// byHand moves the baseline domain the way an operator would with virsh and qemu-img.
func (b *bench) byHand(ctx context.Context, k *kind) error {
	from, to := k.hosts[k.baseAt], k.hosts[1-k.baseAt]
	start := time.Now()
	if out, err := from.Virsh(ctx, "shutdown", k.domain); err != nil {
		return fmt.Errorf("virsh shutdown: %w: %s", err, out)
	}
	if err := benchutil.UntilPowerState(ctx, b.libvirt[from.Name], k.id, v1.PowerStateShutdown, 120*time.Second); err != nil {
		return err
	}
	if out, err := from.Virsh(ctx, "undefine", k.domain); err != nil {
		return fmt.Errorf("virsh undefine: %w: %s", err, out)
	}
	src, dst := k.disk(from), k.disk(to)
	if k.inPlace || k.shared {
		// One directory on both hosts: the original is set aside until the move is
		// confirmed and the target boots a copy, as kubenova does.
		if err := os.Rename(src, src+".resize"); err != nil {
			return err
		}
		if out, err := benchutil.Run(ctx, "cp", "--sparse=always", src+".resize", dst); err != nil {
			return fmt.Errorf("cp: %w: %s", err, out)
		}
		if k.inPlace {
			k.baseSize = 1 - k.baseSize
		}
	} else {
		// The copies kubenova makes through the image store: a standalone copy of the disk on
		// the source, that copy into the store, from the store into the target's cache, and
		// the root disk an overlay on it with the flavor's size. (kubenova also hashes both
		// transfers to verify them; the hand-made move does not.)
		transfer := filepath.Join(k.dir(from), "transfer.qcow2")
		if out, err := benchutil.Run(ctx, "qemu-img", "convert", "-q", "-O", "qcow2", src, transfer); err != nil {
			return fmt.Errorf("qemu-img convert: %w: %s", err, out)
		}
		stored := filepath.Join(b.store, "baseline-"+k.id)
		if out, err := benchutil.Run(ctx, "cp", "--sparse=always", transfer, stored); err != nil {
			return fmt.Errorf("cp to the store: %w: %s", err, out)
		}
		_ = os.Remove(transfer)
		if err := os.MkdirAll(k.dir(to), 0o755); err != nil {
			return err
		}
		base := filepath.Join(k.dir(to), "base.qcow2")
		if out, err := benchutil.Run(ctx, "cp", "--sparse=always", stored, base); err != nil {
			return fmt.Errorf("cp from the store: %w: %s", err, out)
		}
		size := fmt.Sprintf("%dG", flavors[k.baseSize].DiskGiB)
		if out, err := benchutil.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, dst, size); err != nil {
			return fmt.Errorf("qemu-img create: %w: %s", err, out)
		}
		defer func() { _ = os.Remove(stored) }()
	}
	if err := k.defineAndStart(ctx, to); err != nil {
		return err
	}
	k.byHand = append(k.byHand, time.Since(start))
	if k.inPlace || k.shared {
		_ = os.Remove(src + ".resize")
	} else {
		_ = os.RemoveAll(k.dir(from))
	}
	k.baseAt = 1 - k.baseAt
	if k.inPlace {
		k.baseAt = 0
	}
	return b.bothAlive(ctx, k)
}

// kubenovaMove resizes or cold-migrates the instance, then confirms.
func (b *bench) kubenovaMove(ctx context.Context, k *kind) error {
	to := k.hosts[1-k.instAt]
	start := time.Now()
	if k.inPlace {
		k.instSize = 1 - k.instSize
		patch := client.MergeFrom(k.inst.DeepCopy())
		k.inst.Spec.Flavor = fmt.Sprintf("bench.%d", k.instSize)
		if err := b.c.Patch(ctx, k.inst, patch); err != nil {
			return err
		}
	} else {
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "default", GenerateName: k.inst.Name + "-"},
			Spec: v1.MigrationSpec{InstanceName: k.inst.Name, Type: v1.MigrationCold, TargetNode: to.Name}}
		if err := b.c.Create(ctx, mig); err != nil {
			return err
		}
	}
	if err := benchutil.Poll(180*time.Second, func() (bool, error) {
		err := b.c.Get(ctx, client.ObjectKeyFromObject(k.inst), k.inst)
		return err == nil && k.inst.Status.VMState == v1.VMStateResized && k.inst.Status.TaskState == v1.TaskStateNone, err
	}); err != nil {
		return err
	}
	k.kubenova = append(k.kubenova, time.Since(start))
	if rs := k.inst.Status.Resize; rs == nil || rs.TargetNode != to.Name {
		return fmt.Errorf("resized onto %+v, want %s", rs, to.Name)
	}
	start = time.Now()
	patch := client.MergeFrom(k.inst.DeepCopy())
	k.inst.Spec.ResizeRequest = &v1.ResizeRequest{Decision: v1.ResizeConfirm, RequestedAt: metav1.NowMicro()}
	if err := b.c.Patch(ctx, k.inst, patch); err != nil {
		return err
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) {
		err := b.c.Get(ctx, client.ObjectKeyFromObject(k.inst), k.inst)
		return err == nil && benchutil.RestsIn(k.inst, v1.VMStateActive), err
	}); err != nil {
		return err
	}
	k.confirms = append(k.confirms, time.Since(start))
	if !k.inPlace {
		k.instAt = 1 - k.instAt
	}
	return b.bothAlive(ctx, k)
}

func (b *bench) tearDown(k *kind) {
	ctx := context.Background()
	h := k.hosts[k.baseAt]
	_, _ = h.Virsh(ctx, "destroy", k.domain)
	_, _ = h.Virsh(ctx, "undefine", k.domain)
}
