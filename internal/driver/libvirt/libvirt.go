// Package libvirt implements driver.Driver with libvirtd, through libvirt's C library (cgo).
// Only the agent imports it.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"sync"

	golibvirt "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
)

// Driver talks to one libvirtd. Calls share one connection; a call that finds it dead
// reconnects, and no connection is closed while another call may still be using it.
type Driver struct {
	uri  string
	mu   sync.RWMutex // read-held for the length of every call, write-held to reconnect
	conn *golibvirt.Connect
}

var _ driver.Driver = (*Driver)(nil)

// New connects to the libvirtd at uri (for example qemu:///system).
func New(uri string) (*Driver, error) {
	d := &Driver{uri: uri}
	if err := d.reconnect(nil); err != nil {
		return nil, err
	}
	return d, nil
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

// reconnect replaces the connection dead, unless another caller replaced it already.
func (d *Driver) reconnect(dead *golibvirt.Connect) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != dead {
		return nil
	}
	if d.conn != nil {
		_, _ = d.conn.Close()
		d.conn = nil
	}
	c, err := golibvirt.NewConnect(d.uri)
	if err != nil {
		return fmt.Errorf("connect to libvirt at %s: %w", d.uri, err)
	}
	d.conn = c
	return nil
}

func isNotFound(err error) bool {
	var lerr golibvirt.Error
	return errors.As(err, &lerr) && lerr.Code == golibvirt.ERR_NO_DOMAIN
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
	return d.with(func(c *golibvirt.Connect) error {
		dom, err := lookup(c, uuid)
		if err != nil {
			return err
		}
		defer func() { _ = dom.Free() }()
		return f(dom)
	})
}

// Spawn implements driver.Driver.
func (d *Driver) Spawn(_ context.Context, m driver.Machine) error {
	x, err := domainxml.Build(m)
	if err != nil {
		return err
	}
	return d.with(func(c *golibvirt.Connect) error {
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
		if err := dom.Create(); err != nil {
			return fmt.Errorf("start domain %s: %w", m.Name, err)
		}
		return nil
	})
}

// Destroy implements driver.Driver.
func (d *Driver) Destroy(_ context.Context, uuid string) error {
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
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

// PowerState implements driver.Driver.
func (d *Driver) PowerState(_ context.Context, uuid string) (v1.PowerState, error) {
	var p v1.PowerState
	err := d.withDomain(uuid, func(dom *golibvirt.Domain) error {
		var err error
		p, err = powerState(dom)
		return err
	})
	if errors.Is(err, driver.ErrNotFound) {
		return v1.PowerStateNoState, nil
	}
	return p, err
}

// powerState maps libvirt's domain state to Nova's power state, as nova/virt/libvirt does; a
// shut-off domain with a managed-save image is a suspended one.
func powerState(dom *golibvirt.Domain) (v1.PowerState, error) {
	state, _, err := dom.GetState()
	if err != nil {
		return "", fmt.Errorf("domain state: %w", err)
	}
	switch state {
	case golibvirt.DOMAIN_RUNNING, golibvirt.DOMAIN_BLOCKED:
		return v1.PowerStateRunning, nil
	case golibvirt.DOMAIN_PAUSED:
		return v1.PowerStatePaused, nil
	case golibvirt.DOMAIN_SHUTDOWN, golibvirt.DOMAIN_SHUTOFF:
		if saved, err := dom.HasManagedSaveImage(0); err == nil && saved {
			return v1.PowerStateSuspended, nil
		}
		return v1.PowerStateShutdown, nil
	case golibvirt.DOMAIN_CRASHED:
		return v1.PowerStateCrashed, nil
	case golibvirt.DOMAIN_PMSUSPENDED:
		return v1.PowerStateSuspended, nil
	default:
		return v1.PowerStateNoState, nil
	}
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
	power, err := powerState(dom)
	if err != nil {
		return driver.Domain{}, err
	}
	x, err := dom.GetXMLDesc(golibvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return driver.Domain{}, err
	}
	info := driver.Domain{UUID: uuid, Name: name, Power: power}
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
		}
		return nil
	})
	return info, err
}

// version renders libvirt's major*1e6+minor*1e3+micro encoding.
func version(v uint32) string {
	return fmt.Sprintf("%d.%d.%d", v/1000000, v/1000%1000, v%1000)
}

// Close implements driver.Driver.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn == nil {
		return nil
	}
	_, err := d.conn.Close()
	d.conn = nil
	return err
}
