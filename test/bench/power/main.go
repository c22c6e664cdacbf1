// Command power measures each power operation through kubenova beside the same operation done
// with virsh directly on the same libvirt host, on the same test guest and domain XML, taking
// turns at going first. It prints, per operation, the median times of both, their ratio and
// difference, and the median of the API writes kubenova made. Both sides end at the same point:
// a synchronous virsh command at its return, an asynchronous one (the ACPI shutdown) when
// libvirt reports the state, read over one open connection rather than by more virsh processes.
//
//	go run ./test/bench/power --runs 3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
	libvirtdriver "github.com/kubenova/kubenova/internal/driver/libvirt"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	runs := flag.Int("runs", 3, "runs of each operation on each side")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench-power", "where the cluster keeps its state")
	flag.Parse()
	if err := run(*runs, *workDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// operation is one power operation on both sides. Each side's function returns once the
// operation is done as a user sees it: the state reached and, for operations that boot the
// guest, its next boot line on the console.
type operation struct {
	name     string
	kubenova func(ctx context.Context, b *bench) (time.Duration, int, error)
	baseline func(ctx context.Context, b *bench) (time.Duration, error)
}

type bench struct {
	cluster *utils.Cluster
	host    utils.Host
	inst    *v1.Instance
	// baseline domain, run with virsh alone; lv reads its state over one open connection.
	domain   string
	baseUUID string
	lv       *libvirtdriver.Driver
	baseLog  string
	watcher  client.WithWatch
	instLog  string
}

func run(runs int, workDir string) error {
	ctx := context.Background()
	cluster, err := benchutil.StartOneHost(ctx, workDir)
	if err != nil {
		return err
	}
	defer cluster.Stop()
	b := &bench{cluster: cluster, host: cluster.Hosts[0]}
	if b.lv, err = libvirtdriver.New(b.host.URI); err != nil {
		return err
	}
	defer func() { _ = b.lv.Close() }()
	if b.watcher, err = client.NewWithWatch(cluster.Config, client.Options{Scheme: cluster.Scheme}); err != nil {
		return err
	}
	if err := b.setUp(ctx); err != nil {
		return err
	}
	defer func() {
		_, _ = b.host.Virsh(ctx, "destroy", b.domain)
		_, _ = b.host.Virsh(ctx, "undefine", "--managed-save", b.domain)
	}()

	// kubenova's soft reboot is Nova's: a clean shutdown through the guest, then a fresh start
	// of the domain; the baseline does the same with virsh. The guest's own reboot (virsh
	// reboot, QEMU kept) is another kind, shown apart below the table.
	ops := []operation{
		{"shut off", b.kubenovaPower(v1.DesiredStopped, v1.VMStateStopped, false), b.virsh([]string{"shutdown", "--mode", "acpi"}, v1.PowerStateShutdown, false)},
		{"start", b.kubenovaPower(v1.DesiredRunning, v1.VMStateActive, true), b.virsh([]string{"start"}, "", true)},
		{"soft reboot", b.kubenovaReboot(v1.RebootSoft), b.virshCleanReboot},
		{"hard reboot", b.kubenovaReboot(v1.RebootHard), b.virshHardReboot},
		{"pause", b.kubenovaPower(v1.DesiredPaused, v1.VMStatePaused, false), b.virsh([]string{"suspend"}, "", false)},
		{"unpause", b.kubenovaPower(v1.DesiredRunning, v1.VMStateActive, false), b.virsh([]string{"resume"}, "", false)},
		{"suspend", b.kubenovaPower(v1.DesiredSuspended, v1.VMStateSuspended, false), b.virsh([]string{"managedsave"}, "", false)},
		{"resume", b.kubenovaPower(v1.DesiredRunning, v1.VMStateActive, false), b.virsh([]string{"start"}, "", false)},
	}
	fmt.Printf("power operations of the test guest (1 vCPU, 256 MiB, TCG) on %s, %d runs per side\n\n", benchutil.Machine(), runs)
	fmt.Printf("%-12s %12s %12s %7s %10s %7s\n", "operation", "virsh", "kubenova", "ratio", "diff", "writes")
	for _, op := range ops {
		var base, kube []time.Duration
		var writes []int
		for i := range runs {
			// Take turns at going first, so that neither side always meets a warmer host.
			sides := []func() error{
				func() error { d, err := op.baseline(ctx, b); base = append(base, d); return err },
				func() error {
					d, w, err := op.kubenova(ctx, b)
					kube = append(kube, d)
					writes = append(writes, w)
					return err
				},
			}
			if i%2 == 1 {
				slices.Reverse(sides)
			}
			for _, side := range sides {
				if err := side(); err != nil {
					return fmt.Errorf("%s: %w", op.name, err)
				}
			}
			// Each operation but the last of a pair leaves the guest where the next one starts;
			// runs after the first repeat the pair by undoing it.
			if i+1 < runs {
				if err := b.undo(ctx, op.name); err != nil {
					return fmt.Errorf("undo %s: %w", op.name, err)
				}
			}
		}
		mb, mk := benchutil.Median(base), benchutil.Median(kube)
		slices.Sort(writes)
		fmt.Printf("%-12s %12s %12s %7.2f %10s %7d\n", op.name, benchutil.Ms(mb), benchutil.Ms(mk), float64(mk)/float64(mb), benchutil.Ms(mk-mb), writes[len(writes)/2])
	}
	var inGuest []time.Duration
	for range runs {
		d, err := b.virsh([]string{"reboot", "--mode", "acpi"}, "", true)(ctx, b)
		if err != nil {
			return fmt.Errorf("in-guest reboot: %w", err)
		}
		inGuest = append(inGuest, d)
	}
	fmt.Println("\nvirsh: the same domain XML and guest, driven with virsh on the same host. A synchronous command (start, suspend,")
	fmt.Println("resume, managedsave) ends at its return; the ACPI shutdown when libvirt reports the domain shut off. Soft reboot is")
	fmt.Println("virsh shutdown --mode acpi, then virsh start, as kubenova's; hard reboot is virsh destroy + start, as kubenova's.")
	fmt.Println("Start and reboots end at the guest's next boot line on both sides; writes (the median) count every change of the")
	fmt.Println("Instance, the user's own patch included.")
	fmt.Printf("Apart: the guest's own reboot (virsh reboot --mode acpi, QEMU kept), to its next boot line: %s (median of %d).\n",
		benchutil.Ms(benchutil.Median(inGuest)), runs)
	return nil
}

// undo brings both sides back to where op started, so the next run of op starts alike.
func (b *bench) undo(ctx context.Context, op string) error {
	var desired v1.DesiredPowerState
	var virshArgs []string
	var async v1.PowerState
	switch op {
	case "shut off":
		desired, virshArgs = v1.DesiredRunning, []string{"start"}
	case "start":
		desired, virshArgs, async = v1.DesiredStopped, []string{"shutdown", "--mode", "acpi"}, v1.PowerStateShutdown
	case "pause":
		desired, virshArgs = v1.DesiredRunning, []string{"resume"}
	case "unpause":
		desired, virshArgs = v1.DesiredPaused, []string{"suspend"}
	case "suspend":
		desired, virshArgs = v1.DesiredRunning, []string{"start"}
	case "resume":
		desired, virshArgs = v1.DesiredSuspended, []string{"managedsave"}
	default:
		return nil // reboots end where they start
	}
	want := map[v1.DesiredPowerState]v1.VMState{v1.DesiredRunning: v1.VMStateActive, v1.DesiredStopped: v1.VMStateStopped,
		v1.DesiredPaused: v1.VMStatePaused, v1.DesiredSuspended: v1.VMStateSuspended}[desired]
	boots := desired == v1.DesiredRunning && (op == "shut off")
	if _, _, err := b.kubenovaPower(desired, want, boots)(ctx, b); err != nil {
		return err
	}
	_, err := b.virsh(virshArgs, async, boots)(ctx, b)
	return err
}

func (b *bench) setUp(ctx context.Context) error {
	b.inst = &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "bench"},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}}}
	if err := b.cluster.Client.Create(ctx, b.inst); err != nil {
		return err
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) {
		err := b.cluster.Client.Get(ctx, client.ObjectKeyFromObject(b.inst), b.inst)
		return err == nil && b.inst.Status.VMState == v1.VMStateActive && b.inst.Status.AgentReport != nil, err
	}); err != nil {
		return fmt.Errorf("instance Active: %w", err)
	}
	b.instLog = b.inst.Status.AgentReport.ConsoleLogPath

	guest, _, err := utils.GuestImage()
	if err != nil {
		return err
	}
	id := uuid.NewString()
	dir := filepath.Join(b.host.StorageRoot, "baseline", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	disk := filepath.Join(dir, "disk")
	if out, err := benchutil.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", guest, disk, "1G"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	b.domain, b.baseUUID, b.baseLog = "baseline-"+id, id, filepath.Join(dir, "console.log")
	// No Instance owns the baseline domain (no namespace or name in its metadata), so the
	// agent's orphan cleanup leaves it alone.
	x, err := domainxml.Build(driver.Machine{UUID: id, Name: b.domain,
		VCPUs: 1, MemoryMiB: 256, RootDisk: disk, ConsoleLog: b.baseLog, VirtType: v1.VirtTypeQEMU})
	if err != nil {
		return err
	}
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(x), 0o644); err != nil {
		return err
	}
	for _, args := range [][]string{{"define", xmlPath}, {"start", b.domain}} {
		if out, err := b.host.Virsh(ctx, args...); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
	}
	// Both guests must listen to their power button before the first shut off.
	for _, log := range []string{b.instLog, b.baseLog} {
		if err := benchutil.Poll(120*time.Second, func() (bool, error) { return lastNumber(log, utils.AliveSeq) >= 1, nil }); err != nil {
			return fmt.Errorf("guest up (%s): %w", log, err)
		}
	}
	return nil
}

