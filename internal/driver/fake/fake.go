// Package fake is an in-memory driver.Driver for fast unit tests of the agent's logic. It never
// stands in for libvirt in a test that claims a feature works.
package fake

import (
	"context"
	"fmt"
	"sort"
	"sync"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// Driver keeps domains in a map.
type Driver struct {
	mu          sync.Mutex
	domains     map[string]*domain
	failSpawn   error
	failDestroy error
	calls       map[string]int
}

type domain struct {
	machine driver.Machine
	power   v1.PowerState
}

var _ driver.Driver = (*Driver)(nil)

// New returns an empty fake.
func New() *Driver {
	return &Driver{domains: map[string]*domain{}, calls: map[string]int{}}
}

func (d *Driver) called(name string) {
	d.calls[name]++
}

// SetFailSpawn makes Spawn return err from now on; nil heals it.
func (d *Driver) SetFailSpawn(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failSpawn = err
}

// SetFailDestroy makes Destroy return err from now on; nil heals it.
func (d *Driver) SetFailDestroy(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failDestroy = err
}

// CallCount says how often a method was called.
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
func (d *Driver) Spawn(_ context.Context, m driver.Machine) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.called("Spawn")
	if d.failSpawn != nil {
		return d.failSpawn
	}
	if m.UUID == "" || m.RootDisk == "" {
		return fmt.Errorf("spawn %s: machine lacks uuid or root disk", m.Name)
	}
	d.domains[m.UUID] = &domain{machine: m, power: v1.PowerStateRunning}
	return nil
}

// Destroy implements driver.Driver.
func (d *Driver) Destroy(_ context.Context, uuid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.called("Destroy")
	if d.failDestroy != nil {
		return d.failDestroy
	}
	delete(d.domains, uuid)
	return nil
}

// PowerState implements driver.Driver.
func (d *Driver) PowerState(_ context.Context, uuid string) (v1.PowerState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dom, ok := d.domains[uuid]; ok {
		return dom.power, nil
	}
	return v1.PowerStateNoState, nil
}

// SetPowerState changes a domain's power state behind the agent's back, as virsh would.
func (d *Driver) SetPowerState(uuid string, p v1.PowerState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dom, ok := d.domains[uuid]; ok {
		dom.power = p
	}
}

// List implements driver.Driver.
func (d *Driver) List(_ context.Context) ([]driver.Domain, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
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
	return driver.HostInfo{Hostname: "fake", HostUUID: "00000000-0000-0000-0000-000000000001",
		VCPUs: 4, MemoryMiB: 8192, LibvirtVersion: "fake", QEMUVersion: "fake"}, nil
}

// Close implements driver.Driver.
func (d *Driver) Close() error { return nil }
