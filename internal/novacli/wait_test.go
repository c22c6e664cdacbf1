package novacli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// instanceAt is the sample instance at generation gen, changed by edit.
func instanceAt(gen int64, edit func(*v1.Instance)) *v1.Instance {
	inst := sampleInstance("web")
	inst.Generation = gen
	inst.Status.ObservedGeneration = gen
	for i := range inst.Status.Conditions {
		inst.Status.Conditions[i].ObservedGeneration = gen
	}
	if edit != nil {
		edit(inst)
	}
	return inst
}

func setCondition(inst *v1.Instance, typ string, status metav1.ConditionStatus, reason, message string, gen int64) {
	meta.SetStatusCondition(&inst.Status.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason,
		Message: message, ObservedGeneration: gen})
}

// stall marks the instance Stalled for gen, as the manager does when it refuses the spec.
func stall(inst *v1.Instance, reason, message string, gen int64) {
	setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, reason, message, gen)
	setCondition(inst, v1.ConditionStalled, metav1.ConditionTrue, reason, message, gen)
}

func TestJudge(t *testing.T) {
	written := stamp(testNow)
	older := stamp(testNow.Add(-time.Hour))
	ack := func(at metav1.MicroTime, result v1.RequestResult, reason, message string) func(*v1.Instance) {
		return func(inst *v1.Instance) {
			inst.Status.RebootRequest = &v1.RequestStatus{RequestedAt: at, Result: result, Reason: reason, Message: message, TaskID: 7}
		}
	}
	const lockedMsg = "cannot pause: the instance is locked (audit)"
	const invalidMsg = "cannot pause an instance in vm state Stopped: pause is allowed from Active"
	tests := []struct {
		name    string
		inst    *v1.Instance
		target  waitTarget
		verdict verdict
		reason  string
		message string
	}{
		{name: "generation not observed yet", target: waitTarget{generation: 4},
			inst:    instanceAt(3, nil),
			verdict: waiting, reason: "NotObserved"},
		{name: "a stale Stalled condition of an older generation is not this write's failure", target: waitTarget{generation: 4},
			inst: instanceAt(3, func(inst *v1.Instance) {
				stall(inst, v1.ReasonInvalidState, invalidMsg, 3)
			}),
			verdict: waiting, reason: "NotObserved"},
		{name: "task in flight", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.TaskState = v1.TaskStatePoweringOff
				setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonTaskInProgress, "task PoweringOff in progress (vm state Active)", 4)
			}),
			verdict: waiting, reason: v1.ReasonTaskInProgress, message: "task PoweringOff in progress (vm state Active)"},
		{name: "observed but the Ready condition is of an older generation", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				setCondition(inst, v1.ConditionReady, metav1.ConditionTrue, v1.ReasonDesiredStateReached, "old", 3)
			}),
			verdict: waiting, reason: "NotReady"},
		{name: "done: observed, Ready for the generation, no task", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState, inst.Status.PowerState = v1.VMStateStopped, v1.PowerStateShutdown
			}),
			verdict: done, reason: v1.ReasonDesiredStateReached},
		{name: "done: a later generation counts too", target: waitTarget{generation: 4},
			inst:    instanceAt(5, nil),
			verdict: done, reason: v1.ReasonDesiredStateReached},
		{name: "failed: Stalled because the instance is locked", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				stall(inst, v1.ReasonLocked, lockedMsg, 4)
			}),
			verdict: failed, reason: v1.ReasonLocked, message: lockedMsg},
		{name: "failed: Stalled because the state machine refuses", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState = v1.VMStateStopped
				stall(inst, v1.ReasonInvalidState, invalidMsg, 4)
			}),
			verdict: failed, reason: v1.ReasonInvalidState, message: invalidMsg},
		{name: "failed: Error, as the manager reports it, carries the fault", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState = v1.VMStateError
				inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: "Pause failed: domain is gone", Action: v1.ActionPause}
				stall(inst, v1.ReasonInstanceError, "the instance is in Error: Pause failed: domain is gone", 4)
			}),
			verdict: failed, reason: v1.ReasonInstanceError, message: "the instance is in Error: Pause failed: domain is gone"},
		{name: "failed: Error without a Stalled condition reports the fault", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState = v1.VMStateError
				inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: "Pause failed: domain is gone", Action: v1.ActionPause}
			}),
			verdict: failed, reason: v1.ReasonTaskFailed, message: "Pause failed: domain is gone"},
		{name: "failed: a verb the state machine refuses on an instance in Error says why", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState = v1.VMStateError
				inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: "Reboot failed"}
				stall(inst, v1.ReasonInvalidState, "cannot pause an instance in vm state Error: pause is allowed from Active", 4)
			}),
			verdict: failed, reason: v1.ReasonInvalidState},
		{name: "failed: Error without a fault", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState = v1.VMStateError
			}),
			verdict: failed, reason: v1.ReasonInstanceError, message: "the instance is in Error"},
		{name: "an instance in Error that runs a task to leave it is waited for", target: waitTarget{generation: 4},
			inst: instanceAt(4, func(inst *v1.Instance) {
				inst.Status.VMState, inst.Status.TaskState = v1.VMStateError, v1.TaskStatePoweringOff
				inst.Status.Fault = &v1.InstanceFault{Reason: v1.ReasonTaskFailed, Message: "old"}
				setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonTaskInProgress, "task PoweringOff in progress (vm state Error)", 4)
			}),
			verdict: waiting, reason: v1.ReasonTaskInProgress},
		{name: "reboot: Ready, but the acknowledgement is of an older request", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst:    instanceAt(4, ack(older, v1.RequestSucceeded, "", "")),
			verdict: waiting, reason: "RebootPending"},
		{name: "reboot: accepted, task running", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst: instanceAt(4, func(inst *v1.Instance) {
				ack(written, v1.RequestAccepted, "", "")(inst)
				inst.Status.TaskState = v1.TaskStateRebooting
				setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonTaskInProgress, "task Rebooting in progress (vm state Active)", 4)
			}),
			verdict: waiting, reason: v1.ReasonTaskInProgress},
		{name: "reboot: accepted, and Ready not yet updated", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst:    instanceAt(4, ack(written, v1.RequestAccepted, "", "")),
			verdict: waiting, reason: "RebootPending"},
		{name: "reboot: done", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst:    instanceAt(4, ack(written, v1.RequestSucceeded, "", "")),
			verdict: done, reason: v1.ReasonDesiredStateReached},
		{name: "reboot: refused", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst:    instanceAt(4, ack(written, v1.RequestRefused, v1.ReasonInvalidState, "cannot reboot an instance in vm state Paused")),
			verdict: failed, reason: v1.ReasonInvalidState, message: "cannot reboot an instance in vm state Paused"},
		{name: "reboot: failed, reported before the rest of the status", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst: instanceAt(3, func(inst *v1.Instance) {
				ack(written, v1.RequestFailed, "", "guest did not come back")(inst)
			}),
			verdict: failed, reason: "RebootFailed", message: "guest did not come back"},
		{name: "reboot: ignored", target: waitTarget{generation: 4, request: rebootStamped(written)},
			inst: instanceAt(4, ack(written, v1.RequestIgnored, v1.ReasonRequestPredatesInstance,
				"the request was stamped before the instance was created, so it is not for this instance")),
			verdict: failed, reason: v1.ReasonRequestPredatesInstance,
			message: "the request was stamped before the instance was created, so it is not for this instance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := judge(tt.inst, tt.target)
			if got.verdict != tt.verdict || got.reason != tt.reason || (tt.message != "" && got.message != tt.message) {
				t.Errorf("judge = %+v, want verdict %d reason %q message %q", got, tt.verdict, tt.reason, tt.message)
			}
		})
	}
}

