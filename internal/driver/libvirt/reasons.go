package libvirt

import (
	golibvirt "libvirt.org/go/libvirt"

	"github.com/kubenova/kubenova/internal/driver"
)

// stateNames are libvirt's domain states as a person reads them.
var stateNames = map[golibvirt.DomainState]string{
	golibvirt.DOMAIN_NOSTATE: "no state", golibvirt.DOMAIN_RUNNING: "running",
	golibvirt.DOMAIN_BLOCKED: "blocked", golibvirt.DOMAIN_PAUSED: "paused",
	golibvirt.DOMAIN_SHUTDOWN: "shutting down", golibvirt.DOMAIN_SHUTOFF: "shut off",
	golibvirt.DOMAIN_CRASHED: "crashed", golibvirt.DOMAIN_PMSUSPENDED: "suspended by the guest",
}

func stateName(s golibvirt.DomainState) string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return "unknown"
}

// The reasons libvirt gives for a domain's state (virDomain*Reason), in CamelCase for
// status.agentReport.powerReason. Only the states whose reasons tell a person something are
// listed; any other reason reads Unknown.
var (
	runningReasons = map[golibvirt.DomainRunningReason]string{
		golibvirt.DOMAIN_RUNNING_BOOTED: "Booted", golibvirt.DOMAIN_RUNNING_MIGRATED: "Migrated",
		golibvirt.DOMAIN_RUNNING_RESTORED: "Restored", golibvirt.DOMAIN_RUNNING_FROM_SNAPSHOT: "FromSnapshot",
		golibvirt.DOMAIN_RUNNING_UNPAUSED: "Unpaused", golibvirt.DOMAIN_RUNNING_MIGRATION_CANCELED: "MigrationCanceled",
		golibvirt.DOMAIN_RUNNING_SAVE_CANCELED: "SaveCanceled", golibvirt.DOMAIN_RUNNING_WAKEUP: "Wakeup",
		golibvirt.DOMAIN_RUNNING_CRASHED: "Crashed",
	}
	pausedReasons = map[golibvirt.DomainPausedReason]string{
		golibvirt.DOMAIN_PAUSED_USER: "User", golibvirt.DOMAIN_PAUSED_MIGRATION: driver.ReasonPausedForMigration,
		golibvirt.DOMAIN_PAUSED_SAVE: "Save", golibvirt.DOMAIN_PAUSED_DUMP: "Dump",
		golibvirt.DOMAIN_PAUSED_IOERROR: "IOError", golibvirt.DOMAIN_PAUSED_WATCHDOG: "Watchdog",
		golibvirt.DOMAIN_PAUSED_FROM_SNAPSHOT: "FromSnapshot", golibvirt.DOMAIN_PAUSED_SHUTTING_DOWN: "ShuttingDown",
		golibvirt.DOMAIN_PAUSED_SNAPSHOT: "Snapshot", golibvirt.DOMAIN_PAUSED_CRASHED: "Crashed",
		golibvirt.DOMAIN_PAUSED_STARTING_UP: driver.ReasonStartingUp, golibvirt.DOMAIN_PAUSED_POSTCOPY: "PostCopy",
		golibvirt.DOMAIN_PAUSED_POSTCOPY_FAILED: "PostCopyFailed", golibvirt.DOMAIN_PAUSED_API_ERROR: "APIError",
	}
	shutoffReasons = map[golibvirt.DomainShutoffReason]string{
		golibvirt.DOMAIN_SHUTOFF_SHUTDOWN: "Shutdown", golibvirt.DOMAIN_SHUTOFF_DESTROYED: "Destroyed",
		golibvirt.DOMAIN_SHUTOFF_CRASHED: "Crashed", golibvirt.DOMAIN_SHUTOFF_MIGRATED: driver.ReasonMigrated,
		golibvirt.DOMAIN_SHUTOFF_SAVED: "Saved", golibvirt.DOMAIN_SHUTOFF_FAILED: "Failed",
		golibvirt.DOMAIN_SHUTOFF_FROM_SNAPSHOT: "FromSnapshot", golibvirt.DOMAIN_SHUTOFF_DAEMON: "Daemon",
	}
	crashedReasons = map[golibvirt.DomainCrashedReason]string{
		golibvirt.DOMAIN_CRASHED_PANICKED: "Panicked",
	}
)

// reasonName names the reason libvirt gives for a domain's state.
func reasonName(state golibvirt.DomainState, reason int) string {
	var name string
	switch state {
	case golibvirt.DOMAIN_RUNNING:
		name = runningReasons[golibvirt.DomainRunningReason(reason)]
	case golibvirt.DOMAIN_PAUSED:
		name = pausedReasons[golibvirt.DomainPausedReason(reason)]
	case golibvirt.DOMAIN_SHUTOFF:
		name = shutoffReasons[golibvirt.DomainShutoffReason(reason)]
	case golibvirt.DOMAIN_CRASHED:
		name = crashedReasons[golibvirt.DomainCrashedReason(reason)]
	case golibvirt.DOMAIN_SHUTDOWN:
		name = "ShuttingDown"
	}
	if name == "" {
		return "Unknown"
	}
	return name
}
