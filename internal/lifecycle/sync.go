package lifecycle

import (
	"slices"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// syncedStates are the vm states whose power state the hypervisor decides. The others either
// run a task, wait for a request (Resized, Rescued), are not on a node (ShelvedOffloaded) or
// accept any power state (Error).
var syncedStates = []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStatePaused, v1.VMStateSuspended}

// foundState is the vm state a domain in each power state rests in. A domain that is gone or
// dead counts as stopped: its disk is still there, and a start boots it again.
var foundState = map[v1.PowerState]v1.VMState{
	v1.PowerStateRunning:   v1.VMStateActive,
	v1.PowerStatePaused:    v1.VMStatePaused,
	v1.PowerStateSuspended: v1.VMStateSuspended,
	v1.PowerStateShutdown:  v1.VMStateStopped,
	v1.PowerStateCrashed:   v1.VMStateStopped,
	v1.PowerStateNoState:   v1.VMStateStopped,
}

// SyncPowerState compares an idle instance's vm state with the power state the hypervisor
// reports, as Nova's _sync_instance_power_state does, and returns the vm state the instance is
// really in, and true when that differs from vm. Where Nova keeps its database's word and acts
// (it force-stops an instance found running while stopped, and ignores one found paused),
// kubenova records what is (the hypervisor is right) and lets the spec decide: the manager's
// powerHold. The caller must not ask while a task runs: a task changes the power state on
// purpose.
func SyncPowerState(vm v1.VMState, power v1.PowerState) (v1.VMState, bool) {
	if power == "" || !slices.Contains(syncedStates, vm) {
		return vm, false
	}
	if expected, _ := ExpectedPowerState(vm); power == expected {
		return vm, false
	}
	found, ok := foundState[power]
	if !ok || found == vm {
		return vm, false
	}
	return found, true
}
