// Package lifecycle is Nova's instance state machine as data: for every action, the vm states it
// is allowed from, the task states it runs through and the vm state it ends in. It mirrors
// nova/compute/vm_states.py, task_states.py and the check_instance_state decorators of
// nova/compute/api.py. Controllers ask it "may I?" and "what next?"; it knows no Kubernetes client.
package lifecycle

import (
	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Transition is one row of the table: an action and its rules.
type Transition struct {
	// Action is the operation.
	Action v1.Action
	// From lists the vm states the action is allowed from (Nova's check_instance_state vm_state).
	From []v1.VMState
	// Interrupts lists the task states, besides none, that the action may start during. Most
	// actions need the instance to be idle, as Nova's default task_state=[None].
	Interrupts []v1.TaskState
	// Tasks are the task states the action moves through, in order; empty for actions that
	// only change a flag (lock, unlock).
	Tasks []v1.TaskState
	// To is the vm state on success; empty keeps the vm state the action started from.
	To v1.VMState
	// KeepsStopped ends the action in Stopped instead of To when the instance was stopped before
	// it (Nova's rebuild, evacuate and resize keep a stopped instance stopped).
	KeepsStopped bool
	// OnFailure is the vm state when the action fails; empty keeps the vm state it started from.
	OnFailure v1.VMState
	// IgnoresLock lets the action run on a locked instance (lock and unlock themselves).
	IgnoresLock bool
	// RunsOnNode is true when the node agent carries out the action; false when the manager
	// does it alone.
	RunsOnNode bool
}

// allStates is every vm state an instance can be in before it is deleted.
var allStates = []v1.VMState{
	v1.VMStateBuilding, v1.VMStateActive, v1.VMStateStopped, v1.VMStatePaused, v1.VMStateSuspended,
	v1.VMStateRescued, v1.VMStateResized, v1.VMStateShelved, v1.VMStateShelvedOffloaded, v1.VMStateError,
}

// table is the Nova state machine. One row per action; see Transition for the columns.
var table = []Transition{
	{Action: v1.ActionLaunch, From: []v1.VMState{v1.VMStateBuilding},
		Tasks: []v1.TaskState{v1.TaskStateScheduling, v1.TaskStateSpawning},
		To:    v1.VMStateActive, OnFailure: v1.VMStateError, RunsOnNode: true},
	{Action: v1.ActionStart, From: []v1.VMState{v1.VMStateStopped},
		Tasks: []v1.TaskState{v1.TaskStatePoweringOn}, To: v1.VMStateActive, RunsOnNode: true},
	{Action: v1.ActionStop, From: []v1.VMState{v1.VMStateActive, v1.VMStateError},
		Tasks: []v1.TaskState{v1.TaskStatePoweringOff}, To: v1.VMStateStopped, RunsOnNode: true},
	{Action: v1.ActionReboot, From: []v1.VMState{v1.VMStateActive},
		Tasks: []v1.TaskState{v1.TaskStateRebooting}, To: v1.VMStateActive, OnFailure: v1.VMStateError, RunsOnNode: true},
	// A hard reboot is Nova's way out of most trouble: it may interrupt a reboot (soft or hard)
	// or a pause, unpause, suspend or resume that hangs (Nova's task_states.ALLOW_REBOOT), and it
	// repairs an instance in Error.
	{Action: v1.ActionHardReboot,
		From: []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStatePaused, v1.VMStateSuspended, v1.VMStateError},
		Interrupts: []v1.TaskState{v1.TaskStateRebooting, v1.TaskStateRebootingHard, v1.TaskStatePausing,
			v1.TaskStateUnpausing, v1.TaskStateSuspending, v1.TaskStateResuming},
		Tasks: []v1.TaskState{v1.TaskStateRebootingHard}, To: v1.VMStateActive, OnFailure: v1.VMStateError, RunsOnNode: true},
	{Action: v1.ActionPause, From: []v1.VMState{v1.VMStateActive},
		Tasks: []v1.TaskState{v1.TaskStatePausing}, To: v1.VMStatePaused, RunsOnNode: true},
	{Action: v1.ActionUnpause, From: []v1.VMState{v1.VMStatePaused},
		Tasks: []v1.TaskState{v1.TaskStateUnpausing}, To: v1.VMStateActive, RunsOnNode: true},
	{Action: v1.ActionSuspend, From: []v1.VMState{v1.VMStateActive},
		Tasks: []v1.TaskState{v1.TaskStateSuspending}, To: v1.VMStateSuspended, RunsOnNode: true},
	{Action: v1.ActionResume, From: []v1.VMState{v1.VMStateSuspended},
		Tasks: []v1.TaskState{v1.TaskStateResuming}, To: v1.VMStateActive, RunsOnNode: true},
	{Action: v1.ActionSnapshot,
		From:  []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStatePaused, v1.VMStateSuspended},
		Tasks: []v1.TaskState{v1.TaskStateImageSnapshot, v1.TaskStateImageUploading}, RunsOnNode: true},
	{Action: v1.ActionResize, From: []v1.VMState{v1.VMStateActive, v1.VMStateStopped},
		Tasks: []v1.TaskState{v1.TaskStateResizePrep, v1.TaskStateResizeMigrating, v1.TaskStateResizeFinish},
		To:    v1.VMStateResized, RunsOnNode: true},
	{Action: v1.ActionConfirmResize, From: []v1.VMState{v1.VMStateResized},
		Tasks: []v1.TaskState{v1.TaskStateResizeConfirming}, To: v1.VMStateActive, KeepsStopped: true, RunsOnNode: true},
	// A revert that fails leaves the instance between its two nodes: Error, as in Nova, from
	// which only another revert (or a terminate) goes on (the controller refuses the rest while
	// status.resize holds the context).
	{Action: v1.ActionRevertResize, From: []v1.VMState{v1.VMStateResized, v1.VMStateError},
		Tasks: []v1.TaskState{v1.TaskStateResizeReverting}, To: v1.VMStateActive, KeepsStopped: true,
		OnFailure: v1.VMStateError, RunsOnNode: true},
	// A cold migration is a resize to the same flavor, and like it waits for confirmation.
	{Action: v1.ActionMigrate, From: []v1.VMState{v1.VMStateActive, v1.VMStateStopped},
		Tasks: []v1.TaskState{v1.TaskStateResizePrep, v1.TaskStateResizeMigrating, v1.TaskStateResizeFinish},
		To:    v1.VMStateResized, RunsOnNode: true},
	{Action: v1.ActionLiveMigrate, From: []v1.VMState{v1.VMStateActive, v1.VMStatePaused},
		Tasks: []v1.TaskState{v1.TaskStateMigrating}, RunsOnNode: true},
	// An evacuation is a rebuild elsewhere once the node is fenced and down. A task that was in
	// flight there is failed first (the manager does so once the node is fenced).
	{Action: v1.ActionEvacuate, From: []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStateError},
		Tasks: []v1.TaskState{v1.TaskStateRebuilding}, To: v1.VMStateActive, KeepsStopped: true,
		OnFailure: v1.VMStateError, RunsOnNode: true},
	{Action: v1.ActionShelve,
		From:  []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStatePaused, v1.VMStateSuspended},
		Tasks: []v1.TaskState{v1.TaskStateShelving}, To: v1.VMStateShelved, RunsOnNode: true},
	{Action: v1.ActionShelveOffload, From: []v1.VMState{v1.VMStateShelved},
		Tasks: []v1.TaskState{v1.TaskStateShelvingOffloading}, To: v1.VMStateShelvedOffloaded, RunsOnNode: true},
	{Action: v1.ActionUnshelve, From: []v1.VMState{v1.VMStateShelved, v1.VMStateShelvedOffloaded},
		Tasks: []v1.TaskState{v1.TaskStateUnshelving, v1.TaskStateSpawning}, To: v1.VMStateActive, RunsOnNode: true},
	{Action: v1.ActionRescue, From: []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStateError},
		Tasks: []v1.TaskState{v1.TaskStateRescuing}, To: v1.VMStateRescued, OnFailure: v1.VMStateError, RunsOnNode: true},
	{Action: v1.ActionUnrescue, From: []v1.VMState{v1.VMStateRescued},
		Tasks: []v1.TaskState{v1.TaskStateUnrescuing}, To: v1.VMStateActive, RunsOnNode: true},
	{Action: v1.ActionRebuild, From: []v1.VMState{v1.VMStateActive, v1.VMStateStopped, v1.VMStateError},
		Tasks: []v1.TaskState{v1.TaskStateRebuilding}, To: v1.VMStateActive, KeepsStopped: true,
		OnFailure: v1.VMStateError, RunsOnNode: true},
	{Action: v1.ActionLock, From: allStates, IgnoresLock: true},
	{Action: v1.ActionUnlock, From: allStates, IgnoresLock: true},
	// Deleting is always possible (Nova lets delete interrupt any task), except while locked.
	{Action: v1.ActionTerminate, From: allStates, Interrupts: allTaskStates(),
		Tasks: []v1.TaskState{v1.TaskStateDeleting}, To: v1.VMStateDeleted, RunsOnNode: true},
}

