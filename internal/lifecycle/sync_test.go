package lifecycle

import (
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestSyncPowerState(t *testing.T) {
	cases := []struct {
		vm      v1.VMState
		power   v1.PowerState
		want    v1.VMState
		changed bool
	}{
		// The guest powered itself off, QEMU died, or the domain vanished: Nova stops it.
		{v1.VMStateActive, v1.PowerStateShutdown, v1.VMStateStopped, true},
		{v1.VMStateActive, v1.PowerStateCrashed, v1.VMStateStopped, true},
		{v1.VMStateActive, v1.PowerStateNoState, v1.VMStateStopped, true},
		// virsh behind kubenova's back: what the hypervisor says wins.
		{v1.VMStateActive, v1.PowerStatePaused, v1.VMStatePaused, true},
		{v1.VMStatePaused, v1.PowerStateRunning, v1.VMStateActive, true},
		{v1.VMStateStopped, v1.PowerStateRunning, v1.VMStateActive, true},
		{v1.VMStateSuspended, v1.PowerStateShutdown, v1.VMStateStopped, true},
		{v1.VMStateActive, v1.PowerStateSuspended, v1.VMStateSuspended, true},
		// Agreement, or a dead domain of a stopped instance, is no change.
		{v1.VMStateActive, v1.PowerStateRunning, v1.VMStateActive, false},
		{v1.VMStateStopped, v1.PowerStateCrashed, v1.VMStateStopped, false},
		{v1.VMStateStopped, v1.PowerStateNoState, v1.VMStateStopped, false},
		{v1.VMStateSuspended, v1.PowerStateSuspended, v1.VMStateSuspended, false},
		// Nothing reported yet.
		{v1.VMStateActive, "", v1.VMStateActive, false},
		// States the hypervisor does not decide.
		{v1.VMStateError, v1.PowerStateShutdown, v1.VMStateError, false},
		{v1.VMStateBuilding, v1.PowerStateNoState, v1.VMStateBuilding, false},
		{v1.VMStateResized, v1.PowerStateShutdown, v1.VMStateResized, false},
		{v1.VMStateShelvedOffloaded, v1.PowerStateNoState, v1.VMStateShelvedOffloaded, false},
	}
	for _, c := range cases {
		got, changed := SyncPowerState(c.vm, c.power)
		if got != c.want || changed != c.changed {
			t.Errorf("SyncPowerState(%s, %s) = %s, %v; want %s, %v", c.vm, c.power, got, changed, c.want, c.changed)
		}
	}
}
