package lifecycle

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Observation is what Health needs to summarise an instance.
type Observation struct {
	VMState   v1.VMState
	TaskState v1.TaskState
	// DesiredReached is true when the instance rests where its spec asks.
	DesiredReached bool
	// Refusal is the request the state machine turned down, if any.
	Refusal *Refusal
	// Waiting explains what a task waits for (for example a node that fits, or a missing
	// flavor); nil when nothing blocks it. It is more telling than the task's name.
	Waiting *Refusal
	// Fault is why the instance is in Error.
	Fault *v1.InstanceFault
	// NodeDown, when set, says that the instance's node is down and why: what runs there is
	// not known.
	NodeDown string
}

// Health maps an instance's states to the Ready, Reconciling and Stalled conditions so that
// kstatus (and Flux and Argo CD through it) read a deliberately stopped or paused instance as
// Current, one in a task as InProgress, and one in Error or stuck on a refused request as Failed.
func Health(o Observation) []metav1.Condition {
	ready := metav1.Condition{Type: v1.ConditionReady}
	reconciling := metav1.Condition{Type: v1.ConditionReconciling, Status: metav1.ConditionFalse}
	stalled := metav1.Condition{Type: v1.ConditionStalled, Status: metav1.ConditionFalse}

	switch {
	case o.Waiting != nil:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, o.Waiting.Reason, o.Waiting.Message
		reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, ready.Reason, ready.Message
	case o.Refusal != nil:
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, o.Refusal.Reason, o.Refusal.Message
		stalled.Status, stalled.Reason, stalled.Message = metav1.ConditionTrue, ready.Reason, ready.Message
	case o.TaskState != v1.TaskStateNone:
		ready.Status, ready.Reason = metav1.ConditionFalse, v1.ReasonTaskInProgress
		ready.Message = fmt.Sprintf("task %s in progress (vm state %s)", o.TaskState, o.VMState)
		reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, ready.Reason, ready.Message
	case o.VMState == v1.VMStateError:
		ready.Status, ready.Reason = metav1.ConditionFalse, v1.ReasonInstanceError
		ready.Message = "the instance is in Error"
		if o.Fault != nil {
			ready.Message = fmt.Sprintf("the instance is in Error: %s", o.Fault.Message)
		}
		stalled.Status, stalled.Reason, stalled.Message = metav1.ConditionTrue, ready.Reason, ready.Message
	case o.NodeDown != "":
		// Nobody can tell whether the guest still runs: neither Ready nor not. Reconciling,
		// as kstatus reads it: the state is not known to be settled.
		ready.Status, ready.Reason, ready.Message = metav1.ConditionUnknown, v1.ReasonNodeDown, o.NodeDown
		reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, ready.Reason, ready.Message
	case o.DesiredReached:
		ready.Status, ready.Reason = metav1.ConditionTrue, v1.ReasonDesiredStateReached
		ready.Message = fmt.Sprintf("the instance is %s as its spec asks", o.VMState)
	default:
		ready.Status, ready.Reason = metav1.ConditionFalse, v1.ReasonTaskInProgress
		ready.Message = fmt.Sprintf("the instance is %s; moving toward its spec", o.VMState)
		reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, ready.Reason, ready.Message
	}
	for _, c := range []*metav1.Condition{&reconciling, &stalled} {
		if c.Reason == "" {
			c.Reason = "Idle"
		}
	}
	return []metav1.Condition{ready, reconciling, stalled}
}