// script answers successive reads with the given instances; the last one repeats.
func script(steps ...*v1.Instance) func(context.Context) (*v1.Instance, error) {
	return func(context.Context) (*v1.Instance, error) {
		next := steps[0]
		if len(steps) > 1 {
			steps = steps[1:]
		}
		return next.DeepCopy(), nil
	}
}

func TestWaitForPrintsEachTransitionOnce(t *testing.T) {
	poweringOff := func(inst *v1.Instance) {
		inst.Status.TaskState = v1.TaskStatePoweringOff
		setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonTaskInProgress, "stopping", 4)
	}
	get := script(
		instanceAt(3, nil),
		instanceAt(4, poweringOff),
		instanceAt(4, poweringOff),
		instanceAt(4, func(inst *v1.Instance) {
			poweringOff(inst)
			inst.Status.PowerState = v1.PowerStateShutdown
		}),
		instanceAt(4, func(inst *v1.Instance) {
			inst.Status.VMState, inst.Status.PowerState = v1.VMStateStopped, v1.PowerStateShutdown
		}),
	)
	var out bytes.Buffer
	inst, err := waitFor(context.Background(), &out, "web", get, waitTarget{generation: 4}, time.Millisecond, time.Minute)
	if err != nil {
		t.Fatalf("waitFor: %v", err)
	}
	if inst.Status.VMState != v1.VMStateStopped {
		t.Errorf("last instance is %s, want Stopped", inst.Status.VMState)
	}
	want := "web: Active/-/Running\nweb: Active/PoweringOff/Running\nweb: Active/PoweringOff/Shutdown\nweb: Stopped/-/Shutdown\n"
	if out.String() != want {
		t.Errorf("printed\n%s\nwant\n%s", out.String(), want)
	}
}

