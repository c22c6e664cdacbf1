// Command storm measures a launch storm on real guests: many test guests applied a moment apart
// through kubenova, beside the same number booted with raw virsh (define + start of the same
// domain XML) on the same libvirt host, the two sides taking turns at going first. It prints,
// per run and pooled, P50, P95 and max of apply -> running (Active for kubenova, virsh start
// returned for the baseline) and of apply -> the guest's boot line, and their ratios.
//
//	go run ./test/bench/storm --guests 20 --spacing 100ms --runs 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	guests := flag.Int("guests", 20, "guests in one storm")
	spacing := flag.Duration("spacing", 100*time.Millisecond, "time between two applies")
	runs := flag.Int("runs", 3, "storms on each side")
	agentArgs := flag.String("agent-args", "", "comma-separated flags added to the agent's (--workers=4, --zap-log-level=debug)")
	only := flag.String("only", "", "run one side alone: kubenova or virsh (to look into one)")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench-storm", "where the cluster keeps its state")
	flag.Parse()
	log.SetLogger(logr.Discard())
	if err := run(*guests, *spacing, *runs, *agentArgs, *only, *workDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const namespace = "default"

// samples are one side's times, apply -> running and apply -> boot line, one per guest.
type samples struct{ running, boot []time.Duration }

func (s *samples) add(o samples) {
	s.running = append(s.running, o.running...)
	s.boot = append(s.boot, o.boot...)
}

func run(guests int, spacing time.Duration, runs int, agentArgs, only, workDir string) error {
	ctx := context.Background()
	cluster, err := benchutil.StartOneHost(ctx, workDir)
	if err != nil {
		return err
	}
	defer cluster.Stop()
	h := cluster.Hosts[0]
	if agentArgs != "" {
		if err := cluster.StopAgent(h); err != nil {
			return err
		}
		if err := cluster.StartAgent(h, strings.Split(agentArgs, ",")...); err != nil {
			return err
		}
	}
	// The first launch fills the node's image cache; a storm measures launches from a warm one.
	if _, err := stormKubenova(ctx, cluster, "warmup", 1, 0); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	fmt.Printf("storm: %d test guests (1 vCPU, 256 MiB, TCG) applied %s apart, %d storms a side taking turns, on %s; one libvirt host\n\n",
		guests, spacing, runs, benchutil.Machine())
	fmt.Printf("%-4s %-9s %12s %12s %12s %12s %12s %12s\n", "run", "side", "run P50", "run P95", "run max", "boot P50", "boot P95", "boot max")
	var kubenova, virsh samples
	for i := range runs {
		sides := []string{"kubenova", "virsh"}
		if i%2 == 1 {
			sides = []string{"virsh", "kubenova"}
		}
		for _, side := range sides {
			if only != "" && side != only {
				continue
			}
			var s samples
			var err error
			if side == "kubenova" {
				s, err = stormKubenova(ctx, cluster, fmt.Sprintf("storm-%d", i), guests, spacing)
				kubenova.add(s)
			} else {
				s, err = stormVirsh(ctx, h, guests, spacing)
				virsh.add(s)
			}
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", i+1, side, err)
			}
			printRow(fmt.Sprint(i+1), side, s)
		}
	}
	if only != "" {
		return nil
	}
	fmt.Println()
	printRow("all", "kubenova", kubenova)
	printRow("all", "virsh", virsh)
	fmt.Printf("\nkubenova/virsh   %12s %12s %12s %12s %12s %12s\n",
		ratio(kubenova.running, virsh.running, 50), ratio(kubenova.running, virsh.running, 95), ratio(kubenova.running, virsh.running, 100),
		ratio(kubenova.boot, virsh.boot, 50), ratio(kubenova.boot, virsh.boot, 95), ratio(kubenova.boot, virsh.boot, 100))
	fmt.Println("(run: apply -> Active for kubenova, apply -> virsh start returned for virsh; boot: apply -> the guest's boot line)")
	return nil
}

func printRow(run, side string, s samples) {
	p := benchutil.Percentile
	fmt.Printf("%-4s %-9s %12s %12s %12s %12s %12s %12s\n", run, side,
		benchutil.Ms(p(s.running, 50)), benchutil.Ms(p(s.running, 95)), benchutil.Ms(p(s.running, 100)),
		benchutil.Ms(p(s.boot, 50)), benchutil.Ms(p(s.boot, 95)), benchutil.Ms(p(s.boot, 100)))
}

func ratio(a, b []time.Duration, pct float64) string {
	return fmt.Sprintf("%.2f", float64(benchutil.Percentile(a, pct))/float64(benchutil.Percentile(b, pct)))
}

