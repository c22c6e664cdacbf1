// Package fake is an in-memory driver.Driver for fast unit tests of the agent's logic and for
// simulated nodes (the agent's --driver=fake), whose guests exist only in this map. It never
// stands in for libvirt in a test that claims a feature works.
package fake

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// Driver keeps domains in a map. Its guests obey the ACPI power button at once unless told to
// ignore it.
type Driver struct {
	mu      sync.Mutex
	domains map[string]*domain
	// failures are the errors SetFail told methods to return, by method name.
	failures map[string]error
	// hung are the methods SetHang made block until their context ends.
	hung       map[string]bool
	ignoreACPI bool
	calls      map[string]int
	lastRun    int64
	events     chan driver.Event
	host       driver.HostInfo
	// leases are the addresses a simulated DHCP server gave, by MAC.
	leases map[string][]string
	// replyLost is the power state SetMigrateReplyLost leaves the next migrated source in.
	replyLost v1.PowerState
}

type domain struct {
	machine driver.Machine
	power   v1.PowerState
	reason  string
	runID   int64
	// arrived says the domain came by a live migration.
	arrived bool
}

var _ driver.Driver = (*Driver)(nil)

// New returns an empty fake of a small host.
func New() *Driver {
	return NewHost(driver.HostInfo{Hostname: "fake", HostUUID: "00000000-0000-0000-0000-000000000001",
		VCPUs: 4, MemoryMiB: 8192, LibvirtVersion: "fake", QEMUVersion: "fake"})
}

// NewHost returns an empty fake of the host that info describes.
func NewHost(info driver.HostInfo) *Driver {
	return &Driver{domains: map[string]*domain{}, calls: map[string]int{}, failures: map[string]error{},
		events: make(chan driver.Event, 1024), host: info}
}

// called counts a call of a method and returns the error SetFail gave it, if any. Call with
// d.mu held.
func (d *Driver) called(name string) error {
	d.calls[name]++
	return d.failures[name]
}

// call is called for a method that takes the lock for nothing else.
func (d *Driver) call(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.called(name)
}

// set changes a domain's state and says so on Events, as libvirt's lifecycle events do.
func (d *Driver) set(uuid string, dom *domain, p v1.PowerState, reason string) {
	dom.power, dom.reason = p, reason
	switch p {
	case v1.PowerStateRunning, v1.PowerStatePaused:
		if dom.runID < 0 {
			d.lastRun++
			dom.runID = d.lastRun
		}
	default:
		dom.runID = -1
	}
	select {
	case d.events <- driver.Event{UUID: uuid}:
	default:
	}
}

// SetFail makes the driver method of that name (its name in driver.Driver, "Spawn") return
// err from now on, before it does anything; nil heals it. Any method can fail, as a libvirtd
// can refuse any call.
func (d *Driver) SetFail(method string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		delete(d.failures, method)
		return
	}
	d.failures[method] = err
}

// SetHang makes the driver method of that name block until its caller's context ends (and
// then return the context's error), as a call into a hung libvirtd or storage would; false
// heals it. Only the calls a task makes that can take long (Spawn, Define, Destroy, PowerOff,
// BackupDisk) hang.
func (d *Driver) SetHang(method string, hang bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.hung == nil {
		d.hung = map[string]bool{}
	}
	d.hung[method] = hang
}

