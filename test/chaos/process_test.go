package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// A process is the manager or one node's agent, run in this test's own process so that it can
// be killed at any of its steps and started again, while what outlives a process stays: the
// API server, a node's hypervisor (a fake driver) and its storage directory.
//
// Killing at a step: every write the process sends to the API server and every call it makes
// that changes a domain is a step, reached just before and just after it happens. The goroutine
// that reaches the armed step ends there (runtime.Goexit: not one more line of it runs), the
// process's context is cancelled, and from then on every request and driver call it tries
// fails, as a dead process's would never be made. A call already under way in the hypervisor
// finishes, as libvirtd finishes a call whose agent died.
type process struct {
	name string
	// build makes the process's manager for one life, whose requests and driver calls go
	// through run.
	build func(cfg *rest.Config, run *processRun) (manager.Manager, error)
	cfg   *rest.Config

	mu  sync.Mutex
	run *processRun
}

// processRun is one life of a process: from its start to its death or stop.
type processRun struct {
	cancel  context.CancelFunc
	stopped chan struct{}
	err     error

	mu   sync.Mutex
	dead bool
	// died is closed when the armed step is reached.
	died chan struct{}
	// concerns says whether a step's subject (a namespace written to, a domain's UUID) is the
	// case's: only those steps count, not the agents' heartbeats or other cases' leftovers.
	concerns func(subject string) bool
	// crashAt is the step that kills the process ("" for none); seen counts each step's
	// occurrences since arming, trace lists them in order.
	crashAt string
	seen    map[string]int
	trace   []string
	// notify, if set, hears of each step that concerns the case, as it is reached.
	notify func(step string)
}

// errKilled is what a dead process's requests and driver calls get.
var errKilled = errors.New("the process was killed")

// start begins a new life of the process.
func (p *process) start() error {
	run := &processRun{stopped: make(chan struct{}), died: make(chan struct{}), seen: map[string]int{}}
	cfg := rest.CopyConfig(p.cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &stepTransport{next: rt, run: run} })
	mgr, err := p.build(cfg, run)
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	run.cancel = cancel
	p.mu.Lock()
	p.run = run
	p.mu.Unlock()
	go func() {
		defer close(run.stopped)
		run.err = mgr.Start(ctx)
	}()
	return nil
}

// current is the process's present life.
func (p *process) current() *processRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.run
}

// stop ends the process's life (a kill, if it is alive) and waits until its manager returned.
func (p *process) stop(timeout time.Duration) error {
	run := p.current()
	run.mu.Lock()
	run.dead = true
	run.mu.Unlock()
	run.cancel()
	select {
	case <-run.stopped:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s did not stop within %s", p.name, timeout)
	}
}

// arm starts counting the steps that concern a case, and kills the process at crashAt (the
// n-th occurrence of a step, "Spawn before#1"); "" only records them.
func (r *processRun) arm(crashAt string, concerns func(subject string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.crashAt, r.concerns, r.seen, r.trace, r.notify = crashAt, concerns, map[string]int{}, nil, nil
}

// onStep has notify hear of each step that concerns the case from now on (until the next arm).
func (r *processRun) onStep(notify func(step string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notify = notify
}

// steps lists the steps reached since arm, in order.
func (r *processRun) steps() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.trace...)
}

// ended says whether this life is over (killed or stopped, its manager returned).
func (r *processRun) ended() bool {
	select {
	case <-r.stopped:
		return true
	default:
		return false
	}
}

// killed says whether the armed step was reached.
func (r *processRun) killed() bool {
	select {
	case <-r.died:
		return true
	default:
		return false
	}
}

// reach is called at every step: it fails once the process is dead, and kills it at the armed
// step (the calling goroutine ends there).
func (r *processRun) reach(step, subject string) error {
	r.mu.Lock()
	if r.dead {
		r.mu.Unlock()
		return errKilled
	}
	if r.concerns == nil || !r.concerns(subject) {
		r.mu.Unlock()
		return nil
	}
	r.seen[step]++
	id := fmt.Sprintf("%s#%d", step, r.seen[step])
	r.trace = append(r.trace, id)
	if id != r.crashAt {
		notify := r.notify
		r.mu.Unlock()
		if notify != nil {
			notify(id)
		}
		return nil
	}
	r.dead = true
	close(r.died)
	r.mu.Unlock()
	r.cancel()
	runtime.Goexit()
	return nil
}

// alive fails once the process is dead: reads are no steps, but a dead process makes none.
func (r *processRun) alive() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead {
		return errKilled
	}
	return nil
}

// stepTransport makes each write a process sends to the API server a step, before the request
// and after its answer: subject is the namespace written to ("" for cluster-scoped objects).
type stepTransport struct {
	next http.RoundTripper
	run  *processRun
}

