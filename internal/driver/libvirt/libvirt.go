// Package libvirt implements driver.Driver with libvirtd, through libvirt's C library (cgo).
// Only the agent imports it.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	golibvirt "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
)

// Driver talks to one libvirtd. Quick calls share one connection; a call that finds it dead
// reconnects, and no connection is closed while another call may still be using it. The
// connection's lifecycle events feed Events; when libvirtd goes away, the driver reconnects by
// itself and then asks for a look at every domain, since anything may have changed meanwhile.
//
// The calls that take seconds (starting, destroying, saving and restoring domains) run on
// connections of their own: libvirtd serves only a handful of requests of one connection
// at once (max_client_requests, 5 by default), so on one connection a storm of launches
// queued behind itself, and every quick look waited behind the storm (test/bench/storm).
type Driver struct {
	uri    string
	mu     sync.RWMutex // read-held for the length of every call, write-held to reconnect
	conn   *golibvirt.Connect
	events chan driver.Event
	closed chan struct{}
	once   sync.Once
	// callback is conn's lifecycle event registration, dropped with the connection.
	callback int
	// operations holds the idle operation connections; a nil entry is one not opened yet (or
	// dropped after it died), so the channel's capacity bounds how many exist.
	operations chan *golibvirt.Connect
}

// operationConnections is how many long calls run at once, each on a connection of its own
// besides the main one (opened when first needed): as many as the agent's workers, since a
// QEMU start spends much of its time waiting. Twenty launches 100 ms apart (test/bench/storm,
// 2 cores, TCG) had the last guest running 9 s after the first apply with sixteen, 20 s with
// four, 22 s with every call on the one connection.
const operationConnections = 16

var _ driver.Driver = (*Driver)(nil)

// eventBuffer is how many events may wait for the agent; when it is full a new event is
// dropped, which the agent's periodic resync makes good.
const eventBuffer = 1024

// keepAlive: a libvirtd that has not answered for interval*count seconds counts as gone.
const (
	keepAliveInterval = 5
	keepAliveCount    = 3
)

var (
	eventLoop    sync.Once
	eventLoopErr error
)

// startEventLoop runs libvirt's default event loop, which delivers domain events and keepalive
// messages. It must exist before the first connection is opened; a failure to set it up is
// returned to every caller, not only the first.
func startEventLoop() error {
	eventLoop.Do(func() {
		if eventLoopErr = golibvirt.EventRegisterDefaultImpl(); eventLoopErr != nil {
			return
		}
		go func() {
			for {
				if err := golibvirt.EventRunDefaultImpl(); err != nil {
					time.Sleep(100 * time.Millisecond) // do not spin on a broken loop
				}
			}
		}()
	})
	return eventLoopErr
}

// New connects to the libvirtd at uri (for example qemu:///system).
func New(uri string) (*Driver, error) {
	if err := startEventLoop(); err != nil {
		return nil, fmt.Errorf("libvirt event loop: %w", err)
	}
	d := &Driver{uri: uri, events: make(chan driver.Event, eventBuffer), closed: make(chan struct{}),
		operations: make(chan *golibvirt.Connect, operationConnections)}
	for range operationConnections {
		d.operations <- nil
	}
	if err := d.reconnect(nil); err != nil {
		return nil, err
	}
	return d, nil
}

// Events implements driver.Driver.
func (d *Driver) Events() <-chan driver.Event { return d.events }

func (d *Driver) emit(e driver.Event) {
	select {
	case <-d.closed:
	case d.events <- e:
	default:
	}
}

// with runs f with a live connection, reconnecting once if libvirtd restarted under us.
func (d *Driver) with(f func(c *golibvirt.Connect) error) error {
	d.mu.RLock()
	c := d.conn
	alive := false
	if c != nil {
		alive, _ = c.IsAlive()
	}
	if alive {
		defer d.mu.RUnlock()
		return f(c)
	}
	d.mu.RUnlock()
	if err := d.reconnect(c); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.conn == nil {
		return fmt.Errorf("libvirt at %s: not connected", d.uri)
	}
	return f(d.conn)
}