func TestWaitForFailsWithTheStalledReason(t *testing.T) {
	get := script(instanceAt(4, func(inst *v1.Instance) {
		inst.Status.VMState, inst.Status.PowerState = v1.VMStateStopped, v1.PowerStateShutdown
		stall(inst, v1.ReasonInvalidState, "cannot pause an instance in vm state Stopped: pause is allowed from Active", 4)
	}))
	_, err := waitFor(context.Background(), &bytes.Buffer{}, "web", get, waitTarget{generation: 4}, time.Millisecond, time.Minute)
	want := "InvalidState: cannot pause an instance in vm state Stopped: pause is allowed from Active"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestWaitForTimesOutWithWhatItWaitedOn(t *testing.T) {
	get := script(instanceAt(4, func(inst *v1.Instance) {
		inst.Status.TaskState = v1.TaskStatePausing
		setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonTaskInProgress, "task Pausing in progress (vm state Active)", 4)
	}))
	_, err := waitFor(context.Background(), &bytes.Buffer{}, "web", get, waitTarget{generation: 4}, time.Millisecond, 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "timed out after 20ms waiting for instance web (TaskInProgress: task Pausing") {
		t.Fatalf("err = %v, want a timeout naming the task", err)
	}
}

func TestWaitForStopsWhenTheInstanceIsDeleted(t *testing.T) {
	get := func(context.Context) (*v1.Instance, error) {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: v1.GroupVersion.Group, Resource: "instances"}, "web")
	}
	_, err := waitFor(context.Background(), &bytes.Buffer{}, "web", get, waitTarget{generation: 4}, time.Millisecond, time.Minute)
	if err == nil || err.Error() != "instance web was deleted while waiting" {
		t.Fatalf("err = %v", err)
	}
}

func TestWaitForRetriesReadErrors(t *testing.T) {
	calls := 0
	get := func(context.Context) (*v1.Instance, error) {
		calls++
		if calls < 3 {
			return nil, errors.New("connection refused")
		}
		return instanceAt(4, nil), nil
	}
	if _, err := waitFor(context.Background(), &bytes.Buffer{}, "web", get, waitTarget{generation: 4}, time.Millisecond, time.Minute); err != nil {
		t.Fatalf("waitFor: %v", err)
	}
}
