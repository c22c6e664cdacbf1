package lifecycle

import (
	"fmt"
	"slices"
	"strings"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Situation is what the state machine needs to know of an instance to judge a request.
type Situation struct {
	VMState   v1.VMState
	TaskState v1.TaskState
	Locked    bool
}

// Refusal is a request the state machine turns down, with a condition reason and a message a
// person can act on.
type Refusal struct {
	Action  v1.Action
	Reason  string
	Message string
}

// Error implements error.
func (r *Refusal) Error() string { return r.Message }

// Check says whether action may start now: nil, or a *Refusal saying why not.
func Check(action v1.Action, s Situation) *Refusal {
	t, ok := Lookup(action)
	if !ok {
		return &Refusal{Action: action, Reason: v1.ReasonNotSupported,
			Message: fmt.Sprintf("%s is not an instance action", action)}
	}
	if s.Locked && !t.IgnoresLock {
		return &Refusal{Action: action, Reason: v1.ReasonLocked,
			Message: fmt.Sprintf("cannot %s: the instance is locked; unlock it first", verb(action))}
	}
	if !slices.Contains(t.From, s.VMState) {
		return &Refusal{Action: action, Reason: v1.ReasonInvalidState,
			Message: fmt.Sprintf("cannot %s an instance in vm state %s: %s is allowed from %s",
				verb(action), s.VMState, verb(action), joinStates(t.From))}
	}
	if s.TaskState != v1.TaskStateNone && !slices.Contains(t.Interrupts, s.TaskState) {
		return &Refusal{Action: action, Reason: v1.ReasonTaskInProgress,
			Message: fmt.Sprintf("cannot %s while task %s is in progress", verb(action), s.TaskState)}
	}
	return nil
}

// Outcome is the vm state an action ends in. wasStopped says whether the instance was
// stopped before the action (for resize confirm and revert: before the resize).
func (t Transition) Outcome(from v1.VMState, succeeded, wasStopped bool) v1.VMState {
	if !succeeded {
		if t.OnFailure != "" {
			return t.OnFailure
		}
		return from
	}
	if t.KeepsStopped && wasStopped {
		return v1.VMStateStopped
	}
	if t.To != "" {
		return t.To
	}
	return from
}

// FirstTask is the task state an action starts in, or none for flag-only actions.
func (t Transition) FirstTask() v1.TaskState {
	if len(t.Tasks) == 0 {
		return v1.TaskStateNone
	}
	return t.Tasks[0]
}

// NextTask is the task state after current within the action; false when current is the last.
func (t Transition) NextTask(current v1.TaskState) (v1.TaskState, bool) {
	i := slices.Index(t.Tasks, current)
	if i < 0 || i+1 >= len(t.Tasks) {
		return v1.TaskStateNone, false
	}
	return t.Tasks[i+1], true
}

// satisfies says which vm states count as having reached a desired power state.
var satisfies = map[v1.DesiredPowerState][]v1.VMState{
	v1.DesiredRunning:   {v1.VMStateActive},
	v1.DesiredStopped:   {v1.VMStateStopped},
	v1.DesiredPaused:    {v1.VMStatePaused},
	v1.DesiredSuspended: {v1.VMStateSuspended},
	v1.DesiredShelved:   {v1.VMStateShelved, v1.VMStateShelvedOffloaded},
}

// towardRunning is the action that brings each vm state back to Active.
var towardRunning = map[v1.VMState]v1.Action{
	v1.VMStateStopped:          v1.ActionStart,
	v1.VMStatePaused:           v1.ActionUnpause,
	v1.VMStateSuspended:        v1.ActionResume,
	v1.VMStateShelved:          v1.ActionUnshelve,
	v1.VMStateShelvedOffloaded: v1.ActionUnshelve,
}

// towardDesired is the action each desired power state asks of an instance that is not there.
var towardDesired = map[v1.DesiredPowerState]v1.Action{
	v1.DesiredStopped:   v1.ActionStop,
	v1.DesiredPaused:    v1.ActionPause,
	v1.DesiredSuspended: v1.ActionSuspend,
	v1.DesiredShelved:   v1.ActionShelve,
}

// Desired is spec.powerState with its schema default (Running), for specs read from objects
// that never went through the API server.
func Desired(spec *v1.InstanceSpec) v1.DesiredPowerState {
	if spec.PowerState == "" {
		return v1.DesiredRunning
	}
	return spec.PowerState
}

// Reached says whether an instance in vm rests in the desired power state.
func Reached(desired v1.DesiredPowerState, vm v1.VMState) bool {
	return slices.Contains(satisfies[desired], vm)
}

// PowerAction is the action that moves an instance in vm toward the desired power state; false
// when none is due (already there, or a state such as Error, Resized or Rescued that only
// another request ends). The action still has to pass Check: pausing a stopped instance is
// refused, as in Nova, rather than planned as start-then-pause.
func PowerAction(desired v1.DesiredPowerState, vm v1.VMState) (v1.Action, bool) {
	if Reached(desired, vm) {
		return "", false
	}
	if desired == v1.DesiredRunning {
		a, ok := towardRunning[vm]
		return a, ok
	}
	switch vm {
	case v1.VMStateBuilding, v1.VMStateDeleted, v1.VMStateResized, v1.VMStateRescued:
		// Building finishes its launch first; Resized waits for confirm or revert; Rescued
		// for unrescue. Nova refuses power changes there too, but nothing is lost by waiting.
		return "", false
	}
	a, ok := towardDesired[desired]
	return a, ok
}

// verb is how a message names an action.
func verb(a v1.Action) string {
	words := map[v1.Action]string{
		v1.ActionHardReboot: "hard reboot", v1.ActionConfirmResize: "confirm the resize of",
		v1.ActionRevertResize: "revert the resize of", v1.ActionLiveMigrate: "live migrate",
		v1.ActionShelveOffload: "offload",
	}
	if w, ok := words[a]; ok {
		return w
	}
	return strings.ToLower(string(a))
}

func joinStates(states []v1.VMState) string {
	s := make([]string, len(states))
	for i, st := range states {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}