// withOperation runs f, a call that may take seconds, on an operation connection, waiting for
// one to be free. A connection that died (libvirtd restarted) is replaced.
func (d *Driver) withOperation(f func(c *golibvirt.Connect) error) error {
	var c *golibvirt.Connect
	select {
	case c = <-d.operations:
	case <-d.closed:
		return fmt.Errorf("libvirt at %s: driver closed", d.uri)
	}
	defer func() { d.operations <- c }()
	if c != nil {
		if alive, _ := c.IsAlive(); !alive {
			_, _ = c.Close()
			c = nil
		}
	}
	if c == nil {
		conn, err := golibvirt.NewConnect(d.uri)
		if err != nil {
			return fmt.Errorf("connect to libvirt at %s: %w", d.uri, err)
		}
		// Keepalive, so that a libvirtd that hangs fails the call instead of holding it forever.
		if err := conn.SetKeepAlive(keepAliveInterval, keepAliveCount); err != nil {
			_, _ = conn.Close()
			return fmt.Errorf("libvirt keepalive: %w", err)
		}
		c = conn
	}
	return f(c)
}

// withOperationOn runs f, a call that may take seconds, on the domain of uuid;
// driver.ErrNotFound when there is none.
func (d *Driver) withOperationOn(uuid string, f func(dom *golibvirt.Domain) error) error {
	return onDomain(d.withOperation, uuid, f)
}

// onDomain runs f on the domain of uuid, looked up on the connection that with gives.
func onDomain(with func(func(c *golibvirt.Connect) error) error, uuid string, f func(dom *golibvirt.Domain) error) error {
	return with(func(c *golibvirt.Connect) error {
		dom, err := lookup(c, uuid)
		if err != nil {
			return err
		}
		defer func() { _ = dom.Free() }()
		if err := f(dom); isNotFound(err) {
			// Gone between the look-up and the call: a migration's end undefines the source.
			return fmt.Errorf("domain %s: %w (%w)", uuid, driver.ErrNotFound, err)
		} else if err != nil {
			return err
		}
		return nil
	})
}

// reconnect replaces the connection dead, unless another caller replaced it already. The new
// connection reports lifecycle events and its own loss.
func (d *Driver) reconnect(dead *golibvirt.Connect) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != dead {
		return nil
	}
	select {
	case <-d.closed:
		return fmt.Errorf("libvirt at %s: driver closed", d.uri)
	default:
	}
	d.dropConnection()
	c, err := golibvirt.NewConnect(d.uri)
	if err != nil {
		return fmt.Errorf("connect to libvirt at %s: %w", d.uri, err)
	}
	callback, err := d.subscribe(c)
	if err != nil {
		_, _ = c.Close()
		return err
	}
	d.conn, d.callback = c, callback
	if dead != nil {
		// Whatever happened while the connection was down went unreported.
		d.emit(driver.Event{})
	}
	return nil
}

// dropConnection unsubscribes and closes the current connection, if any. Call with d.mu held.
func (d *Driver) dropConnection() {
	if d.conn == nil {
		return
	}
	_ = d.conn.DomainEventDeregister(d.callback)
	_ = d.conn.UnregisterCloseCallback()
	_, _ = d.conn.Close()
	d.conn = nil
}

