// Package chaos kills kubenova's processes at each step of each operation and checks what
// every instance comes to: a defined state within a bound, its guest running on at most one
// node, its disk where its record says, and no reconcile that panicked.
//
// The processes run in this test's process (see process_test.go) against a real kube-apiserver
// and etcd, over fake hypervisors that outlive them and real storage directories. A step is a
// write to the API server or a call that changes a domain, killed before it is sent or after
// it took effect; each is found by running the operation once untouched and noting the steps
// each process took: every occurrence counts (the manager's first status write of a task gives
// it, its second records the outcome). CHAOS_REPORT names a file for the matrix as a Markdown
// table.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var (
	theCluster *cluster
	namespaces atomic.Int64

	rowsMu sync.Mutex
	rows   []row
)

// row is one case of the matrix.
type row struct {
	operation, process, step, result string
	took                             time.Duration
}

// The bounds: an operation whose process is not killed ends within opBound; once the killed
// process is back, the operation ends within settleBound.
const (
	opBound     = time.Minute
	settleBound = 90 * time.Second
)

func TestMain(m *testing.M) {
	work, err := os.MkdirTemp("", "kubenova-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	c, err := startCluster(context.Background(), work)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the cluster:", err)
		if c != nil {
			fmt.Fprintln(os.Stderr, c.tail(40))
			c.stop()
		}
		os.Exit(1)
	}
	theCluster = c
	code := m.Run()
	c.stop()
	if err := writeReport(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	if code == 0 && os.Getenv("CHAOS_KEEP") == "" {
		_ = os.RemoveAll(work)
	} else {
		fmt.Fprintln(os.Stderr, "the processes' log and storage are kept in", work)
	}
	os.Exit(code)
}

// TestKillEachProcessAtEachStep is the matrix: operation x process x step, and libvirtd
// restarting at each call an agent makes to it.
func TestKillEachProcessAtEachStep(t *testing.T) {
	c := theCluster
	for _, op := range operations {
		t.Run(op.name, func(t *testing.T) {
			steps, untouched := recordSteps(t, c, op)
			for _, p := range c.processes() {
				for _, step := range steps[p.name] {
					t.Run(p.name+" at "+step, func(t *testing.T) { disturbAt(t, c, op, killing(p), step, untouched) })
				}
			}
			// libvirtd restarting at each call an agent makes to it.
			for _, node := range nodes {
				for _, step := range steps[c.agents[node].name] {
					if strings.HasPrefix(step, "PATCH ") || strings.HasPrefix(step, "PUT ") || strings.HasPrefix(step, "POST ") || strings.HasPrefix(step, "DELETE ") {
						continue
					}
					d := libvirtdRestart(node)
					t.Run(d.name+" at "+step, func(t *testing.T) { disturbAt(t, c, op, d, step, untouched) })
				}
			}
		})
	}
}

// recordSteps runs the operation untouched, lists the steps each process took, and says how
// it ended.
func recordSteps(t *testing.T, c *cluster, op operation) (map[string][]string, string) {
	ctx := context.Background()
	ns, inst := prepare(t, c, op)
	concerns := concerning(ns, inst)
	for _, p := range c.processes() {
		p.current().arm("", concerns.match)
	}
	target := actOn(t, c, op, ns, inst, concerns)
	outcome := ""
	if err := waitFor(ctx, opBound, op.name, func() (bool, error) {
		var err error
		outcome, err = op.settled(ctx, c, target)
		return outcome != "", err
	}); err != nil {
		t.Fatalf("%s without a kill: %v\n%s", op.name, err, c.tail(30))
	}
	out := map[string][]string{}
	for _, p := range c.processes() {
		out[p.name] = p.current().steps()
	}
	restore(t, c, op, target)
	addRow(row{operation: op.name, process: "(none)", step: "-", result: outcome})
	t.Logf("%s untouched: %s; steps %v", op.name, outcome, out)
	tearDown(t, c, target)
	return out, outcome
}

// A disturbance strikes at a step of an operation: a process killed there, or a node's
// libvirtd restarting there.
type disturbance struct {
	name string
	// arm makes it strike at step, with every process counting the case's steps.
	arm func(c *cluster, step string, concerns func(string) bool)
	// struck says whether it did.
	struck func() bool
	// recover undoes it once it struck: the process started again, libvirtd back.
	recover func() error
	// waitedOut says the operation must end as it does undisturbed (a passing libvirtd
	// restart is waited out), unless the operation fails on a refused hypervisor call.
	waitedOut bool
}

