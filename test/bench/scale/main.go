// Command scale measures kubenova's control plane at cloud scale: a real kube-apiserver and
// etcd, the manager, and one agent process simulating many compute nodes (--driver=fake), then
// many instances created at once and, once all are Active, deleted at once. It prints the time
// until all are placed and Active, scheduling decisions per second, the API writes per instance
// by client and kind (from the API server's audit log), and the manager's CPU time and peak
// memory; then the same for the deletes. It does so --runs times, each on a fresh cluster, and
// ends with every figure's median and range over the runs.
//
//	go run ./test/bench/scale --nodes 100 --instances 1000 --runs 3
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	kubescheme "github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	nodes := flag.Int("nodes", 100, "simulated compute nodes")
	instances := flag.Int("instances", 1000, "instances created at once")
	parallel := flag.Int("parallel", 32, "create and delete requests in flight at once")
	runs := flag.Int("runs", 3, "times the whole launch and delete is repeated, each on a fresh cluster")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench-scale", "where the cluster keeps its state and logs")
	flag.Parse()
	log.SetLogger(logr.Discard())
	if *runs < 1 || *nodes < 1 || *instances < 1 {
		fmt.Fprintln(os.Stderr, "bench: --runs, --nodes and --instances must be at least 1")
		os.Exit(2)
	}
	fmt.Printf("scale: %d simulated nodes, %d instances created at once (%d requests in flight), %d runs, on %s\n",
		*nodes, *instances, *parallel, *runs, benchutil.Machine())
	var all []figures
	for i := range *runs {
		fmt.Printf("\n== run %d of %d\n", i+1, *runs)
		f, err := run(*nodes, *instances, *parallel, *workDir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		all = append(all, f)
	}
	summarize(all)
}

const namespace = "default"

func run(nodes, instances, parallel int, workDir string) (figures, error) {
	ctx := context.Background()
	_ = os.RemoveAll(workDir)
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return figures{}, err
	}
	auditLog := filepath.Join(workDir, "audit.log")
	cluster, err := utils.StartSimulatedCluster(ctx, workDir, nodes, utils.WithAuditLog(auditLog))
	if err != nil {
		return figures{}, err
	}
	defer cluster.Stop()
	supervisor := superviseManager(cluster)
	restarted := false
	defer func() {
		if !restarted {
			supervisor.stop()
		}
	}()

	cfg := rest.CopyConfig(cluster.Config)
	cfg.QPS, cfg.UserAgent = -1, "bench" // no client-side limit: the bench must not be the bottleneck
	c, err := client.New(cfg, client.Options{Scheme: kubescheme.New()})
	if err != nil {
		return figures{}, err
	}
	if err := prepare(ctx, cluster, c, nodes); err != nil {
		return figures{}, err
	}
	w, err := watchInstances(ctx, cfg)
	if err != nil {
		return figures{}, err
	}
	fleet := cluster.Process("agent")
	if fleet == nil {
		return figures{}, errors.New("the simulated agents do not run")
	}
	// Launch.
	_, offset, err := benchutil.ReadWrites(auditLog, 0)
	if err != nil {
		return figures{}, err
	}
	before, err := usage(supervisor, fleet.Pid)
	if err != nil {
		return figures{}, err
	}
	start := time.Now()
	if err := forEach(instances, parallel, func(i int) error {
		w.created(name(i), time.Now())
		return c.Create(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name(i)},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "bench-image"}}})
	}); err != nil {
		return figures{}, err
	}
	created := time.Since(start)
	if err := w.waitAll(10*time.Minute, func(t *times) bool { return !t.active.IsZero() }); err != nil {
		return figures{}, fmt.Errorf("waiting for Active: %w", err)
	}
	after, err := usage(supervisor, fleet.Pid)
	if err != nil {
		return figures{}, err
	}
	writes, offset, err := benchutil.ReadWritesSettled(auditLog, offset)
	if err != nil {
		return figures{}, err
	}
	placed, active, lastPlaced, lastActive := w.launchFigures(start)
	f := figures{instances: instances}
	f.allPlaced, f.allActive = lastPlaced, lastActive
	f.activeP50, f.activeP95 = benchutil.Percentile(active, 50), benchutil.Percentile(active, 95)
	fmt.Printf("launch\n")
	fmt.Printf("  all %d created after     %s\n", instances, benchutil.Ms(created))
	fmt.Printf("  all placed after         %s  (%.0f scheduling decisions/s)\n", benchutil.Ms(lastPlaced), float64(instances)/lastPlaced.Seconds())
	fmt.Printf("  all Active after         %s\n", benchutil.Ms(lastActive))
	fmt.Printf("  create -> placed         P50 %s  P95 %s\n", benchutil.Ms(benchutil.Percentile(placed, 50)), benchutil.Ms(benchutil.Percentile(placed, 95)))
	fmt.Printf("  create -> Active         P50 %s  P95 %s\n", benchutil.Ms(benchutil.Percentile(active, 50)), benchutil.Ms(benchutil.Percentile(active, 95)))
	f.launch = report(writes, instances, before, after)

	// Delete.
	before = after
	start = time.Now()
	if err := forEach(instances, parallel, func(i int) error {
		return client.IgnoreNotFound(c.Delete(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name(i)}}))
	}); err != nil {
		return figures{}, err
	}
	if err := w.waitAll(10*time.Minute, func(t *times) bool { return !t.gone.IsZero() }); err != nil {
		return figures{}, fmt.Errorf("waiting for the deletes: %w", err)
	}
	gone := time.Since(start)
	after, err = usage(supervisor, fleet.Pid)
	if err != nil {
		return figures{}, err
	}
	writes, _, err = benchutil.ReadWritesSettled(auditLog, offset)
	if err != nil {
		return figures{}, err
	}
	fmt.Printf("\ndelete\n")
	fmt.Printf("  all gone after           %s\n", benchutil.Ms(gone))
	f.allGone = gone
	f.delete = report(writes, instances, before, after)
	restarted = true
	if f.managerRestarts = supervisor.stop(); f.managerRestarts > 0 {
		fmt.Printf("  the manager was started again %d times (CPU counts every one; peak RSS is the last one's)\n", f.managerRestarts)
	}
	return f, nil
}