// subscribe asks c for lifecycle events and for word when it dies, and returns the event
// registration.
func (d *Driver) subscribe(c *golibvirt.Connect) (int, error) {
	if err := c.SetKeepAlive(keepAliveInterval, keepAliveCount); err != nil {
		return 0, fmt.Errorf("libvirt keepalive: %w", err)
	}
	callback, err := c.DomainEventLifecycleRegister(nil, func(_ *golibvirt.Connect, dom *golibvirt.Domain, _ *golibvirt.DomainEventLifecycle) {
		if uuid, err := dom.GetUUIDString(); err == nil {
			d.emit(driver.Event{UUID: uuid})
		}
	})
	if err != nil {
		return 0, fmt.Errorf("subscribe to libvirt domain events: %w", err)
	}
	// The callback runs on the event loop, which must not block: reconnect elsewhere.
	err = c.RegisterCloseCallback(func(conn *golibvirt.Connect, _ golibvirt.ConnectCloseReason) {
		go d.reconnectUntilUp(conn)
	})
	if err != nil {
		_ = c.DomainEventDeregister(callback)
		return 0, fmt.Errorf("watch the libvirt connection: %w", err)
	}
	return callback, nil
}

// reconnectUntilUp reconnects after libvirtd went away, trying every second until it is back
// or the driver is closed.
func (d *Driver) reconnectUntilUp(dead *golibvirt.Connect) {
	for {
		if err := d.reconnect(dead); err == nil {
			return
		}
		select {
		case <-d.closed:
			return
		case <-time.After(time.Second):
		}
	}
}

func isNotFound(err error) bool {
	var lerr golibvirt.Error
	return errors.As(err, &lerr) && lerr.Code == golibvirt.ERR_NO_DOMAIN
}

// isNotRunning says the domain stopped between our look and our call: the goal is reached.
func isNotRunning(err error) bool {
	var lerr golibvirt.Error
	return errors.As(err, &lerr) && lerr.Code == golibvirt.ERR_OPERATION_INVALID
}

// lookup finds a domain by UUID; driver.ErrNotFound when there is none. The caller frees it.
func lookup(c *golibvirt.Connect, uuid string) (*golibvirt.Domain, error) {
	dom, err := c.LookupDomainByUUIDString(uuid)
	if isNotFound(err) {
		return nil, driver.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up domain %s: %w", uuid, err)
	}
	return dom, nil
}

// withDomain runs f on the domain of uuid; driver.ErrNotFound when there is none.
func (d *Driver) withDomain(uuid string, f func(dom *golibvirt.Domain) error) error {
	return onDomain(d.with, uuid, f)
}

// Spawn implements driver.Driver.
func (d *Driver) Spawn(_ context.Context, m driver.Machine) error {
	x, err := domainxml.Build(m)
	if err != nil {
		return err
	}
	return d.withOperation(func(c *golibvirt.Connect) error {
		dom, err := lookup(c, m.UUID)
		if errors.Is(err, driver.ErrNotFound) {
			dom, err = c.DomainDefineXML(x)
			if err != nil {
				return fmt.Errorf("define domain %s: %w", m.Name, err)
			}
		} else if err != nil {
			return err
		}
		defer func() { _ = dom.Free() }()
		// Any active domain counts as spawned: QEMU pauses a guest whose disk is full, and a
		// repeated spawn must not fail on it.
		active, err := dom.IsActive()
		if err != nil {
			return fmt.Errorf("state of domain %s: %w", m.Name, err)
		}
		if active {
			return nil
		}
		// A domain that does not run takes the machine's definition (a rescue adds a disk, an
		// unrescue takes it away), unless it has saved memory, which belongs to the old one.
		if saved, err := dom.HasManagedSaveImage(0); err == nil && !saved {
			updated, err := c.DomainDefineXML(x)
			if err != nil {
				return fmt.Errorf("define domain %s: %w", m.Name, err)
			}
			_ = dom.Free()
			dom = updated
		}
		if err := dom.Create(); err != nil {
			return fmt.Errorf("start domain %s: %w", m.Name, err)
		}
		return nil
	})
}

