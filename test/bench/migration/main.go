// Command migration measures live migration through kubenova beside a raw `virsh migrate
// --live` of the same test guest between the same libvirt hosts, taking turns at going first:
// with shared storage (host-1 and host-2 share their storage root: only memory moves) and as a
// block migration (host-1 and host-3, which has its own storage: the disk is copied too). It
// prints the median time of each side, their ratio and their difference, and libvirt's own
// total time and downtime of kubenova's moves.
//
//	go run ./test/bench/migration --runs 5
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
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	runs := flag.Int("runs", 5, "moves of each kind on each side")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench-migration", "where the cluster keeps its state")
	flag.Parse()
	if err := run(*runs, *workDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// pair is one kind of move: an instance and a baseline domain that go back and forth between
// two hosts.
type pair struct {
	name  string
	hosts [2]utils.Host
	block bool
	inst  *v1.Instance
	// where each side is now: 0 or 1, an index into hosts.
	instAt, baseAt int
	// The baseline domain, its files under each host's storage root.
	id, domain string
	// times of each side, and libvirt's figures of kubenova's moves.
	byHand, kubenova   []time.Duration
	libvirt, downtimes []time.Duration
}

type bench struct {
	cluster *utils.Cluster
	c       client.Client
	guest   string
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
	b := &bench{cluster: cluster, c: cluster.Client}
	if b.guest, _, err = utils.GuestImage(); err != nil {
		return err
	}
	h := cluster.Hosts
	pairs := []*pair{
		{name: "shared storage", hosts: [2]utils.Host{h[0], h[1]}},
		{name: "block migration", hosts: [2]utils.Host{h[0], h[2]}, block: true},
	}
	for i, p := range pairs {
		if err := b.setUp(ctx, p, fmt.Sprintf("bench-%d", i)); err != nil {
			return err
		}
		defer b.tearDown(p)
	}
	for i := range runs {
		for _, p := range pairs {
			sides := []func(context.Context, *pair) (time.Duration, error){b.virshMove, b.kubenovaMove}
			if i%2 == 1 {
				slices.Reverse(sides)
			}
			for _, side := range sides {
				if _, err := side(ctx, p); err != nil {
					return fmt.Errorf("%s (run %d): %w", p.name, i+1, err)
				}
			}
		}
	}
	fmt.Printf("live migration of the test guest (1 vCPU, 256 MiB, TCG) on %s, %d moves per side\n\n", benchutil.Machine(), runs)
	fmt.Printf("%-16s %12s %12s %7s %10s %14s %14s\n", "move", "virsh", "kubenova", "ratio", "diff", "libvirt total", "downtime")
	for _, p := range pairs {
		mb, mk := benchutil.Median(p.byHand), benchutil.Median(p.kubenova)
		fmt.Printf("%-16s %12s %12s %7.2f %10s %14s %14s\n", p.name, benchutil.Ms(mb), benchutil.Ms(mk), float64(mk)/float64(mb),
			benchutil.Ms(mk-mb), benchutil.Ms(benchutil.Median(p.libvirt)), benchutil.Ms(benchutil.Median(p.downtimes)))
	}
	fmt.Println("\nvirsh: `virsh migrate --live --p2p --persistent --undefinesource --abort-on-error --auto-converge`, the flags")
	fmt.Println("kubenova's driver passes (with --unsafe on shared storage; with")
	fmt.Println("--copy-storage-all into a disk made beforehand with qemu-img and --xml moving its paths, as a block migration),")
	fmt.Println("timed from the command to its end, the disk's creation included. kubenova: from the Migration's creation to")
	fmt.Println("its phase Succeeded (the target prepares, the source migrates, the target reports libvirt's figures); libvirt")
	fmt.Println("total and downtime are the medians of libvirt's own job statistics of kubenova's moves.")
	return nil
}

// setUp launches the pair's instance and defines and starts its baseline domain, both on the
// pair's first host.
func (b *bench) setUp(ctx context.Context, p *pair, name string) error {
	var err error
	if p.inst, err = benchutil.LaunchOn(ctx, b.c, name, "m1.tiny", p.hosts[0].Name); err != nil {
		return err
	}
	p.id = uuid.NewString()
	p.domain = "baseline-" + p.id
	host := p.hosts[0]
	if err := os.MkdirAll(p.dir(host), 0o755); err != nil {
		return err
	}
	if out, err := benchutil.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", b.guest, p.disk(host), "1G"); err != nil {
		return fmt.Errorf("qemu-img create: %w: %s", err, out)
	}
	x, err := p.domainXML(host)
	if err != nil {
		return err
	}
	path := filepath.Join(p.dir(host), "domain.xml")
	if err := os.WriteFile(path, []byte(x), 0o644); err != nil {
		return err
	}
	if out, err := host.Virsh(ctx, "define", path); err != nil {
		return fmt.Errorf("virsh define: %w: %s", err, out)
	}
	if out, err := host.Virsh(ctx, "start", p.domain); err != nil {
		return fmt.Errorf("virsh start: %w: %s", err, out)
	}
	// Both guests have booted before anything moves.
	return benchutil.Poll(120*time.Second, func() (bool, error) {
		inst, _ := utils.ReadConsole(p.inst.Status.AgentReport.ConsoleLogPath)
		base, _ := utils.ReadConsole(filepath.Join(p.dir(host), "console.log"))
		return inst.Last(utils.AliveSeq) > 0 && base.Last(utils.AliveSeq) > 0, nil
	})
}