func name(i int) string { return fmt.Sprintf("scale-%05d", i) }

// prepare creates the flavor and image the instances use and waits until every simulated
// node's Hypervisor is up.
func prepare(ctx context.Context, cluster *utils.Cluster, c client.Client, nodes int) error {
	flavor := &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: "m1.tiny"}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 256, DiskGiB: 1}}
	if err := c.Create(ctx, flavor); err != nil {
		return err
	}
	// Simulated nodes fetch nothing, but instances launch only from an Available image.
	if err := cluster.CreateTinyImage(ctx, namespace, "bench-image"); err != nil {
		return err
	}
	// A thousand simulated nodes take minutes to report on two cores.
	return benchutil.Poll(max(3*time.Minute, time.Duration(nodes)*300*time.Millisecond), func() (bool, error) {
		var hvs v1.HypervisorList
		if err := c.List(ctx, &hvs); err != nil {
			return false, err
		}
		up := 0
		for i := range hvs.Items {
			if hvs.Items[i].Status.State == v1.HypervisorUp {
				up++
			}
		}
		return up == nodes, nil
	})
}

// forEach runs f(0) to f(n-1), parallel at a time, and returns the first error.
func forEach(n, parallel int, f func(i int) error) error {
	next := make(chan int)
	errs := make(chan error, parallel)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	for e := range errs {
		err = errors.Join(err, e)
	}
	return err
}

// times are the moments the bench saw one instance reach each stage.
type times struct {
	created, placed, active, gone time.Time
}

// watcher follows every instance through an informer, so that the bench reads the API server
// once per change, as the controllers do, instead of polling a thousand objects.
type watcher struct {
	mu    sync.Mutex
	by    map[string]*times
	woken chan struct{}
}