// Define implements driver.Driver.
func (d *Driver) Define(_ context.Context, m driver.Machine) error {
	x, err := domainxml.Build(m)
	if err != nil {
		return err
	}
	return d.withOperation(func(c *golibvirt.Connect) error {
		if dom, err := lookup(c, m.UUID); err == nil {
			active, err := dom.IsActive()
			_ = dom.Free()
			if err != nil {
				return fmt.Errorf("state of domain %s: %w", m.Name, err)
			}
			if active {
				return fmt.Errorf("domain %s runs: its definition is not replaced under it", m.Name)
			}
		} else if !errors.Is(err, driver.ErrNotFound) {
			return err
		}
		dom, err := c.DomainDefineXML(x)
		if err != nil {
			return fmt.Errorf("define domain %s: %w", m.Name, err)
		}
		return dom.Free()
	})
}

// Destroy implements driver.Driver.
func (d *Driver) Destroy(_ context.Context, uuid string) error {
	err := d.withOperationOn(uuid, func(dom *golibvirt.Domain) error {
		if active, err := dom.IsActive(); err == nil && active {
			if err := dom.Destroy(); err != nil && !isNotFound(err) {
				return fmt.Errorf("destroy domain %s: %w", uuid, err)
			}
		}
		flags := golibvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | golibvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
		if err := dom.UndefineFlags(flags); err != nil && !isNotFound(err) {
			return fmt.Errorf("undefine domain %s: %w", uuid, err)
		}
		return nil
	})
	if errors.Is(err, driver.ErrNotFound) {
		return nil
	}
	return err
}

// RequestShutdown implements driver.Driver.
func (d *Driver) RequestShutdown(_ context.Context, uuid string) error {
	return d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		if err := dom.ShutdownFlags(golibvirt.DOMAIN_SHUTDOWN_ACPI_POWER_BTN); err != nil && !isNotRunning(err) {
			return fmt.Errorf("shut down domain %s: %w", uuid, err)
		}
		return nil
	})
}

// PowerOff implements driver.Driver.
func (d *Driver) PowerOff(_ context.Context, uuid string) error {
	return d.withOperationOn(uuid, func(dom *golibvirt.Domain) error {
		if active, err := dom.IsActive(); err == nil && active {
			if err := dom.Destroy(); err != nil && !isNotRunning(err) {
				return fmt.Errorf("power off domain %s: %w", uuid, err)
			}
		}
		if saved, err := dom.HasManagedSaveImage(0); err == nil && saved {
			if err := dom.ManagedSaveRemove(0); err != nil {
				return fmt.Errorf("drop saved state of domain %s: %w", uuid, err)
			}
		}
		return nil
	})
}

// Pause implements driver.Driver.
func (d *Driver) Pause(_ context.Context, uuid string) error {
	return d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		state, _, err := dom.GetState()
		if err != nil {
			return fmt.Errorf("state of domain %s: %w", uuid, err)
		}
		switch state {
		case golibvirt.DOMAIN_PAUSED:
			return nil
		case golibvirt.DOMAIN_RUNNING, golibvirt.DOMAIN_BLOCKED:
			if err := dom.Suspend(); err != nil {
				return fmt.Errorf("pause domain %s: %w", uuid, err)
			}
			return nil
		default:
			return fmt.Errorf("cannot pause domain %s: it is not running (%s)", uuid, stateName(state))
		}
	})
}

// Unpause implements driver.Driver.
func (d *Driver) Unpause(_ context.Context, uuid string) error {
	return d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		state, _, err := dom.GetState()
		if err != nil {
			return fmt.Errorf("state of domain %s: %w", uuid, err)
		}
		switch state {
		case golibvirt.DOMAIN_RUNNING, golibvirt.DOMAIN_BLOCKED:
			return nil
		case golibvirt.DOMAIN_PAUSED:
			if err := dom.Resume(); err != nil {
				return fmt.Errorf("unpause domain %s: %w", uuid, err)
			}
			return nil
		default:
			return fmt.Errorf("cannot unpause domain %s: it is not paused (%s)", uuid, stateName(state))
		}
	})
}

