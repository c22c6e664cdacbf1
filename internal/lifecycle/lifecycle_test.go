package lifecycle

import (
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// novaAllowed restates, independently of the table, which vm states Nova's compute API allows
// each action from (check_instance_state in nova/compute/api.py), with the vm state it ends in.
// Abbreviations: B Building, A Active, S Stopped, P Paused, U Suspended, R Rescued, Z Resized,
// H Shelved, O ShelvedOffloaded, E Error.
var novaAllowed = map[v1.Action]struct{ from, to string }{
	v1.ActionLaunch:        {"B", "A"},
	v1.ActionStart:         {"S", "A"},
	v1.ActionStop:          {"AE", "S"},
	v1.ActionReboot:        {"A", "A"},
	v1.ActionHardReboot:    {"ASPUE", "A"},
	v1.ActionPause:         {"A", "P"},
	v1.ActionUnpause:       {"P", "A"},
	v1.ActionSuspend:       {"A", "U"},
	v1.ActionResume:        {"U", "A"},
	v1.ActionSnapshot:      {"ASPU", "="},
	v1.ActionResize:        {"AS", "Z"},
	v1.ActionConfirmResize: {"Z", "A"},
	// Nova allows a revert from Resized only; kubenova also from Error, where a failed revert
	// leaves the instance with its disk set aside, so that a second revert can finish it.
	v1.ActionRevertResize:  {"ZE", "A"},
	v1.ActionMigrate:       {"AS", "Z"},
	v1.ActionLiveMigrate:   {"AP", "="},
	v1.ActionEvacuate:      {"ASE", "A"},
	v1.ActionShelve:        {"ASPU", "H"},
	v1.ActionShelveOffload: {"H", "O"},
	v1.ActionUnshelve:      {"HO", "A"},
	v1.ActionRescue:        {"ASE", "R"},
	v1.ActionUnrescue:      {"R", "A"},
	v1.ActionRebuild:       {"ASE", "A"},
	v1.ActionLock:          {"BASPURZHOE", "="},
	v1.ActionUnlock:        {"BASPURZHOE", "="},
	v1.ActionTerminate:     {"BASPURZHOE", "D"},
}

// novaInterrupts restates, independently of the table, the task states besides none that an
// action may start during: Nova's task_states.ALLOW_REBOOT for a hard reboot (reboot() in
// nova/compute/api.py), any task at all for delete (task_state=None in its decorator means "do
// not check"), and none for every other action (the decorator's default task_state=[None]).
var novaInterrupts = map[v1.Action][]v1.TaskState{
	v1.ActionHardReboot: {v1.TaskStateRebooting, v1.TaskStateRebootingHard, v1.TaskStateResuming,
		v1.TaskStateUnpausing, v1.TaskStatePausing, v1.TaskStateSuspending},
	v1.ActionTerminate: allTaskStates(),
}

// novaIgnoresLock restates which actions Nova leaves without @check_instance_lock: lock and
// unlock themselves. Delete is lock-checked in Nova too.
var novaIgnoresLock = map[v1.Action]bool{v1.ActionLock: true, v1.ActionUnlock: true}

var letter = map[v1.VMState]string{
	v1.VMStateBuilding: "B", v1.VMStateActive: "A", v1.VMStateStopped: "S", v1.VMStatePaused: "P",
	v1.VMStateSuspended: "U", v1.VMStateRescued: "R", v1.VMStateResized: "Z", v1.VMStateShelved: "H",
	v1.VMStateShelvedOffloaded: "O", v1.VMStateError: "E", v1.VMStateDeleted: "D",
}

func TestTableCoversEveryActionOnce(t *testing.T) {
	seen := map[v1.Action]bool{}
	for _, tr := range Transitions() {
		if seen[tr.Action] {
			t.Errorf("action %s has two rows", tr.Action)
		}
		seen[tr.Action] = true
	}
	for a := range novaAllowed {
		if !seen[a] {
			t.Errorf("action %s has no row", a)
		}
	}
	if len(seen) != len(novaAllowed) {
		t.Errorf("table has %d actions, Nova's list %d", len(seen), len(novaAllowed))
	}
}

// TestEveryActionFromEveryState walks the whole cross product: each action, from each vm state,
// during each task state, locked or not, is either allowed or refused with a reason and message.
func TestEveryActionFromEveryState(t *testing.T) {
	for _, tr := range Transitions() {
		want := novaAllowed[tr.Action]
		for _, vm := range AllVMStates() {
			for _, task := range AllTaskStates() {
				for _, locked := range []bool{false, true} {
					s := Situation{VMState: vm, TaskState: task, Locked: locked}
					got := Check(tr.Action, s)
					allowedState := strings.Contains(want.from, letter[vm])
					allowedTask := task == v1.TaskStateNone || slices.Contains(novaInterrupts[tr.Action], task)
					allowedLock := !locked || novaIgnoresLock[tr.Action]
					wantAllowed := allowedState && allowedTask && allowedLock
					if wantAllowed != (got == nil) {
						t.Fatalf("%s from %+v: allowed=%v, want %v (refusal %v)", tr.Action, s, got == nil, wantAllowed, got)
					}
					if got == nil {
						continue
					}
					if got.Reason == "" || got.Message == "" {
						t.Fatalf("%s from %+v: refusal without reason or message: %+v", tr.Action, s, got)
					}
					// The most actionable reason wins: a lock first, then the vm state.
					switch {
					case !allowedLock && got.Reason != v1.ReasonLocked:
						t.Errorf("%s from %+v: reason %s, want Locked", tr.Action, s, got.Reason)
					case allowedLock && !allowedState && got.Reason != v1.ReasonInvalidState:
						t.Errorf("%s from %+v: reason %s, want InvalidState", tr.Action, s, got.Reason)
					case allowedLock && allowedState && got.Reason != v1.ReasonTaskInProgress:
						t.Errorf("%s from %+v: reason %s, want TaskInProgress", tr.Action, s, got.Reason)
					}
				}
			}
		}
	}
}

func TestOutcomes(t *testing.T) {
	for _, tr := range Transitions() {
		want := novaAllowed[tr.Action]
		for _, from := range tr.From {
			got := tr.Outcome(from, true, false)
			wantState := want.to
			if wantState == "=" {
				wantState = letter[from]
			}
			if letter[got] != wantState {
				t.Errorf("%s from %s ends in %s, want %s", tr.Action, from, got, wantState)
			}
			if tr.KeepsStopped && tr.Outcome(from, true, true) != v1.VMStateStopped {
				t.Errorf("%s of a stopped instance should end Stopped", tr.Action)
			}
			failed := tr.Outcome(from, false, false)
			if failed != from && failed != v1.VMStateError {
				t.Errorf("%s from %s fails into %s: only the starting state or Error make sense", tr.Action, from, failed)
			}
		}
	}
}

func TestNodeActionsHaveTasks(t *testing.T) {
	for _, tr := range Transitions() {
		if tr.RunsOnNode && len(tr.Tasks) == 0 {
			t.Errorf("%s runs on the node but has no task state to show it", tr.Action)
		}
		if len(tr.Tasks) > 0 {
			if tr.FirstTask() != tr.Tasks[0] {
				t.Errorf("%s: FirstTask %s", tr.Action, tr.FirstTask())
			}
			last := tr.Tasks[len(tr.Tasks)-1]
			if _, more := tr.NextTask(last); more {
				t.Errorf("%s: NextTask after the last task says there is more", tr.Action)
			}
		}
	}
	launch, _ := Lookup(v1.ActionLaunch)
	if next, ok := launch.NextTask(v1.TaskStateScheduling); !ok || next != v1.TaskStateSpawning {
		t.Errorf("launch: after Scheduling comes %q, want Spawning", next)
	}
}

func TestPowerAction(t *testing.T) {
	cases := []struct {
		desired v1.DesiredPowerState
		vm      v1.VMState
		want    v1.Action // "" = none due
		allowed bool      // whether Check then allows it
	}{
		{v1.DesiredRunning, v1.VMStateActive, "", false},
		{v1.DesiredRunning, v1.VMStateStopped, v1.ActionStart, true},
		{v1.DesiredRunning, v1.VMStatePaused, v1.ActionUnpause, true},
		{v1.DesiredRunning, v1.VMStateSuspended, v1.ActionResume, true},
		{v1.DesiredRunning, v1.VMStateShelvedOffloaded, v1.ActionUnshelve, true},
		{v1.DesiredRunning, v1.VMStateError, "", false},
		{v1.DesiredRunning, v1.VMStateBuilding, "", false},
		{v1.DesiredStopped, v1.VMStateActive, v1.ActionStop, true},
		{v1.DesiredStopped, v1.VMStateError, v1.ActionStop, true},
		{v1.DesiredStopped, v1.VMStatePaused, v1.ActionStop, false},
		{v1.DesiredStopped, v1.VMStateStopped, "", false},
		{v1.DesiredPaused, v1.VMStateActive, v1.ActionPause, true},
		{v1.DesiredPaused, v1.VMStateStopped, v1.ActionPause, false},
		{v1.DesiredSuspended, v1.VMStatePaused, v1.ActionSuspend, false},
		{v1.DesiredSuspended, v1.VMStateActive, v1.ActionSuspend, true},
		{v1.DesiredShelved, v1.VMStateSuspended, v1.ActionShelve, true},
		{v1.DesiredShelved, v1.VMStateShelvedOffloaded, "", false},
		{v1.DesiredShelved, v1.VMStateResized, "", false},
		{v1.DesiredPaused, v1.VMStateBuilding, "", false},
	}
	for _, c := range cases {
		got, ok := PowerAction(c.desired, c.vm)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("PowerAction(%s, %s) = %q, %v; want %q", c.desired, c.vm, got, ok, c.want)
			continue
		}
		if ok {
			refusal := Check(got, Situation{VMState: c.vm})
			if (refusal == nil) != c.allowed {
				t.Errorf("Check(%s from %s) = %v, want allowed=%v", got, c.vm, refusal, c.allowed)
			}
		}
	}
}

