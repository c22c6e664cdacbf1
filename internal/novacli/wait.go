package novacli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// waitTarget identifies the write a --wait follows.
type waitTarget struct {
	// generation is the one the patch produced; older status says nothing about the write.
	generation int64
	// request is the one-shot request written, if any: a reboot or a rebuild onto the same
	// image changes no state, so only its acknowledgement tells that it happened.
	request *stampedRequest
	// untilResized: a resize is done once the instance waits in Resized for its confirmation.
	untilResized bool
}

// stampedRequest is a one-shot request of the spec and where status acknowledges it.
type stampedRequest struct {
	// verb names it in messages: reboot, rebuild.
	verb  string
	stamp metav1.MicroTime
	ack   func(*v1.InstanceStatus) *v1.RequestStatus
}

// rebootStamped is the reboot request stamped at.
func rebootStamped(at metav1.MicroTime) *stampedRequest {
	return &stampedRequest{verb: "reboot", stamp: at, ack: func(st *v1.InstanceStatus) *v1.RequestStatus { return st.RebootRequest }}
}

// resizeStamped is the resize confirmation or revert stamped at.
func resizeStamped(at metav1.MicroTime) *stampedRequest {
	return &stampedRequest{verb: "resize", stamp: at, ack: func(st *v1.InstanceStatus) *v1.RequestStatus { return st.ResizeRequest }}
}

// ReasonResizedWaiting is --wait's reason for a resize that reached Resized.
const ReasonResizedWaiting = "Resized"

// rebuildStamped is the rebuild request stamped at.
func rebuildStamped(at metav1.MicroTime) *stampedRequest {
	return &stampedRequest{verb: "rebuild", stamp: at, ack: func(st *v1.InstanceStatus) *v1.RequestStatus { return st.RebuildRequest }}
}

// verdict is judge's answer.
type verdict int

const (
	// waiting: the manager has not finished with the write yet.
	waiting verdict = iota
	// done: the instance rests where the write asked.
	done
	// failed: the instance will not get there without someone acting.
	failed
)

// outcome is a verdict with its reason and message: why it failed, or what it waits on.
type outcome struct {
	verdict verdict
	reason  string
	message string
}

// judge decides, from one reading of the instance, whether the write of t is done, failed or
// still in progress. It is pure so that every case is a table row in the tests.
func judge(inst *v1.Instance, t waitTarget) outcome {
	st := &inst.Status
	if r := t.request; r != nil {
		if ack := r.ack(st); ack != nil && sameStamp(ack.RequestedAt.Time, r.stamp.Time) {
			switch ack.Result {
			case v1.RequestRefused, v1.RequestFailed, v1.RequestIgnored:
				reason := ack.Reason
				if reason == "" {
					reason = strings.ToUpper(r.verb[:1]) + r.verb[1:] + string(ack.Result)
				}
				return outcome{failed, reason, orDefault(ack.Message, "the "+r.verb+" request was "+string(ack.Result))}
			}
		}
	}
	if st.ObservedGeneration < t.generation {
		return outcome{waiting, "NotObserved", fmt.Sprintf("the manager has not seen generation %d yet", t.generation)}
	}
	// Stalled comes first: when the state machine refuses the verb, its reason (InvalidState,
	// TaskFailed, ...) says more than the fault of an instance that was in Error already.
	if c := conditionFor(st.Conditions, v1.ConditionStalled, t.generation); c != nil && c.Status == metav1.ConditionTrue {
		return outcome{failed, c.Reason, c.Message}
	}
	// An instance in Error with a task runs that task to get out (stop and hard reboot may).
	if st.VMState == v1.VMStateError && st.TaskState == v1.TaskStateNone {
		if f := st.Fault; f != nil {
			return outcome{failed, f.Reason, f.Message}
		}
		return outcome{failed, v1.ReasonInstanceError, "the instance is in Error"}
	}
	if t.untilResized && st.VMState == v1.VMStateResized && st.TaskState == v1.TaskStateNone {
		return outcome{verdict: done, reason: ReasonResizedWaiting, message: "resized: confirm or revert"}
	}
	ready := conditionFor(st.Conditions, v1.ConditionReady, t.generation)
	if st.TaskState != v1.TaskStateNone || ready == nil || ready.Status != metav1.ConditionTrue {
		if ready != nil {
			return outcome{waiting, ready.Reason, ready.Message}
		}
		return outcome{waiting, "NotReady", fmt.Sprintf("no Ready condition for generation %d yet", t.generation)}
	}
	if r := t.request; r != nil {
		ack := r.ack(st)
		if ack == nil || !sameStamp(ack.RequestedAt.Time, r.stamp.Time) || ack.Result != v1.RequestSucceeded {
			verb := strings.ToUpper(r.verb[:1]) + r.verb[1:]
			return outcome{waiting, verb + "Pending", "the " + r.verb + " request is not done yet"}
		}
	}
	return outcome{verdict: done, reason: ready.Reason, message: ready.Message}
}

// conditionFor returns the condition of type typ if it describes generation or a later one.
func conditionFor(conds []metav1.Condition, typ string, generation int64) *metav1.Condition {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil || c.ObservedGeneration < generation {
		return nil
	}
	return c
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// stateLine is the (vmState, taskState, powerState) triple --wait prints on every change.
func stateLine(inst *v1.Instance) string {
	st := &inst.Status
	return orDash(string(st.VMState)) + "/" + orDash(string(st.TaskState)) + "/" + orDash(string(st.PowerState))
}

// waitFor reads the instance every interval until judge says done or failed, or timeout passes,
// printing each new state triple to out. It returns the last instance read.
func waitFor(ctx context.Context, out io.Writer, name string, get func(context.Context) (*v1.Instance, error),
	t waitTarget, interval, timeout time.Duration) (*v1.Instance, error) {
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()

	var (
		inst     *v1.Instance
		line     string
		last     outcome
		lastErr  error
		observed bool
	)
	for {
		got, err := get(waitCtx)
		switch {
		case apierrors.IsNotFound(err):
			return inst, fmt.Errorf("instance %s was deleted while waiting", name)
		case err != nil:
			// Keep trying until the timeout: an API server that restarts must not fail a wait.
			// The timeout's own error says nothing the timeout message does not.
			if waitCtx.Err() == nil {
				lastErr = err
			}
		default:
			inst, observed, lastErr = got, true, nil
			if l := stateLine(inst); l != line {
				_, _ = fmt.Fprintf(out, "%s: %s\n", name, l)
				line = l
			}
			last = judge(inst, t)
			switch last.verdict {
			case done:
				return inst, nil
			case failed:
				return inst, fmt.Errorf("%s: %s", last.reason, last.message)
			}
		}
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return inst, ctx.Err()
			}
			msg := fmt.Sprintf("timed out after %s waiting for instance %s", timeout, name)
			if lastErr != nil {
				msg += ": " + lastErr.Error()
			} else if observed {
				msg += fmt.Sprintf(" (%s: %s)", last.reason, last.message)
			}
			return inst, fmt.Errorf("%s", msg)
		case <-ticker.C:
		}
	}
}