// Suspend implements driver.Driver with libvirt's managed save: QEMU writes the memory to a
// file libvirt keeps beside the domain, and exits.
func (d *Driver) Suspend(_ context.Context, uuid string) error {
	return d.withOperationOn(uuid, func(dom *golibvirt.Domain) error {
		active, err := dom.IsActive()
		if err != nil {
			return fmt.Errorf("state of domain %s: %w", uuid, err)
		}
		if !active {
			if saved, err := dom.HasManagedSaveImage(0); err == nil && saved {
				return nil
			}
			return fmt.Errorf("cannot suspend domain %s: it is not running", uuid)
		}
		if err := dom.ManagedSave(0); err != nil {
			return fmt.Errorf("suspend domain %s: %w", uuid, err)
		}
		return nil
	})
}

// Resume implements driver.Driver: starting a domain that has a managed save restores it.
func (d *Driver) Resume(_ context.Context, uuid string) error {
	return d.withOperationOn(uuid, func(dom *golibvirt.Domain) error {
		active, err := dom.IsActive()
		if err != nil {
			return fmt.Errorf("state of domain %s: %w", uuid, err)
		}
		if active {
			return nil
		}
		saved, err := dom.HasManagedSaveImage(0)
		if err != nil {
			return fmt.Errorf("saved state of domain %s: %w", uuid, err)
		}
		if !saved {
			return fmt.Errorf("cannot resume domain %s: it has no saved state (booting it would lose the guest's memory)", uuid)
		}
		if err := dom.Create(); err != nil {
			return fmt.Errorf("resume domain %s: %w", uuid, err)
		}
		return nil
	})
}

// BackupDisk implements driver.Driver with libvirt's push-mode backup: QEMU copies the disk
// as it was when the job began (copy-before-write keeps that moment's blocks) into a new
// standalone qcow2 while the guest runs on, as Nova's live snapshot does with a block copy.
func (d *Driver) BackupDisk(ctx context.Context, uuid, target string) error {
	return d.withOperationOn(uuid, func(dom *golibvirt.Domain) error {
		// A job left by an agent that died in the middle: its copy is of an older moment, and
		// a domain runs one job at a time.
		if err := abortJob(ctx, dom); err != nil {
			return fmt.Errorf("abandon the earlier backup of domain %s: %w", uuid, err)
		}
		if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
			return err
		}
		x, err := domainxml.Backup(target)
		if err != nil {
			return err
		}
		if err := dom.BackupBegin(x, "", 0); err != nil {
			return fmt.Errorf("begin the backup of domain %s: %w", uuid, err)
		}
		if err := waitForJob(ctx, dom); err != nil {
			_ = dom.AbortJob()
			return fmt.Errorf("back up domain %s: %w", uuid, err)
		}
		stats, err := dom.GetJobStats(golibvirt.DOMAIN_JOB_STATS_COMPLETED)
		if err != nil {
			return fmt.Errorf("outcome of the backup of domain %s: %w", uuid, err)
		}
		if stats.Type != golibvirt.DOMAIN_JOB_COMPLETED {
			return fmt.Errorf("the backup of domain %s ended %s", uuid, jobTypeName(stats.Type))
		}
		return nil
	})
}

// jobPoll is how often a job's end is looked for: a backup of a small disk takes tens of
// milliseconds.
const jobPoll = 50 * time.Millisecond

// waitForJob waits until the domain runs no job.
func waitForJob(ctx context.Context, dom *golibvirt.Domain) error {
	for {
		info, err := dom.GetJobInfo()
		if err != nil {
			return err
		}
		if info.Type == golibvirt.DOMAIN_JOB_NONE {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(jobPoll):
		}
	}
}

// abortJob ends the domain's running job, if any, and waits until it has ended.
func abortJob(ctx context.Context, dom *golibvirt.Domain) error {
	info, err := dom.GetJobInfo()
	if err != nil || info.Type == golibvirt.DOMAIN_JOB_NONE {
		return err
	}
	if err := dom.AbortJob(); err != nil {
		return err
	}
	return waitForJob(ctx, dom)
}