// applyAll calls apply(i) for i in [0, n), spacing apart, each in its own goroutine, and
// returns when all have returned.
func applyAll(n int, spacing time.Duration, apply func(i int) error) error {
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(start.Add(time.Duration(i) * spacing)))
			errs[i] = apply(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stormKubenova creates n Instances spacing apart and measures each until its guest has
// booted, then deletes them all and waits until they are gone.
func stormKubenova(ctx context.Context, cluster *utils.Cluster, prefix string, n int, spacing time.Duration) (samples, error) {
	c := cluster.Client
	watcher, err := client.NewWithWatch(cluster.Config, client.Options{Scheme: cluster.Scheme})
	if err != nil {
		return samples{}, err
	}
	applied := make([]time.Time, n)
	name := func(i int) string { return fmt.Sprintf("%s-%02d", prefix, i) }
	defer func() {
		for i := range n {
			_ = c.Delete(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name(i)}})
		}
		_ = benchutil.Poll(3*time.Minute, func() (bool, error) {
			var list v1.InstanceList
			err := c.List(ctx, &list, client.InNamespace(namespace))
			return err == nil && len(list.Items) == 0, err
		})
	}()
	var mu sync.Mutex
	running, boot := make([]time.Duration, n), make([]time.Duration, n)
	consoles := make([]string, n)
	byName := map[string]int{}
	for i := range n {
		byName[name(i)] = i
	}
	// A watch, not a poll of the API: the bench must not load the API server (and so the
	// machine the guests boot on) more during kubenova's storms than during virsh's.
	watch, err := watcher.Watch(ctx, &v1.InstanceList{}, client.InNamespace(namespace))
	if err != nil {
		return samples{}, err
	}
	defer watch.Stop()
	go func() {
		for e := range watch.ResultChan() {
			inst, ok := e.Object.(*v1.Instance)
			if !ok {
				continue
			}
			now := time.Now()
			mu.Lock()
			if i, ok := byName[inst.Name]; ok && !applied[i].IsZero() {
				if running[i] == 0 && inst.Status.VMState == v1.VMStateActive {
					running[i] = now.Sub(applied[i])
				}
				if r := inst.Status.AgentReport; r != nil && r.ConsoleLogPath != "" {
					consoles[i] = r.ConsoleLogPath
				}
			}
			mu.Unlock()
		}
	}()
	// Instances become Active while the later ones are still being applied: watch them meanwhile.
	created := make(chan error, 1)
	go func() {
		created <- applyAll(n, spacing, func(i int) error {
			mu.Lock()
			applied[i] = time.Now()
			mu.Unlock()
			return c.Create(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name(i)},
				Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}}})
		})
	}()
	err = pollWhileApplying(created, func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return measureBoots(consoles, applied, boot, running)
	})
	return samples{running: running, boot: boot}, err
}

// pollWhileApplying polls cond until it holds, failing as soon as the applying (which reports
// on applied) fails. It returns only once the applying has ended, so that the caller cleans
// up all it made.
func pollWhileApplying(applied <-chan error, cond func() (bool, error)) error {
	ended := false
	err := benchutil.Poll(5*time.Minute, func() (bool, error) {
		if !ended {
			select {
			case err := <-applied:
				ended = true
				if err != nil {
					return false, err
				}
			default:
			}
		}
		return cond()
	})
	if !ended {
		err = errors.Join(err, <-applied)
	}
	return err
}

// measureBoots records the boot time of each guest whose console now shows its boot line and
// says whether every guest is running and booted.
func measureBoots(consoles []string, applied []time.Time, boot, running []time.Duration) (bool, error) {
	done := true
	for i, path := range consoles {
		if boot[i] == 0 && path != "" {
			booted, err := benchutil.Booted(path)
			if err != nil {
				return false, err
			}
			if booted {
				boot[i] = time.Since(applied[i])
			}
		}
		done = done && boot[i] != 0 && running[i] != 0
	}
	return done, nil
}

// stormVirsh boots n guests with virsh spacing apart and measures each until its guest has
// booted, then removes them all.
func stormVirsh(ctx context.Context, h utils.Host, n int, spacing time.Duration) (samples, error) {
	applied := make([]time.Time, n)
	running, boot := make([]time.Duration, n), make([]time.Duration, n)
	consoles := make([]string, n)
	guests := make([]*benchutil.VirshGuest, n)
	defer func() {
		for _, g := range guests {
			if g != nil {
				g.Remove(ctx)
			}
		}
	}()
	// The guests boot while the later ones are still being launched: watch them meanwhile.
	var mu sync.Mutex
	launched := make(chan error, 1)
	go func() {
		launched <- applyAll(n, spacing, func(i int) error {
			start := time.Now()
			g, err := benchutil.VirshLaunch(ctx, h)
			mu.Lock()
			defer mu.Unlock()
			applied[i], guests[i] = start, g
			if err != nil {
				return err
			}
			running[i] = time.Since(start)
			consoles[i] = g.ConsoleLog
			return nil
		})
	}()
	err := pollWhileApplying(launched, func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return measureBoots(consoles, applied, boot, running)
	})
	return samples{running: running, boot: boot}, err
}
