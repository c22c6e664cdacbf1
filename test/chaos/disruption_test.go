package chaos

import (
	"context"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// TestAnAPIServerOutage cuts every process off the API server for a minute (CHAOS_OUTAGE
// overrides it) while instances launch, live-migrate, snapshot and cold-migrate: leases expire,
// watches break, writes fail. Once it is back, each operation ends in a defined state, the
// guests ran on one node each, and their disks are where their records say.
func TestAnAPIServerOutage(t *testing.T) {
	outage := time.Minute
	if s := os.Getenv("CHAOS_OUTAGE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		outage = d
	}
	c := theCluster
	disrupted(t, c, "API server unreachable for "+outage.String(), named("launch", "live migration", "snapshot", "cold migration"),
		func(process, step string) bool { return process == c.manager.name },
		func() {
			c.proxy.cut()
			defer c.proxy.mend()
			<-time.After(outage) // the outage itself, not a wait for anything
		})
}

// TestALibvirtdRestartInTheMiddle has both nodes' hypervisors refuse every call for 10 seconds
// (libvirtd restarting; the guests run on) from the moment an agent first touches a domain.
func TestALibvirtdRestartInTheMiddle(t *testing.T) {
	c := theCluster
	disrupted(t, c, "libvirtd down for 10s", named("launch", "stop", "live migration", "snapshot", "rescue"),
		func(process, step string) bool {
			return strings.HasPrefix(process, "agent") && strings.HasSuffix(step, "before#1") && !strings.HasPrefix(step, "PATCH")
		},
		func() {
			down := driverMethods()
			for _, h := range c.hosts {
				for _, m := range down {
					h.SetFail(m, errLibvirtdDown)
				}
			}
			defer func() {
				for _, h := range c.hosts {
					for _, m := range down {
						h.SetFail(m, nil)
					}
				}
			}()
			<-time.After(10 * time.Second) // the restart itself
		})
}

// errLibvirtdDown is what a hypervisor whose daemon restarts answers.
var errLibvirtdDown = &driverDown{}

type driverDown struct{}

func (*driverDown) Error() string { return "cannot connect to libvirtd: connection refused" }

// driverMethods names every method of driver.Driver but Events and Close.
func driverMethods() []string {
	var out []string
	it := reflect.TypeFor[driver.Driver]()
	for i := range it.NumMethod() {
		if name := it.Method(i).Name; name != "Events" && name != "Close" {
			out = append(out, name)
		}
	}
	return out
}

// named picks operations by name.
func named(names ...string) []operation {
	var out []operation
	for _, n := range names {
		for _, op := range operations {
			if op.name == n {
				out = append(out, op)
			}
		}
	}
	return out
}

// disrupted starts ops on instances of their own at once, disrupts the cluster the moment
// trigger says a step of theirs was reached, and checks what each comes to once it is over:
// what the operation gives undisturbed (a disruption that passes is waited out, never a
// failure), its guest on one node, its disk where its record says.
func disrupted(t *testing.T, c *cluster, what string, ops []operation, trigger func(process, step string) bool, disrupt func()) {
	ctx := context.Background()
	type running struct {
		op     operation
		target *v1.Instance
		s      *subjects
	}
	var cases []running
	for _, op := range ops {
		ns, inst := prepare(t, c, op)
		cases = append(cases, running{op: op, s: concerning(ns, inst), target: inst})
	}
	concerns := func(subject string) bool {
		for _, r := range cases {
			if r.s.match(subject) {
				return true
			}
		}
		return false
	}
	triggered := make(chan struct{})
	var once sync.Once
	for _, p := range c.processes() {
		run := p.current()
		run.arm("", concerns)
		run.onStep(func(step string) {
			if trigger(p.name, step) {
				once.Do(func() { close(triggered) })
			}
		})
	}
	for i := range cases {
		cases[i].target = actOn(t, c, cases[i].op, cases[i].s.ns, cases[i].target, cases[i].s)
	}
	select {
	case <-triggered:
	case <-time.After(opBound):
		t.Fatalf("no step the disruption waits for was reached\n%s", c.tail(30))
	}
	began := time.Now()
	disrupt()
	for _, r := range cases {
		var twice []string
		outcome := ""
		err := waitFor(ctx, settleBound, r.op.name+" after: "+what, func() (bool, error) {
			copies, err := c.runningCopies(ctx, r.s.uid())
			if err != nil {
				return false, err
			}
			if len(copies) > 1 {
				twice = copies
			}
			outcome, err = r.op.settled(ctx, c, r.target)
			return outcome != "", err
		})
		if err != nil {
			addRow(row{operation: r.op.name, process: what, step: "-", result: "NOT SETTLED", took: time.Since(began)})
			t.Errorf("%v", err)
			continue
		}
		addRow(row{operation: r.op.name, process: what, step: "-", result: outcome, took: time.Since(began)})
		// A passing outage is waited out: nothing fails for it.
		for _, bad := range []string{"Error", "Failed", "refused"} {
			if strings.Contains(outcome, bad) {
				t.Errorf("%s after %s: %s", r.op.name, what, outcome)
			}
		}
		if twice != nil {
			t.Errorf("%s: the guest ran on %v at once", r.op.name, twice)
		}
		checkDisk(t, c, r.target)
	}
	if n, err := panics(); err != nil || n != 0 {
		t.Errorf("reconciles panicked: %v (%v)", n, err)
	}
	if t.Failed() {
		t.Logf("%s", c.tail(60))
	}
	for _, r := range cases {
		tearDown(t, c, r.target)
	}
}