func jobTypeName(t golibvirt.DomainJobType) string {
	switch t {
	case golibvirt.DOMAIN_JOB_FAILED:
		return "failed"
	case golibvirt.DOMAIN_JOB_CANCELLED:
		return "cancelled"
	default:
		return fmt.Sprintf("in state %d", t)
	}
}

// State implements driver.Driver.
func (d *Driver) State(_ context.Context, uuid string) (driver.State, error) {
	var st driver.State
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		var err error
		st, err = domainState(dom)
		return err
	})
	if errors.Is(err, driver.ErrNotFound) {
		return driver.State{Power: v1.PowerStateNoState, RunID: -1}, nil
	}
	return st, err
}

// domainState maps libvirt's domain state and reason to Nova's power state, as nova/virt/libvirt
// does, with three refinements: a shut-off domain with a managed-save image is a suspended one,
// one whose QEMU died (shut off, reason crashed) is Crashed, not a clean Shutdown, and one being
// shut down is still Running (reason ShuttingDown) until it is off.
func domainState(dom *golibvirt.Domain) (driver.State, error) {
	state, reason, err := dom.GetState()
	if err != nil {
		return driver.State{}, fmt.Errorf("domain state: %w", err)
	}
	st := driver.State{RunID: -1, Reason: reasonName(state, reason)}
	switch state {
	case golibvirt.DOMAIN_RUNNING, golibvirt.DOMAIN_BLOCKED:
		st.Power = v1.PowerStateRunning
	case golibvirt.DOMAIN_PAUSED:
		st.Power = v1.PowerStatePaused
		if golibvirt.DomainPausedReason(reason) == golibvirt.DOMAIN_PAUSED_CRASHED {
			st.Power = v1.PowerStateCrashed
		}
	case golibvirt.DOMAIN_SHUTDOWN:
		// Being shut down: the guest still runs (its shutdown), and is Shutdown only once QEMU
		// is gone. Reporting it Shutdown now would have the manager act on a passing state.
		st.Power = v1.PowerStateRunning
	case golibvirt.DOMAIN_SHUTOFF:
		st.Power = v1.PowerStateShutdown
		if golibvirt.DomainShutoffReason(reason) == golibvirt.DOMAIN_SHUTOFF_CRASHED {
			st.Power = v1.PowerStateCrashed
		}
		if saved, err := dom.HasManagedSaveImage(0); err == nil && saved {
			st.Power = v1.PowerStateSuspended
		}
	case golibvirt.DOMAIN_CRASHED:
		st.Power = v1.PowerStateCrashed
	case golibvirt.DOMAIN_PMSUSPENDED:
		st.Power = v1.PowerStateSuspended
	default:
		st.Power = v1.PowerStateNoState
	}
	if state != golibvirt.DOMAIN_SHUTOFF {
		id, err := dom.GetID()
		if err != nil {
			return driver.State{}, fmt.Errorf("domain id: %w", err)
		}
		st.RunID = int64(id)
	}
	return st, nil
}

// List implements driver.Driver. A domain that cannot be described is left out rather than
// failing the whole list; one undefined while we list is simply gone.
func (d *Driver) List(_ context.Context) ([]driver.Domain, error) {
	var out []driver.Domain
	err := d.with(func(c *golibvirt.Connect) error {
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return fmt.Errorf("list domains: %w", err)
		}
		for i := range doms {
			info, err := describe(&doms[i])
			_ = doms[i].Free()
			if err == nil {
				out = append(out, info)
			}
		}
		return nil
	})
	return out, err
}

func describe(dom *golibvirt.Domain) (driver.Domain, error) {
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return driver.Domain{}, err
	}
	name, err := dom.GetName()
	if err != nil {
		return driver.Domain{}, err
	}
	st, err := domainState(dom)
	if err != nil {
		return driver.Domain{}, err
	}
	x, err := dom.GetXMLDesc(golibvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return driver.Domain{}, err
	}
	info := driver.Domain{UUID: uuid, Name: name, Power: st.Power}
	if meta, ok := domainxml.ParseMetadata(x); ok {
		info.Namespace, info.InstanceName = meta.Namespace, meta.Name
	}
	return info, nil
}

