// Package driver is the narrow interface between the node agent and its hypervisor. It speaks
// kubenova's language (spawn, destroy, reboot, suspend), not libvirt's; the libvirt package
// implements it for real and the fake package for controller unit tests.
package driver

import (
	"context"
	"errors"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// ErrNotFound is returned when the hypervisor has no domain for an instance.
var ErrNotFound = errors.New("no such domain")

// Machine is everything a node needs to run one instance. The agent prepares the disks before
// handing a Machine to the driver.
type Machine struct {
	// UUID is the instance's UID; the domain carries the same UUID, as Nova's do.
	UUID string
	// Name is the domain's name on the node.
	Name string
	// Namespace and InstanceName identify the Instance, recorded in the domain's metadata.
	Namespace    string
	InstanceName string
	VCPUs        int32
	MemoryMiB    int32
	// RootDisk is the path of the qcow2 root disk.
	RootDisk string
	// ConsoleLog is the file the serial console is logged to.
	ConsoleLog string
	// VirtType is kvm or qemu (TCG).
	VirtType v1.VirtType
}

// Domain is what the hypervisor reports of one domain.
type Domain struct {
	UUID  string
	Name  string
	Power v1.PowerState
	// Namespace and InstanceName come from the domain's metadata; empty for domains kubenova did
	// not define.
	Namespace    string
	InstanceName string
}

// HostInfo describes the node's hypervisor.
type HostInfo struct {
	Hostname       string
	HostUUID       string
	VCPUs          int64
	MemoryMiB      int64
	LibvirtVersion string
	QEMUVersion    string
}

// Driver runs instances on one node. Every method is idempotent: doing again what is done
// already succeeds, so that a task cut short by a crash can simply be repeated.
type Driver interface {
	// Spawn defines the domain if it is not defined and starts it if it is not running.
	Spawn(ctx context.Context, m Machine) error
	// Destroy stops the domain at once and undefines it; disks are left alone. A missing
	// domain is not an error.
	Destroy(ctx context.Context, uuid string) error
	// PowerState reports the domain's power state, NoState when there is no domain.
	PowerState(ctx context.Context, uuid string) (v1.PowerState, error)
	// List reports every domain on the node.
	List(ctx context.Context) ([]Domain, error)
	// HostInfo describes the node.
	HostInfo(ctx context.Context) (HostInfo, error)
	// Close releases the connection.
	Close() error
}