func (t *stepTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodGet {
		if err := t.run.alive(); err != nil {
			return nil, err
		}
		return t.next.RoundTrip(req)
	}
	step, subject, counts := describeWrite(req)
	if !counts {
		if err := t.run.alive(); err != nil {
			return nil, err
		}
		return t.next.RoundTrip(req)
	}
	if err := t.run.reach(step+" before", subject); err != nil {
		return nil, err
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if err := t.run.reach(step+" after", subject); err != nil {
		return nil, err
	}
	return resp, nil
}

// describeWrite names a write ("PATCH instances/status") and its namespace ("" for
// cluster-scoped objects). Events and Leases are no steps: dying while writing one changes
// nothing a later life depends on.
func describeWrite(req *http.Request) (step, namespace string, counts bool) {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	switch {
	case len(parts) > 2 && parts[0] == "api": // /api/v1/...
		parts = parts[2:]
	case len(parts) > 3 && parts[0] == "apis": // /apis/group/version/...
		parts = parts[3:]
	default:
		return "", "", false
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		namespace, parts = parts[1], parts[2:]
	}
	resource := parts[0]
	if resource == "events" || resource == "leases" {
		return "", "", false
	}
	if len(parts) == 3 {
		resource += "/" + parts[2] // a subresource: instances/status
	}
	return req.Method + " " + resource, namespace, true
}

// stepDriver makes each call that changes a domain a step, before and after it; subject is the
// domain's UUID. Every call fails once the process is dead.
type stepDriver struct {
	driver.Driver
	run *processRun
}

func (d *stepDriver) step(name, uuid string, call func() error) error {
	run := d.run
	if err := run.reach(name+" before", uuid); err != nil {
		return err
	}
	err := call()
	if rerr := run.reach(name+" after", uuid); rerr != nil {
		return rerr
	}
	return err
}

func (d *stepDriver) Spawn(ctx context.Context, m driver.Machine) error {
	return d.step("Spawn", m.UUID, func() error { return d.Driver.Spawn(ctx, m) })
}

func (d *stepDriver) Define(ctx context.Context, m driver.Machine) error {
	return d.step("Define", m.UUID, func() error { return d.Driver.Define(ctx, m) })
}

func (d *stepDriver) Destroy(ctx context.Context, uuid string) error {
	return d.step("Destroy", uuid, func() error { return d.Driver.Destroy(ctx, uuid) })
}

func (d *stepDriver) RequestShutdown(ctx context.Context, uuid string) error {
	return d.step("RequestShutdown", uuid, func() error { return d.Driver.RequestShutdown(ctx, uuid) })
}

func (d *stepDriver) PowerOff(ctx context.Context, uuid string) error {
	return d.step("PowerOff", uuid, func() error { return d.Driver.PowerOff(ctx, uuid) })
}

func (d *stepDriver) Pause(ctx context.Context, uuid string) error {
	return d.step("Pause", uuid, func() error { return d.Driver.Pause(ctx, uuid) })
}

func (d *stepDriver) Unpause(ctx context.Context, uuid string) error {
	return d.step("Unpause", uuid, func() error { return d.Driver.Unpause(ctx, uuid) })
}

func (d *stepDriver) Suspend(ctx context.Context, uuid string) error {
	return d.step("Suspend", uuid, func() error { return d.Driver.Suspend(ctx, uuid) })
}

func (d *stepDriver) Resume(ctx context.Context, uuid string) error {
	return d.step("Resume", uuid, func() error { return d.Driver.Resume(ctx, uuid) })
}

func (d *stepDriver) BackupDisk(ctx context.Context, uuid, target string) error {
	return d.step("BackupDisk", uuid, func() error { return d.Driver.BackupDisk(ctx, uuid, target) })
}

func (d *stepDriver) MigrateLive(ctx context.Context, uuid string, to driver.MigrationTarget) error {
	return d.step("MigrateLive", uuid, func() error { return d.Driver.MigrateLive(ctx, uuid, to) })
}

func (d *stepDriver) AbortMigration(ctx context.Context, uuid string) error {
	return d.step("AbortMigration", uuid, func() error { return d.Driver.AbortMigration(ctx, uuid) })
}

func (d *stepDriver) MigrationProgress(ctx context.Context, uuid string) (driver.MigrationStats, bool, error) {
	if err := d.run.alive(); err != nil {
		return driver.MigrationStats{}, false, err
	}
	return d.Driver.MigrationProgress(ctx, uuid)
}

func (d *stepDriver) ArrivedMigration(ctx context.Context, uuid string) (driver.MigrationStats, bool, error) {
	if err := d.run.alive(); err != nil {
		return driver.MigrationStats{}, false, err
	}
	return d.Driver.ArrivedMigration(ctx, uuid)
}

func (d *stepDriver) State(ctx context.Context, uuid string) (driver.State, error) {
	if err := d.run.alive(); err != nil {
		return driver.State{}, err
	}
	return d.Driver.State(ctx, uuid)
}

func (d *stepDriver) List(ctx context.Context) ([]driver.Domain, error) {
	if err := d.run.alive(); err != nil {
		return nil, err
	}
	return d.Driver.List(ctx)
}

func (d *stepDriver) HostInfo(ctx context.Context) (driver.HostInfo, error) {
	if err := d.run.alive(); err != nil {
		return driver.HostInfo{}, err
	}
	return d.Driver.HostInfo(ctx)
}

func (d *stepDriver) InterfaceAddresses(ctx context.Context, uuid string) ([]v1.ObservedInterface, error) {
	if err := d.run.alive(); err != nil {
		return nil, err
	}
	return d.Driver.InterfaceAddresses(ctx, uuid)
}

func (d *stepDriver) Ping(ctx context.Context) error {
	if err := d.run.alive(); err != nil {
		return err
	}
	return d.Driver.Ping(ctx)
}

// Close keeps the hypervisor: the agent's death is not the node's.
func (d *stepDriver) Close() error { return nil }