func watchInstances(ctx context.Context, cfg *rest.Config) (*watcher, error) {
	informers, err := cache.New(cfg, cache.Options{Scheme: kubescheme.New()})
	if err != nil {
		return nil, err
	}
	inf, err := informers.GetInformer(ctx, &v1.Instance{})
	if err != nil {
		return nil, err
	}
	w := &watcher{by: map[string]*times{}, woken: make(chan struct{}, 1)}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { w.saw(o, false) },
		UpdateFunc: func(_, o any) { w.saw(o, false) },
		DeleteFunc: func(o any) {
			if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			w.saw(o, true)
		},
	}); err != nil {
		return nil, err
	}
	go func() { _ = informers.Start(ctx) }()
	if !informers.WaitForCacheSync(ctx) {
		return nil, errors.New("instance informer did not sync")
	}
	return w, nil
}

func (w *watcher) created(name string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.entry(name).created = at
}

// entry returns the record of name, making it. Call with w.mu held.
func (w *watcher) entry(name string) *times {
	t, ok := w.by[name]
	if !ok {
		t = &times{}
		w.by[name] = t
	}
	return t
}

func (w *watcher) saw(o any, deleted bool) {
	inst, ok := o.(*v1.Instance)
	if !ok {
		return
	}
	now := time.Now()
	w.mu.Lock()
	t := w.entry(inst.Name)
	if t.placed.IsZero() && inst.Status.NodeName != "" {
		t.placed = now
	}
	if t.active.IsZero() && inst.Status.VMState == v1.VMStateActive {
		t.active = now
	}
	if deleted {
		t.gone = now
	}
	w.mu.Unlock()
	select {
	case w.woken <- struct{}{}:
	default:
	}
}

// waitAll waits until every instance the bench created has reached the stage reached tells.
func (w *watcher) waitAll(timeout time.Duration, reached func(*times) bool) error {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		missing, example := 0, ""
		for name, t := range w.by {
			if !t.created.IsZero() && !reached(t) {
				missing++
				example = name
			}
		}
		w.mu.Unlock()
		if missing == 0 {
			return nil
		}
		select {
		case <-w.woken:
		case <-time.After(time.Second):
		case <-deadline:
			return fmt.Errorf("%d instances did not get there within %s (%s among them)", missing, timeout, example)
		}
	}
}

// launchFigures returns each instance's create -> placed and create -> Active times, and when,
// after start, the last one was placed and the last one became Active.
func (w *watcher) launchFigures(start time.Time) (placed, active []time.Duration, lastPlaced, lastActive time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, t := range w.by {
		placed = append(placed, t.placed.Sub(t.created))
		active = append(active, t.active.Sub(t.created))
		lastPlaced = max(lastPlaced, t.placed.Sub(start))
		lastActive = max(lastActive, t.active.Sub(start))
	}
	return placed, active, lastPlaced, lastActive
}

type processes struct{ manager, agents benchutil.ProcessUsage }

func usage(manager *managerSupervisor, agentsPID int) (processes, error) {
	m, err := manager.usage()
	if err != nil {
		return processes{}, err
	}
	a, err := benchutil.Usage(agentsPID)
	return processes{manager: m, agents: a}, err
}

// phase is what one phase (the launch or the delete) cost: kubenova's API writes per instance
// and the processes' CPU time and peak memory.
type phase struct {
	instanceWrites, otherWrites, events, refused float64
	managerCPU, agentsCPU                        time.Duration
	managerRSS, agentsRSS                        int64
}

// figures are one run's results.
type figures struct {
	instances                                           int
	allPlaced, allActive, activeP50, activeP95, allGone time.Duration
	launch, delete                                      phase
	// managerRestarts counts the manager's exits (a lost leader lease) and restarts.
	managerRestarts int
}