// killing kills victim at the step, and starts it again.
func killing(victim *process) disturbance {
	var run *processRun
	return disturbance{
		name: victim.name,
		arm: func(c *cluster, step string, concerns func(string) bool) {
			for _, p := range c.processes() {
				crash := ""
				if p == victim {
					crash = step
				}
				p.current().arm(crash, concerns)
			}
			run = victim.current()
		},
		struck: func() bool { return run.killed() },
		recover: func() error {
			if err := victim.stop(30 * time.Second); err != nil {
				return err
			}
			return victim.start()
		},
	}
}

// libvirtdRestart has node's hypervisor refuse every call for libvirtdDown from the moment its
// agent reaches the step (a call made "before" is refused; one made "after" went through).
func libvirtdRestart(node string) disturbance {
	var mu sync.Mutex
	var back chan struct{}
	return disturbance{
		name:      "libvirtd " + node,
		waitedOut: true,
		arm: func(c *cluster, step string, concerns func(string) bool) {
			mu.Lock()
			back = nil
			mu.Unlock()
			for _, p := range c.processes() {
				p.current().arm("", concerns)
			}
			c.agents[node].current().onStep(func(reached string) {
				mu.Lock()
				defer mu.Unlock()
				if reached != step || back != nil {
					return
				}
				back = make(chan struct{})
				done := back
				host := c.hosts[node]
				for _, m := range driverMethods() {
					host.SetFail(m, errLibvirtdDown)
				}
				time.AfterFunc(libvirtdDown, func() {
					for _, m := range driverMethods() {
						host.SetFail(m, nil)
					}
					close(done)
				})
			})
		},
		struck: func() bool {
			mu.Lock()
			defer mu.Unlock()
			return back != nil
		},
		recover: func() error {
			mu.Lock()
			done := back
			mu.Unlock()
			select {
			case <-done:
				return nil
			case <-time.After(time.Minute):
				return errors.New("libvirtd did not come back")
			}
		},
	}
}

// libvirtdDown is how long a libvirtd restart in the matrix lasts.
const libvirtdDown = 2 * time.Second

// disturbAt runs the operation, has d strike at step, recovers, and checks the end.
func disturbAt(t *testing.T, c *cluster, op operation, d disturbance, step, untouched string) {
	ctx := context.Background()
	ns, inst := prepare(t, c, op)
	concerns := concerning(ns, inst)
	d.arm(c, step, concerns.match)
	began := time.Now()
	target := actOn(t, c, op, ns, inst, concerns)
	var twice []string
	watch := func() error {
		copies, err := c.runningCopies(ctx, concerns.uid())
		if len(copies) > 1 {
			twice = copies
		}
		return err
	}
	outcome := ""
	if err := waitFor(ctx, opBound, "the disturbance or the end", func() (bool, error) {
		if err := watch(); err != nil {
			return false, err
		}
		if d.struck() {
			return true, nil
		}
		var err error
		outcome, err = op.settled(ctx, c, target)
		return outcome != "", err
	}); err != nil {
		t.Fatalf("%v\n%s", err, c.tail(30))
	}
	// Disarmed before anything else happens: a step of the tear-down must not strike.
	for _, p := range c.processes() {
		p.current().arm("", nil)
	}
	reached := d.struck()
	if reached {
		if err := d.recover(); err != nil {
			t.Fatal(err)
		}
		outcome = ""
		if err := waitFor(ctx, settleBound, op.name+" after the recovery", func() (bool, error) {
			if err := watch(); err != nil {
				return false, err
			}
			var err error
			outcome, err = op.settled(ctx, c, target)
			return outcome != "", err
		}); err != nil {
			addRow(row{operation: op.name, process: d.name, step: step, result: "NOT SETTLED", took: time.Since(began)})
			t.Fatalf("%v\n%s", err, c.tail(40))
		}
	}
	restore(t, c, op, target)
	result := outcome
	if !reached {
		result = "not reached; " + outcome
	}
	addRow(row{operation: op.name, process: d.name, step: step, result: result, took: time.Since(began)})
	if twice != nil {
		t.Errorf("the guest ran on %v at once", twice)
	}
	failedAsAllowed := op.failsOnRefusedCall && strings.Contains(outcome, "Failed")
	if d.waitedOut && reached && outcome != untouched && !failedAsAllowed {
		t.Errorf("after %s at %s: %s; undisturbed it ends %s", d.name, step, outcome, untouched)
	}
	checkDisk(t, c, target)
	if n, err := panics(); err != nil || n != 0 {
		t.Errorf("reconciles panicked: %v (%v)", n, err)
	}
	tearDown(t, c, target)
}