// HostInfo implements driver.Driver.
func (d *Driver) HostInfo(_ context.Context) (driver.HostInfo, error) {
	var info driver.HostInfo
	err := d.with(func(c *golibvirt.Connect) error {
		node, err := c.GetNodeInfo()
		if err != nil {
			return fmt.Errorf("node info: %w", err)
		}
		hostname, err := c.GetHostname()
		if err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
		libVersion, err := c.GetLibVersion()
		if err != nil {
			return fmt.Errorf("libvirt version: %w", err)
		}
		qemuVersion, err := c.GetVersion()
		if err != nil {
			return fmt.Errorf("hypervisor version: %w", err)
		}
		capsXML, err := c.GetCapabilities()
		if err != nil {
			return fmt.Errorf("capabilities: %w", err)
		}
		var caps libvirtxml.Caps
		if err := caps.Unmarshal(capsXML); err != nil {
			return fmt.Errorf("parse capabilities: %w", err)
		}
		info = driver.HostInfo{
			Hostname: hostname, HostUUID: caps.Host.UUID,
			VCPUs: int64(node.Cpus), MemoryMiB: int64(node.Memory / 1024),
			LibvirtVersion: version(libVersion), QEMUVersion: version(qemuVersion),
			KVM: offersKVM(&caps),
		}
		return nil
	})
	return info, err
}

// offersKVM: libvirt's capabilities list a kvm domain type for a guest of the host's own
// architecture, which the QEMU driver does only where it can open /dev/kvm.
func offersKVM(caps *libvirtxml.Caps) bool {
	for _, g := range caps.Guests {
		if g.Arch.Name != caps.Host.CPU.Arch {
			continue
		}
		for _, d := range g.Arch.Domains {
			if d.Type == "kvm" {
				return true
			}
		}
	}
	return false
}

// InterfaceAddresses implements driver.Driver with the leases of libvirt's own networks' DHCP
// servers. A bridge's addresses are in the node's ARP table, which the agent reads itself:
// libvirt's ARP source fails on libvirt 9.0 ("wrong nlmsg len").
func (d *Driver) InterfaceAddresses(_ context.Context, uuid string) ([]v1.ObservedInterface, error) {
	var out []v1.ObservedInterface
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		byMAC := map[string]int{}
		for _, source := range []golibvirt.DomainInterfaceAddressesSource{golibvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE} {
			ifaces, err := dom.ListAllInterfaceAddresses(source)
			if err != nil {
				return fmt.Errorf("interface addresses: %w", err)
			}
			for _, iface := range ifaces {
				mac := strings.ToLower(iface.Hwaddr)
				i, ok := byMAC[mac]
				if !ok {
					i = len(out)
					byMAC[mac] = i
					out = append(out, v1.ObservedInterface{MACAddress: mac})
				}
				for _, a := range iface.Addrs {
					if !slices.Contains(out[i].IPAddresses, a.Addr) {
						out[i].IPAddresses = append(out[i].IPAddresses, a.Addr)
					}
				}
			}
		}
		return nil
	})
	return out, err
}

// Ping implements driver.Driver with the cheapest call that reaches libvirtd.
func (d *Driver) Ping(_ context.Context) error {
	return d.with(func(c *golibvirt.Connect) error {
		if _, err := c.GetLibVersion(); err != nil {
			return fmt.Errorf("libvirt at %s: %w", d.uri, err)
		}
		return nil
	})
}

// version renders libvirt's major*1e6+minor*1e3+micro encoding.
func version(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// Close implements driver.Driver.
func (d *Driver) Close() error {
	d.once.Do(func() { close(d.closed) })
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropConnection()
	// Close the operation connections as they come back idle.
	for range operationConnections {
		if c := <-d.operations; c != nil {
			_, _ = c.Close()
		}
	}
	return nil
}