func TestRefusalMessagesNameTheAllowedStates(t *testing.T) {
	r := Check(v1.ActionPause, Situation{VMState: v1.VMStateStopped})
	if r == nil || r.Reason != v1.ReasonInvalidState {
		t.Fatalf("pause of a stopped instance: %v", r)
	}
	if !strings.Contains(r.Message, "pause") || !strings.Contains(r.Message, "Stopped") || !strings.Contains(r.Message, "Active") {
		t.Errorf("message should say what was asked, the state it is in and where it is allowed: %q", r.Message)
	}
	if r := Check("Fly", Situation{VMState: v1.VMStateActive}); r == nil || r.Reason != v1.ReasonNotSupported {
		t.Errorf("unknown action: %v", r)
	}
}

func TestExpectedPowerState(t *testing.T) {
	if p, ok := ExpectedPowerState(v1.VMStateActive); !ok || p != v1.PowerStateRunning {
		t.Errorf("Active expects %s", p)
	}
	if p, ok := ExpectedPowerState(v1.VMStateStopped); !ok || p != v1.PowerStateShutdown {
		t.Errorf("Stopped expects %s", p)
	}
	if _, ok := ExpectedPowerState(v1.VMStateError); ok {
		t.Error("Error should accept any power state")
	}
}

func TestHealth(t *testing.T) {
	type want struct{ ready, reconciling, stalled metav1.ConditionStatus }
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	refused := &Refusal{Reason: v1.ReasonInvalidState, Message: "cannot pause"}
	cases := []struct {
		name string
		o    Observation
		want want
	}{
		{"stopped as asked is Ready", Observation{VMState: v1.VMStateStopped, DesiredReached: true}, want{T, F, F}},
		{"active as asked", Observation{VMState: v1.VMStateActive, DesiredReached: true}, want{T, F, F}},
		{"in a task", Observation{VMState: v1.VMStateActive, TaskState: v1.TaskStatePausing}, want{F, T, F}},
		{"error", Observation{VMState: v1.VMStateError, Fault: &v1.InstanceFault{Message: "disk gone"}}, want{F, F, T}},
		{"refused request", Observation{VMState: v1.VMStateStopped, Refusal: refused}, want{F, F, T}},
		{"waiting for a host", Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateScheduling, Waiting: &Refusal{Reason: v1.ReasonNoValidHost, Message: "no host"}}, want{F, T, F}},
		{"not there, nothing running", Observation{VMState: v1.VMStateResized}, want{F, T, F}},
		{"active as asked on a node that is down", Observation{VMState: v1.VMStateActive, DesiredReached: true, NodeDown: "node-1 is down"}, want{metav1.ConditionUnknown, T, F}},
		{"a task on a node that is down says the task", Observation{VMState: v1.VMStateActive, TaskState: v1.TaskStateRebooting, NodeDown: "node-1 is down"}, want{F, T, F}},
		{"error on a node that is down says the error", Observation{VMState: v1.VMStateError, NodeDown: "node-1 is down"}, want{F, F, T}},
	}
	for _, c := range cases {
		conds := Health(c.o)
		got := want{conds[0].Status, conds[1].Status, conds[2].Status}
		if got != c.want {
			t.Errorf("%s: got %+v want %+v", c.name, got, c.want)
		}
		for _, cond := range conds {
			if cond.Reason == "" {
				t.Errorf("%s: condition %s has no reason", c.name, cond.Type)
			}
		}
	}
	waiting := Health(Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateScheduling,
		Waiting: &Refusal{Reason: v1.ReasonFlavorNotFound, Message: "flavor x does not exist"}})
	if waiting[0].Reason != v1.ReasonFlavorNotFound {
		t.Errorf("what a task waits for should be the Ready reason, got %s", waiting[0].Reason)
	}
	errConds := Health(Observation{VMState: v1.VMStateError, Fault: &v1.InstanceFault{Message: "disk gone"}})
	if !strings.Contains(errConds[0].Message, "disk gone") {
		t.Errorf("an Error's message should carry the fault: %q", errConds[0].Message)
	}
}

func TestHealthOfATaskOutOfError(t *testing.T) {
	conds := Health(Observation{VMState: v1.VMStateError, TaskState: v1.TaskStateRebootingHard})
	if conds[1].Status != metav1.ConditionTrue || conds[2].Status != metav1.ConditionFalse {
		t.Errorf("a hard reboot out of Error is progress, not a stall: %+v", conds)
	}
}

func TestHealthOfARefusedLaunch(t *testing.T) {
	conds := Health(Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateScheduling,
		Refusal: &Refusal{Reason: v1.ReasonFlavorTooSmall, Message: "flavor too small"}})
	if conds[0].Reason != v1.ReasonFlavorTooSmall || conds[2].Status != metav1.ConditionTrue {
		t.Errorf("a launch that only a spec change can unblock is Stalled with its reason: %+v", conds)
	}
}