// lastNumber is the number in the last line of a console log that matches re, or 0.
func lastNumber(path string, re *regexp.Regexp) int {
	c, _ := utils.ReadConsole(path)
	return c.Last(re)
}

// listening waits until the guest behind log prints an alive line after its boot line n: its
// power button is watched from then on.
func listening(log string, boots int) error {
	return benchutil.Poll(120*time.Second, func() (bool, error) {
		c, err := utils.ReadConsole(log)
		return c.Listening(boots), err
	})
}

// virsh runs a virsh command on the baseline domain. A synchronous command is done at its
// return; with async set, the command only asks (the ACPI shutdown), and it is done when libvirt
// reports that power state. With boots, it waits for the guest's next boot line (and first alive
// line after it, outside the time).
func (b *bench) virsh(args []string, async v1.PowerState, boots bool) func(context.Context, *bench) (time.Duration, error) {
	return func(ctx context.Context, b *bench) (time.Duration, error) {
		before := lastNumber(b.baseLog, utils.BootCount)
		start := time.Now()
		if out, err := b.host.Virsh(ctx, append(args, b.domain)...); err != nil {
			return 0, fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, out)
		}
		if async != "" {
			if err := b.untilState(ctx, async); err != nil {
				return 0, fmt.Errorf("virsh %s: %w", args[0], err)
			}
		}
		if !boots {
			return time.Since(start), nil
		}
		if err := benchutil.Poll(120*time.Second, func() (bool, error) { return lastNumber(b.baseLog, utils.BootCount) > before, nil }); err != nil {
			return 0, err
		}
		d := time.Since(start)
		return d, listening(b.baseLog, before+1)
	}
}

