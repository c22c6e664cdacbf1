// Package driver is the narrow interface between the node agent and its hypervisor. It speaks
// kubenova's language (spawn, destroy, shut down, pause, suspend), not libvirt's; the libvirt
// package implements it for real and the fake package for controller unit tests.
package driver

import (
	"context"
	"errors"
	"time"

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
	// RescueDisk, when set, is a qcow2 disk the domain boots from instead, with RootDisk as its
	// second disk (Nova's rescue).
	RescueDisk string
	// ConfigDrive, when set, is a raw cloud-init NoCloud drive attached read-only after the
	// other disks.
	ConfigDrive string
	// ConsoleLog is the file the serial console is logged to.
	ConsoleLog string
	// VirtType is kvm or qemu (TCG).
	VirtType v1.VirtType
	// NICs are the guest's network interfaces, in order.
	NICs []NIC
}

// NIC is one network interface of a machine.
type NIC struct {
	// MACAddress the guest sees.
	MACAddress string
	// Type says what Source names: a Linux bridge or a libvirt network of the node.
	Type   v1.NetworkType
	Source string
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

// State is what the hypervisor says of one domain now.
type State struct {
	// Power is Nova's power state; NoState when there is no domain.
	Power v1.PowerState
	// Reason is the hypervisor's reason for it (libvirt's state reason, in CamelCase).
	Reason string
	// RunID identifies the domain's current run: it changes every time the domain starts, and
	// is -1 while the domain is not running. It tells whether a reboot already happened.
	RunID int64
}

// Active says whether the domain has a running (or paused) process.
func (s State) Active() bool { return s.RunID >= 0 }

// ReasonMigrated is the reason of a domain that a live migration took elsewhere: its guest
// runs on the target, and the source's definition is about to be undefined.
const ReasonMigrated = "Migrated"

// ReasonPausedForMigration and ReasonStartingUp are the reasons of a paused incoming domain
// whose live migration has not completed: libvirt starts its vCPUs only then.
const (
	ReasonPausedForMigration = "Migration"
	ReasonStartingUp         = "StartingUp"
)

// Departed says whether the domain left this node by a live migration that succeeded.
func (s State) Departed() bool {
	return s.Power == v1.PowerStateNoState || (s.Power == v1.PowerStateShutdown && s.Reason == ReasonMigrated)
}

// HostInfo describes the node's hypervisor.
type HostInfo struct {
	Hostname       string
	HostUUID       string
	VCPUs          int64
	MemoryMiB      int64
	LibvirtVersion string
	QEMUVersion    string
	// KVM: the hypervisor offers KVM guests for the host's own architecture (libvirt lists a
	// kvm domain type in its capabilities only where /dev/kvm works for it).
	KVM bool
}

// MigrationTarget is where a live migration goes and how.
type MigrationTarget struct {
	// URI is the target's libvirt URI.
	URI string
	// SourceRoot and TargetRoot are the two nodes' storage roots: the domain's file paths under
	// the first are moved under the second.
	SourceRoot, TargetRoot string
	// Block copies the disks into the files the target made for them; otherwise both nodes
	// share them.
	Block bool
	// SharedStorage tells the hypervisor that the disks are on storage both nodes mount, so
	// that it migrates them without copying even where it cannot tell by itself (libvirt's
	// VIR_MIGRATE_UNSAFE).
	SharedStorage bool
	// TLS encrypts the migration's data stream with the hypervisors' TLS certificates.
	TLS bool
	// BandwidthMiBs caps the migration's data rate in MiB/s; 0 leaves it to the hypervisor.
	BandwidthMiBs uint64
	// NICs are the domain's NICs as the target plugs them (by MAC): its bridges or libvirt
	// networks may be named otherwise than the source's.
	NICs []NIC
}

// MigrationStats is a migration's progress or outcome, as the hypervisor counts it.
type MigrationStats struct {
	DataTotal, DataRemaining int64
	Elapsed, Downtime        time.Duration
}

// Percent is how much of the data has been copied.
func (s MigrationStats) Percent() int32 {
	if s.DataTotal <= 0 {
		return 0
	}
	done := s.DataTotal - s.DataRemaining
	if done < 0 {
		done = 0
	}
	return int32(done * 100 / s.DataTotal)
}

// Event says that something happened to a domain. An Event with an empty UUID says that any
// domain may have changed (the connection to the hypervisor was lost and is back), so every
// instance should be looked at again.
type Event struct {
	UUID string
}

// Driver runs instances on one node. Every method is idempotent: doing again what is done
// already succeeds, so that a task cut short by a crash can simply be repeated. None of them
// waits for the guest: a method that asks the guest for something returns once it is asked.
type Driver interface {
	// Spawn defines the domain as m describes (updating the definition of a domain that is not
	// running) and starts it if it is not running. A domain with saved state (see Suspend)
	// keeps its definition and resumes from that state.
	Spawn(ctx context.Context, m Machine) error
	// Define defines the domain as m describes (updating the definition of a domain that is
	// not running) without starting it: an instance that stays stopped through a resize.
	Define(ctx context.Context, m Machine) error
	// Destroy stops the domain at once and undefines it; disks are left alone. A missing
	// domain is not an error.
	Destroy(ctx context.Context, uuid string) error
	// RequestShutdown presses the domain's ACPI power button and returns; the guest decides.
	RequestShutdown(ctx context.Context, uuid string) error
	// PowerOff stops the domain at once, as pulling the plug would, and drops any saved
	// state; the definition and the disks stay.
	PowerOff(ctx context.Context, uuid string) error
	// Pause stops the domain's vCPUs; its memory stays in the host's.
	Pause(ctx context.Context, uuid string) error
	// Unpause lets a paused domain's vCPUs run again.
	Unpause(ctx context.Context, uuid string) error
	// Suspend saves the domain's memory to disk and ends its process (Nova's suspend).
	Suspend(ctx context.Context, uuid string) error
	// Resume starts a suspended domain from its saved memory; it fails rather than boot a
	// domain that has no saved state.
	Resume(ctx context.Context, uuid string) error
	// BackupDisk writes a standalone qcow2 copy of the running (or paused) domain's root disk,
	// consistent at the moment it starts, to target, while the guest keeps running; it returns
	// once the copy is complete. A copy begun before (by an agent that died) is abandoned and
	// begun again.
	BackupDisk(ctx context.Context, uuid, target string) error
	// MigrateLive moves the running (or paused) domain to another node's hypervisor while it
	// runs, and returns once the move is over: on success the domain runs there, defined
	// there, and is gone from here; on failure it still runs here. Cancelling ctx does not
	// stop the move; AbortMigration does.
	MigrateLive(ctx context.Context, uuid string, to MigrationTarget) error
	// MigrationProgress reports the domain's outgoing migration in flight; false when none
	// runs.
	MigrationProgress(ctx context.Context, uuid string) (MigrationStats, bool, error)
	// AbortMigration cancels the domain's migration in flight, if any; the guest runs on here.
	AbortMigration(ctx context.Context, uuid string) error
	// ArrivedMigration reports the completed migration that brought the domain here; false
	// when the hypervisor has no record of one.
	ArrivedMigration(ctx context.Context, uuid string) (MigrationStats, bool, error)
	// State reports the domain's state now.
	State(ctx context.Context, uuid string) (State, error)
	// List reports every domain on the node.
	List(ctx context.Context) ([]Domain, error)
	// HostInfo describes the node.
	HostInfo(ctx context.Context) (HostInfo, error)
	// InterfaceAddresses reports the addresses the hypervisor knows on the domain's NICs: the
	// DHCP leases of its own networks.
	InterfaceAddresses(ctx context.Context, uuid string) ([]v1.ObservedInterface, error)
	// Ping makes one round trip to the hypervisor, reconnecting if the connection died: the
	// agent's readiness.
	Ping(ctx context.Context) error
	// Events delivers an Event whenever a domain's lifecycle changes; nothing is sent on it
	// after Close.
	Events() <-chan Event
	// Close releases the connection.
	Close() error
}