// hang blocks while method is hung and ctx lasts; it returns ctx's error if it ended.
func (d *Driver) hang(ctx context.Context, method string) error {
	d.mu.Lock()
	hung := d.hung[method]
	d.mu.Unlock()
	if !hung {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// SetIgnoreACPI makes the guests ignore the ACPI power button (true) or obey it (false).
func (d *Driver) SetIgnoreACPI(ignore bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ignoreACPI = ignore
}

// CallCount says how often a method was called; "State <uuid>" counts the looks at one domain.
func (d *Driver) CallCount(method string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[method]
}

// Has says whether a domain with this UUID is defined.
func (d *Driver) Has(uuid string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.domains[uuid]
	return ok
}

// Spawn implements driver.Driver.
func (d *Driver) Spawn(ctx context.Context, m driver.Machine) error {
	if err := d.hang(ctx, "Spawn"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called("Spawn"); err != nil {
		return err
	}
	if m.UUID == "" || m.RootDisk == "" {
		return fmt.Errorf("spawn %s: machine lacks uuid or root disk", m.Name)
	}
	dom, ok := d.domains[m.UUID]
	if !ok {
		dom = &domain{machine: m, runID: -1}
		d.domains[m.UUID] = dom
	}
	if dom.runID < 0 {
		reason := "Booted"
		if dom.power == v1.PowerStateSuspended {
			reason = "Restored"
		} else {
			dom.machine = m // a domain that does not run takes the new definition
		}
		d.set(m.UUID, dom, v1.PowerStateRunning, reason)
	}
	return nil
}

// Machine returns the definition of a domain, and false when there is none.
func (d *Driver) Machine(uuid string) (driver.Machine, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dom, ok := d.domains[uuid]
	if !ok {
		return driver.Machine{}, false
	}
	return dom.machine, true
}

// Define implements driver.Driver.
func (d *Driver) Define(ctx context.Context, m driver.Machine) error {
	if err := d.hang(ctx, "Define"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called("Define"); err != nil {
		return err
	}
	if m.UUID == "" || m.RootDisk == "" {
		return fmt.Errorf("define %s: machine lacks uuid or root disk", m.Name)
	}
	dom, ok := d.domains[m.UUID]
	if !ok {
		dom = &domain{machine: m, runID: -1}
		d.domains[m.UUID] = dom
		d.set(m.UUID, dom, v1.PowerStateShutdown, "Defined")
		return nil
	}
	if dom.runID >= 0 {
		return fmt.Errorf("define %s: the domain runs", m.Name)
	}
	dom.machine = m
	return nil
}

// Destroy implements driver.Driver.
func (d *Driver) Destroy(ctx context.Context, uuid string) error {
	if err := d.hang(ctx, "Destroy"); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called("Destroy"); err != nil {
		return err
	}
	delete(d.domains, uuid)
	return nil
}

// withDomain runs f on a domain under the lock; driver.ErrNotFound when there is none.
func (d *Driver) withDomain(method, uuid string, f func(dom *domain) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called(method); err != nil {
		return err
	}
	dom, ok := d.domains[uuid]
	if !ok {
		return driver.ErrNotFound
	}
	return f(dom)
}

// RequestShutdown implements driver.Driver.
func (d *Driver) RequestShutdown(_ context.Context, uuid string) error {
	return d.withDomain("RequestShutdown", uuid, func(dom *domain) error {
		if dom.power == v1.PowerStateRunning && !d.ignoreACPI {
			d.set(uuid, dom, v1.PowerStateShutdown, "Shutdown")
		}
		return nil
	})
}

// BackupDisk implements driver.Driver. The fake has no QEMU to copy a running disk from, so it
// flattens the disk file with qemu-img, as the agent does for a stopped instance: what reaches
// the image store in a test is still a real standalone image. Simulated nodes, whose disks are
// empty files, cannot snapshot.
func (d *Driver) BackupDisk(ctx context.Context, uuid, target string) error {
	if err := d.hang(ctx, "BackupDisk"); err != nil {
		return err
	}
	d.mu.Lock()
	if err := d.called("BackupDisk"); err != nil {
		d.mu.Unlock()
		return err
	}
	dom, ok := d.domains[uuid]
	active := ok && dom.runID >= 0
	var disk string
	if ok {
		disk = dom.machine.RootDisk
	}
	d.mu.Unlock()
	if !ok {
		return driver.ErrNotFound
	}
	if !active {
		return fmt.Errorf("back up domain %s: it is not running", uuid)
	}
	_ = os.Remove(target)
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-O", "qcow2", disk, target).CombinedOutput(); err != nil {
		return fmt.Errorf("back up domain %s: %w: %s", uuid, err, out)
	}
	return nil
}

// PowerOff implements driver.Driver.
func (d *Driver) PowerOff(ctx context.Context, uuid string) error {
	if err := d.hang(ctx, "PowerOff"); err != nil {
		return err
	}
	return d.withDomain("PowerOff", uuid, func(dom *domain) error {
		if dom.runID >= 0 || dom.power == v1.PowerStateSuspended {
			d.set(uuid, dom, v1.PowerStateShutdown, "Destroyed")
		}
		return nil
	})
}

// Pause implements driver.Driver.
func (d *Driver) Pause(_ context.Context, uuid string) error {
	return d.withDomain("Pause", uuid, func(dom *domain) error {
		switch dom.power {
		case v1.PowerStatePaused:
			return nil
		case v1.PowerStateRunning:
			d.set(uuid, dom, v1.PowerStatePaused, "User")
			return nil
		}
		return fmt.Errorf("cannot pause domain %s: it is %s", uuid, dom.power)
	})
}

// Unpause implements driver.Driver.
func (d *Driver) Unpause(_ context.Context, uuid string) error {
	return d.withDomain("Unpause", uuid, func(dom *domain) error {
		switch dom.power {
		case v1.PowerStateRunning:
			return nil
		case v1.PowerStatePaused:
			d.set(uuid, dom, v1.PowerStateRunning, "Unpaused")
			return nil
		}
		return fmt.Errorf("cannot unpause domain %s: it is %s", uuid, dom.power)
	})
}

// Suspend implements driver.Driver.
func (d *Driver) Suspend(_ context.Context, uuid string) error {
	return d.withDomain("Suspend", uuid, func(dom *domain) error {
		switch dom.power {
		case v1.PowerStateSuspended:
			return nil
		case v1.PowerStateRunning, v1.PowerStatePaused:
			d.set(uuid, dom, v1.PowerStateSuspended, "Saved")
			return nil
		}
		return fmt.Errorf("cannot suspend domain %s: it is %s", uuid, dom.power)
	})
}

// Resume implements driver.Driver.
func (d *Driver) Resume(_ context.Context, uuid string) error {
	return d.withDomain("Resume", uuid, func(dom *domain) error {
		switch dom.power {
		case v1.PowerStateRunning:
			return nil
		case v1.PowerStateSuspended:
			d.set(uuid, dom, v1.PowerStateRunning, "Restored")
			return nil
		}
		return fmt.Errorf("cannot resume domain %s: it has no saved state", uuid)
	})
}

// State implements driver.Driver.
func (d *Driver) State(_ context.Context, uuid string) (driver.State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls["State "+uuid]++ // the looks at one domain: counted, never failed
	if err := d.called("State"); err != nil {
		return driver.State{}, err
	}
	if dom, ok := d.domains[uuid]; ok {
		return driver.State{Power: dom.power, Reason: dom.reason, RunID: dom.runID}, nil
	}
	return driver.State{Power: v1.PowerStateNoState, RunID: -1}, nil
}

// Lease gives a MAC an address, as a network's DHCP server would: running domains with a NIC
// of that MAC report it.
func (d *Driver) Lease(mac, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.leases == nil {
		d.leases = map[string][]string{}
	}
	d.leases[mac] = append(d.leases[mac], ip)
}

// InterfaceAddresses implements driver.Driver: a running domain's NICs, with the addresses
// Lease gave their MACs.
func (d *Driver) InterfaceAddresses(_ context.Context, uuid string) ([]v1.ObservedInterface, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called("InterfaceAddresses"); err != nil {
		return nil, err
	}
	dom, ok := d.domains[uuid]
	if !ok {
		return nil, fmt.Errorf("domain %s: %w", uuid, driver.ErrNotFound)
	}
	var out []v1.ObservedInterface
	for _, nic := range dom.machine.NICs {
		out = append(out, v1.ObservedInterface{MACAddress: nic.MACAddress, IPAddresses: append([]string(nil), d.leases[nic.MACAddress]...)})
	}
	return out, nil
}

// SetPowerState changes a domain's power state behind the agent's back, as virsh or the guest
// itself would.
func (d *Driver) SetPowerState(uuid string, p v1.PowerState, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dom, ok := d.domains[uuid]; ok {
		d.set(uuid, dom, p, reason)
	}
}

// List implements driver.Driver.
func (d *Driver) List(_ context.Context) ([]driver.Domain, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called("List"); err != nil {
		return nil, err
	}
	out := make([]driver.Domain, 0, len(d.domains))
	for uuid, dom := range d.domains {
		out = append(out, driver.Domain{UUID: uuid, Name: dom.machine.Name, Power: dom.power,
			Namespace: dom.machine.Namespace, InstanceName: dom.machine.InstanceName})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out, nil
}

// HostInfo implements driver.Driver.
func (d *Driver) HostInfo(context.Context) (driver.HostInfo, error) {
	if err := d.call("HostInfo"); err != nil {
		return driver.HostInfo{}, err
	}
	return d.host, nil
}

// Ping implements driver.Driver: a simulated hypervisor answers unless told to fail.
func (d *Driver) Ping(context.Context) error { return d.call("Ping") }

// Events implements driver.Driver.
func (d *Driver) Events() <-chan driver.Event { return d.events }

// Close implements driver.Driver.
func (d *Driver) Close() error { return nil }

// hosts are the fakes that take migrations, by URI (Serve).
var hosts sync.Map

// Serve makes the fake reachable at uri for live migrations from other fakes of the process,
// as a simulated fleet's nodes reach each other.
func (d *Driver) Serve(uri string) { hosts.Store(uri, d) }

// MigrateLive implements driver.Driver: the domain moves to the fake served at to.URI, running
// as it ran here, its paths moved to the target's root.
func (d *Driver) MigrateLive(_ context.Context, uuid string, to driver.MigrationTarget) error {
	if err := d.call("MigrateLive"); err != nil {
		return err
	}
	t, ok := hosts.Load(to.URI)
	if !ok {
		return fmt.Errorf("live-migrate domain %s: no hypervisor answers at %s", uuid, to.URI)
	}
	target := t.(*Driver)
	if target == d {
		return fmt.Errorf("live-migrate domain %s: %s is this host", uuid, to.URI)
	}
	d.mu.Lock()
	dom, ok := d.domains[uuid]
	if !ok {
		d.mu.Unlock()
		return driver.ErrNotFound
	}
	if dom.runID < 0 {
		d.mu.Unlock()
		return fmt.Errorf("live-migrate domain %s: it is not running", uuid)
	}
	moved, lost := *dom, d.replyLost
	d.replyLost = ""
	if lost != "" {
		reason := "MigrationCanceled"
		if lost == v1.PowerStatePaused {
			reason = "APIError"
		}
		d.set(uuid, dom, lost, reason)
	} else {
		delete(d.domains, uuid)
		d.set(uuid, &domain{}, v1.PowerStateNoState, driver.ReasonMigrated)
	}
	d.mu.Unlock()

	m := moved.machine
	if to.SourceRoot != to.TargetRoot {
		for _, p := range []*string{&m.RootDisk, &m.RescueDisk, &m.ConfigDrive, &m.ConsoleLog} {
			if rest, ok := strings.CutPrefix(*p, to.SourceRoot); ok {
				*p = to.TargetRoot + rest
			}
		}
	}
	target.mu.Lock()
	defer target.mu.Unlock()
	arrived := &domain{machine: m, runID: -1, arrived: true}
	target.domains[uuid] = arrived
	target.set(uuid, arrived, moved.power, driver.ReasonMigrated)
	if lost != "" {
		return fmt.Errorf("live-migrate domain %s: the connection to %s closed before the Finish reply", uuid, to.URI)
	}
	return nil
}

// SetMigrateReplyLost makes the next MigrateLive end as one whose Finish reply libvirt lost:
// the guest runs on the target, the source's domain stays, in power (Running: libvirt resumed
// it, as its Confirm phase does after an error; Paused: that resume failed), and the call
// returns an error.
func (d *Driver) SetMigrateReplyLost(power v1.PowerState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.replyLost = power
}

// MigrationProgress implements driver.Driver: a fake migration is over when MigrateLive returns.
func (d *Driver) MigrationProgress(context.Context, string) (driver.MigrationStats, bool, error) {
	return driver.MigrationStats{}, false, d.call("MigrationProgress")
}

// AbortMigration implements driver.Driver.
func (d *Driver) AbortMigration(context.Context, string) error { return d.call("AbortMigration") }

// ArrivedMigration implements driver.Driver.
func (d *Driver) ArrivedMigration(_ context.Context, uuid string) (driver.MigrationStats, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.called("ArrivedMigration"); err != nil {
		return driver.MigrationStats{}, false, err
	}
	dom, ok := d.domains[uuid]
	if !ok || !dom.arrived {
		return driver.MigrationStats{}, false, nil
	}
	return driver.MigrationStats{}, true, nil
}