// allTaskStates lists every task state but none.
func allTaskStates() []v1.TaskState {
	return []v1.TaskState{
		v1.TaskStateScheduling, v1.TaskStateSpawning, v1.TaskStatePoweringOff, v1.TaskStatePoweringOn,
		v1.TaskStateRebooting, v1.TaskStateRebootingHard, v1.TaskStatePausing, v1.TaskStateUnpausing,
		v1.TaskStateSuspending, v1.TaskStateResuming, v1.TaskStateImageSnapshot, v1.TaskStateImageUploading,
		v1.TaskStateResizePrep, v1.TaskStateResizeMigrating, v1.TaskStateResizeFinish,
		v1.TaskStateResizeConfirming, v1.TaskStateResizeReverting, v1.TaskStateMigrating,
		v1.TaskStateRescuing, v1.TaskStateUnrescuing, v1.TaskStateRebuilding, v1.TaskStateShelving,
		v1.TaskStateShelvingOffloading, v1.TaskStateUnshelving, v1.TaskStateDeleting,
	}
}

// AllVMStates lists every vm state an instance can be in before it is deleted.
func AllVMStates() []v1.VMState { return append([]v1.VMState(nil), allStates...) }

// AllTaskStates lists every task state, none included.
func AllTaskStates() []v1.TaskState {
	return append([]v1.TaskState{v1.TaskStateNone}, allTaskStates()...)
}

// Transitions returns a copy of the whole table.
func Transitions() []Transition { return append([]Transition(nil), table...) }

// Lookup returns the row of an action.
func Lookup(action v1.Action) (Transition, bool) {
	for _, t := range table {
		if t.Action == action {
			return t, true
		}
	}
	return Transition{}, false
}

// expectedPower is the power state each vm state should have on its node (Nova's
// sync_power_states compares the two). Vm states missing here accept any power state.
var expectedPower = map[v1.VMState]v1.PowerState{
	v1.VMStateActive:           v1.PowerStateRunning,
	v1.VMStateStopped:          v1.PowerStateShutdown,
	v1.VMStatePaused:           v1.PowerStatePaused,
	v1.VMStateSuspended:        v1.PowerStateSuspended,
	v1.VMStateRescued:          v1.PowerStateRunning,
	v1.VMStateShelvedOffloaded: v1.PowerStateNoState,
}

// ExpectedPowerState returns the power state an instance resting in vm should have, and false
// when any power state is acceptable (Building, Resized, Shelved, Error, Deleted).
func ExpectedPowerState(vm v1.VMState) (v1.PowerState, bool) {
	p, ok := expectedPower[vm]
	return p, ok
}