// report prints one phase's writes and the processes' usage, and returns them.
func report(writes benchutil.Writes, instances int, before, after processes) phase {
	isKubenova := benchutil.ByKubenova
	per := func(n int) float64 { return float64(n) / float64(instances) }
	p := phase{
		instanceWrites: per(writes.Total(benchutil.InstanceWrites)),
		refused:        per(writes.Total(func(k benchutil.WriteKey) bool { return isKubenova(k) && strings.Contains(k.Kind, "/") })),
		otherWrites: per(writes.Total(func(k benchutil.WriteKey) bool {
			return isKubenova(k) && k.Kind != "event" && k.Resource != "instances"
		})),
		events:     per(writes.Total(func(k benchutil.WriteKey) bool { return isKubenova(k) && k.Kind == "event" })),
		managerCPU: after.manager.CPU - before.manager.CPU,
		agentsCPU:  after.agents.CPU - before.agents.CPU,
		managerRSS: after.manager.PeakRSS >> 20,
		agentsRSS:  after.agents.PeakRSS >> 20,
	}
	fmt.Printf("  kubenova's API writes per instance: %.2f to the Instance, %.2f to other objects (Hypervisors, Leases), %.2f Events; %.2f refused (lost races)\n",
		p.instanceWrites, p.otherWrites, p.events, p.refused)
	writes.Print(os.Stdout, instances)
	fmt.Printf("  manager: %.1f CPU-seconds, peak RSS %d MiB\n", p.managerCPU.Seconds(), p.managerRSS)
	fmt.Printf("  simulated agents (one process): %.1f CPU-seconds, peak RSS %d MiB\n", p.agentsCPU.Seconds(), p.agentsRSS)
	return p
}

// summarize prints each figure's median over the runs and its range (min-max), so that a
// difference between two versions can be told from the spread between runs.
func summarize(runs []figures) {
	fmt.Printf("\n== over %d runs: median (min-max)\n", len(runs))
	row := func(label, format, unit string, of func(figures) float64) {
		v := make([]float64, 0, len(runs))
		for _, f := range runs {
			v = append(v, of(f))
		}
		fmt.Printf("  %-44s %s %s\n", label, spread(v, format), unit)
	}
	seconds := func(d time.Duration) float64 { return d.Seconds() }
	row("all placed", "%.1f", "s", func(f figures) float64 { return seconds(f.allPlaced) })
	row("scheduling decisions/s", "%.0f", "", func(f figures) float64 { return float64(f.instances) / seconds(f.allPlaced) })
	row("all Active", "%.1f", "s", func(f figures) float64 { return seconds(f.allActive) })
	row("create -> Active, P50", "%.1f", "s", func(f figures) float64 { return seconds(f.activeP50) })
	row("create -> Active, P95", "%.1f", "s", func(f figures) float64 { return seconds(f.activeP95) })
	for _, ph := range []struct {
		name string
		of   func(figures) phase
	}{{"launch", func(f figures) phase { return f.launch }}, {"delete", func(f figures) phase { return f.delete }}} {
		if ph.name == "delete" {
			row("all deleted", "%.1f", "s", func(f figures) float64 { return seconds(f.allGone) })
		}
		row(ph.name+": writes to the Instance per instance", "%.2f", "", func(f figures) float64 { return ph.of(f).instanceWrites })
		row(ph.name+": refused writes per instance", "%.2f", "", func(f figures) float64 { return ph.of(f).refused })
		row(ph.name+": other writes per instance", "%.2f", "", func(f figures) float64 { return ph.of(f).otherWrites })
		row(ph.name+": Events per instance", "%.2f", "", func(f figures) float64 { return ph.of(f).events })
		row(ph.name+": manager CPU", "%.1f", "CPU-s", func(f figures) float64 { return seconds(ph.of(f).managerCPU) })
		row(ph.name+": manager peak RSS", "%.0f", "MiB", func(f figures) float64 { return float64(ph.of(f).managerRSS) })
		row(ph.name+": simulated agents CPU", "%.1f", "CPU-s", func(f figures) float64 { return seconds(ph.of(f).agentsCPU) })
		row(ph.name+": simulated agents peak RSS", "%.0f", "MiB", func(f figures) float64 { return float64(ph.of(f).agentsRSS) })
	}
	row("manager restarts (lost leader lease)", "%.0f", "", func(f figures) float64 { return float64(f.managerRestarts) })
}

// spread formats the median of v and, with more than one value, its range: "17.8 (15.9-20.1)".
func spread(v []float64, format string) string {
	sorted := slices.Clone(v)
	slices.Sort(sorted)
	n := len(sorted)
	median := sorted[n/2]
	if n%2 == 0 {
		median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	if n == 1 {
		return fmt.Sprintf(format, median)
	}
	return fmt.Sprintf(format+" ("+format+"-"+format+")", median, sorted[0], sorted[n-1])
}