func (p *pair) dir(h utils.Host) string { return filepath.Join(h.StorageRoot, "baseline", p.id) }
func (p *pair) disk(h utils.Host) string {
	return filepath.Join(p.dir(h), "disk")
}

func (p *pair) domainXML(h utils.Host) (string, error) {
	return domainxml.Build(driver.Machine{UUID: p.id, Name: p.domain, VCPUs: 1, MemoryMiB: 256,
		RootDisk: p.disk(h), ConsoleLog: filepath.Join(p.dir(h), "console.log"), VirtType: v1.VirtTypeQEMU})
}

// virshMove moves the baseline domain to the pair's other host with virsh.
func (b *bench) virshMove(ctx context.Context, p *pair) (time.Duration, error) {
	from, to := p.hosts[p.baseAt], p.hosts[1-p.baseAt]
	// The flags kubenova's driver passes (MigrateLive), so that both sides ask libvirt the same.
	args := []string{"migrate", "--live", "--p2p", "--persistent", "--undefinesource", "--abort-on-error", "--auto-converge"}
	start := time.Now()
	if p.block {
		if err := os.MkdirAll(p.dir(to), 0o755); err != nil {
			return 0, err
		}
		if out, err := benchutil.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", p.disk(to), "1G"); err != nil {
			return 0, fmt.Errorf("qemu-img create: %w: %s", err, out)
		}
		x, err := p.domainXML(to)
		if err != nil {
			return 0, err
		}
		path := filepath.Join(p.dir(to), "domain.xml")
		if err := os.WriteFile(path, []byte(x), 0o644); err != nil {
			return 0, err
		}
		args = append(args, "--copy-storage-all", "--xml", path)
	} else {
		args = append(args, "--unsafe")
	}
	args = append(args, p.domain, to.URI)
	if out, err := from.Virsh(ctx, args...); err != nil {
		return 0, fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	took := time.Since(start)
	p.byHand = append(p.byHand, took)
	if p.block {
		_ = os.RemoveAll(p.dir(from))
	}
	p.baseAt = 1 - p.baseAt
	return took, nil
}

// kubenovaMove moves the instance to the pair's other host with a Migration.
func (b *bench) kubenovaMove(ctx context.Context, p *pair) (time.Duration, error) {
	to := p.hosts[1-p.instAt]
	mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "default", GenerateName: p.inst.Name + "-"},
		Spec: v1.MigrationSpec{InstanceName: p.inst.Name, Type: v1.MigrationLive, TargetNode: to.Name}}
	start := time.Now()
	if err := b.c.Create(ctx, mig); err != nil {
		return 0, err
	}
	if err := benchutil.Poll(180*time.Second, func() (bool, error) {
		err := b.c.Get(ctx, client.ObjectKeyFromObject(mig), mig)
		if err == nil && mig.Status.Phase == v1.MigrationFailed {
			return false, fmt.Errorf("migration failed: %s: %s", mig.Status.Reason, mig.Status.Message)
		}
		return err == nil && mig.Status.Phase == v1.MigrationSucceeded, err
	}); err != nil {
		return 0, err
	}
	took := time.Since(start)
	if mig.Status.BlockMigration != p.block {
		return 0, fmt.Errorf("migration %s: block migration %v, want %v", mig.Name, mig.Status.BlockMigration, p.block)
	}
	p.kubenova = append(p.kubenova, took)
	p.libvirt = append(p.libvirt, time.Duration(mig.Status.TotalMillis)*time.Millisecond)
	p.downtimes = append(p.downtimes, time.Duration(mig.Status.DowntimeMillis)*time.Millisecond)
	p.instAt = 1 - p.instAt
	// The instance rests again before the next move.
	return took, benchutil.Poll(60*time.Second, func() (bool, error) {
		err := b.c.Get(ctx, client.ObjectKeyFromObject(p.inst), p.inst)
		return err == nil && benchutil.RestsIn(p.inst, v1.VMStateActive) && p.inst.Status.NodeName == to.Name, err
	})
}

func (b *bench) tearDown(p *pair) {
	ctx := context.Background()
	h := p.hosts[p.baseAt]
	_, _ = h.Virsh(ctx, "destroy", p.domain)
	_, _ = h.Virsh(ctx, "undefine", p.domain)
}