// untilState waits until libvirt reports the baseline domain in power state want.
func (b *bench) untilState(ctx context.Context, want v1.PowerState) error {
	return benchutil.UntilPowerState(ctx, b.lv, b.baseUUID, want, 120*time.Second)
}

// virshCleanReboot is kubenova's soft reboot done by hand: the ACPI shutdown, the domain shut
// off, virsh start, to the guest's next boot line.
func (b *bench) virshCleanReboot(ctx context.Context, _ *bench) (time.Duration, error) {
	before := lastNumber(b.baseLog, utils.BootCount)
	start := time.Now()
	if out, err := b.host.Virsh(ctx, "shutdown", "--mode", "acpi", b.domain); err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	if err := b.untilState(ctx, v1.PowerStateShutdown); err != nil {
		return 0, err
	}
	if out, err := b.host.Virsh(ctx, "start", b.domain); err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) { return lastNumber(b.baseLog, utils.BootCount) > before, nil }); err != nil {
		return 0, err
	}
	d := time.Since(start)
	return d, listening(b.baseLog, before+1)
}

// virshHardReboot is kubenova's hard reboot done by hand: destroy, start, to the boot line.
func (b *bench) virshHardReboot(ctx context.Context, _ *bench) (time.Duration, error) {
	before := lastNumber(b.baseLog, utils.BootCount)
	start := time.Now()
	for _, args := range [][]string{{"destroy", b.domain}, {"start", b.domain}} {
		if out, err := b.host.Virsh(ctx, args...); err != nil {
			return 0, fmt.Errorf("%w: %s", err, out)
		}
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) { return lastNumber(b.baseLog, utils.BootCount) > before, nil }); err != nil {
		return 0, err
	}
	d := time.Since(start)
	return d, listening(b.baseLog, before+1)
}