// restore undoes what the operation's set-up did to the cluster.
func restore(t *testing.T, c *cluster, op operation, target *v1.Instance) {
	if op.restore == nil {
		return
	}
	if err := op.restore(context.Background(), c, target); err != nil {
		t.Fatalf("%v\n%s", err, c.tail(30))
	}
}

// prepare makes the case's namespace and brings its instance to where the operation begins,
// every process alive and disarmed.
func prepare(t *testing.T, c *cluster, op operation) (string, *v1.Instance) {
	ctx := context.Background()
	for _, p := range c.processes() {
		// A step armed in the last case may have been reached after its operation ended.
		run := p.current()
		run.arm("", nil)
		if run.killed() || run.ended() {
			if err := p.stop(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := p.start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, node := range nodes {
		if err := setForcedDown(ctx, c, node, false); err != nil {
			t.Fatal(err)
		}
	}
	ns := fmt.Sprintf("chaos-%03d", namespaces.Add(1))
	if err := c.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	inst, err := op.setup(ctx, c, ns)
	if err != nil {
		t.Fatalf("set-up: %v\n%s", err, c.tail(30))
	}
	return ns, inst
}

// subjects says which steps concern a case: writes into its namespace, calls about its domain.
type subjects struct {
	ns      string
	uidSeen atomic.Value
}

func concerning(ns string, inst *v1.Instance) *subjects {
	s := &subjects{ns: ns}
	s.uidSeen.Store("")
	if inst != nil {
		s.uidSeen.Store(string(inst.UID))
	}
	return s
}

func (s *subjects) uid() string { return s.uidSeen.Load().(string) }

func (s *subjects) match(subject string) bool {
	return subject != "" && (subject == s.ns || subject == s.uid())
}

// actOn starts the operation on the case's instance (a launch makes it).
func actOn(t *testing.T, c *cluster, op operation, ns string, inst *v1.Instance, s *subjects) *v1.Instance {
	target := inst
	if target == nil {
		target = &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: instanceName}}
	}
	if err := op.act(context.Background(), c, target); err != nil {
		t.Fatalf("%s: %v", op.name, err)
	}
	if s.uid() == "" {
		s.uidSeen.Store(string(target.UID))
	}
	return target
}

// checkDisk: an instance whose guest has a disk has it on the node its record names.
func checkDisk(t *testing.T, c *cluster, inst *v1.Instance) {
	cur := &v1.Instance{}
	err := c.k8s.Get(context.Background(), client.ObjectKeyFromObject(inst), cur)
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if cur.Status.Task != nil {
		t.Errorf("a task (%s) began after the operation had ended", cur.Status.Task.Action)
		return
	}
	if cur.Status.VMState == v1.VMStateShelvedOffloaded || cur.Status.NodeName == "" {
		return
	}
	disk, err := c.rootDisk(cur.Status.NodeName, string(cur.UID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Errorf("the instance is %s on %s, but its disk is not there: %v", cur.Status.VMState, cur.Status.NodeName, err)
	}
}

// tearDown deletes the case's instance and waits until it is gone, its guest with it.
func tearDown(t *testing.T, c *cluster, inst *v1.Instance) {
	ctx := context.Background()
	if err := client.IgnoreNotFound(c.k8s.Delete(ctx, inst)); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, time.Minute, "the instance deleted", func() (bool, error) {
		err := c.k8s.Get(ctx, client.ObjectKeyFromObject(inst), &v1.Instance{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	}); err != nil {
		t.Fatalf("%v\n%s", err, c.tail(30))
	}
	if copies, err := c.runningCopies(ctx, string(inst.UID)); err != nil || len(copies) > 0 {
		t.Errorf("deleted, its guest still runs on %v (%v)", copies, err)
	}
}

func addRow(r row) {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	rows = append(rows, r)
}

// writeReport writes the matrix as a Markdown table to CHAOS_REPORT, if set.
func writeReport() error {
	path := os.Getenv("CHAOS_REPORT")
	if path == "" {
		return nil
	}
	var b strings.Builder
	b.WriteString("| operation | process killed | step (n-th occurrence) | result after the restart | took |\n| --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		took := "-"
		if r.took > 0 {
			took = r.took.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.operation, r.process, r.step, r.result, took)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