// kubenovaPower patches spec.powerState and waits until the instance rests in want (and, when
// boots, for the guest's next boot line), counting the writes to the instance.
func (b *bench) kubenovaPower(desired v1.DesiredPowerState, want v1.VMState, boots bool) func(context.Context, *bench) (time.Duration, int, error) {
	return func(ctx context.Context, b *bench) (time.Duration, int, error) {
		patch := fmt.Sprintf(`{"spec":{"powerState":%q}}`, desired)
		return b.kubenovaOp(ctx, patch, boots, func(i *v1.Instance) bool { return benchutil.RestsIn(i, want) })
	}
}

// kubenovaReboot stamps a reboot request and waits until it is served and the guest booted.
func (b *bench) kubenovaReboot(t v1.RebootType) func(context.Context, *bench) (time.Duration, int, error) {
	return func(ctx context.Context, b *bench) (time.Duration, int, error) {
		at := metav1.NewMicroTime(time.Now().Truncate(time.Microsecond))
		patch := fmt.Sprintf(`{"spec":{"rebootRequest":{"type":%q,"requestedAt":%q}}}`, t, at.UTC().Format(metav1.RFC3339Micro))
		return b.kubenovaOp(ctx, patch, true, func(i *v1.Instance) bool {
			ack := i.Status.RebootRequest
			return ack != nil && ack.RequestedAt.Equal(&at) && ack.Result == v1.RequestSucceeded && benchutil.RestsIn(i, v1.VMStateActive)
		})
	}
}

func (b *bench) kubenovaOp(ctx context.Context, patch string, boots bool, done func(*v1.Instance) bool) (time.Duration, int, error) {
	before := lastNumber(b.instLog, utils.BootCount)
	w, err := b.watcher.Watch(ctx, &v1.InstanceList{}, client.InNamespace("default"),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", b.inst.Name)})
	if err != nil {
		return 0, 0, err
	}
	defer w.Stop()
	if e := <-w.ResultChan(); e.Type != watch.Added {
		return 0, 0, fmt.Errorf("watch began with %s", e.Type)
	}
	start := time.Now()
	if err := b.cluster.Client.Patch(ctx, b.inst, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		return 0, 0, err
	}
	writes := 0
	timeout := time.After(120 * time.Second)
	for settled := false; !settled; {
		select {
		case e, ok := <-w.ResultChan():
			if !ok {
				return 0, writes, fmt.Errorf("watch ended")
			}
			if e.Type == watch.Modified {
				writes++
				settled = done(e.Object.(*v1.Instance))
			}
		case <-timeout:
			return 0, writes, fmt.Errorf("not done within 120 s after %s", patch)
		}
	}
	if !boots {
		return time.Since(start), writes, nil
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) { return lastNumber(b.instLog, utils.BootCount) > before, nil }); err != nil {
		return 0, writes, err
	}
	d := time.Since(start)
	return d, writes, listening(b.instLog, before+1)
}
