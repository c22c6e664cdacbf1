package novacli

import (
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// powerVerb is a verb that writes spec.powerState.
type powerVerb struct {
	name    string
	short   string
	what    string // the example's wording, "Stop"
	desired v1.DesiredPowerState
	// undoes are the vm states the verb leaves; unpause, resume and unshelve are checked
	// against them, so that unpausing a suspended instance says "resume" instead of silently
	// resuming it.
	undoes []v1.VMState
	// stampsStart writes a start request besides the power state.
	stampsStart bool
}

// powerVerbs are nova's start, stop, pause, unpause, suspend and resume.
var powerVerbs = []powerVerb{
	{name: "start", short: "Start a stopped instance (nova start)", what: "Start",
		desired: v1.DesiredRunning, stampsStart: true},
	{name: "stop", short: "Stop an instance, powering its guest off (nova stop)", what: "Stop",
		desired: v1.DesiredStopped},
	{name: "pause", short: "Pause an instance, keeping its memory on the node (nova pause)", what: "Pause",
		desired: v1.DesiredPaused},
	{name: "unpause", short: "Unpause a paused instance (nova unpause)", what: "Unpause",
		desired: v1.DesiredRunning, undoes: []v1.VMState{v1.VMStatePaused}},
	{name: "suspend", short: "Suspend an instance, saving its memory to disk (nova suspend)", what: "Suspend",
		desired: v1.DesiredSuspended},
	{name: "resume", short: "Resume a suspended instance (nova resume)", what: "Resume",
		desired: v1.DesiredRunning, undoes: []v1.VMState{v1.VMStateSuspended}},
	{name: "shelve", short: "Shelve an instance: saved to the image store, then removed from its node (nova shelve)", what: "Shelve",
		desired: v1.DesiredShelved},
	{name: "unshelve", short: "Unshelve a shelved instance, placed anew if it was offloaded (nova unshelve)", what: "Unshelve",
		desired: v1.DesiredRunning, undoes: []v1.VMState{v1.VMStateShelved, v1.VMStateShelvedOffloaded}},
}

func newPowerCommand(o *options, v powerVerb) *cobra.Command {
	var wf waitFlags
	cmd := &cobra.Command{
		Use:               v.name + " NAME",
		Short:             v.short,
		Example:           verbExample(v.name, v.what),
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeInstanceNames,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := v.request(args[0], o.now())
			if err != nil {
				return err
			}
			return o.write(cmd.Context(), req, wf)
		},
	}
	if v.stampsStart {
		cmd.Long = "Start sets spec.powerState to Running and stamps spec.startRequest, so that an instance\n" +
			"that stopped outside kubenova (its guest powered off, its QEMU died) starts too."
	}
	wf.addTo(cmd)
	return cmd
}

// request is the write of the verb on instance name at time now.
func (v powerVerb) request(name string, now time.Time) (request, error) {
	var startStamp *metav1.MicroTime
	if v.stampsStart {
		s := stamp(now)
		startStamp = &s
	}
	body, err := powerPatch(v.desired, startStamp)
	if err != nil {
		return request{}, err
	}
	req := request{name: name, verb: v.name, body: body}
	if len(v.undoes) > 0 {
		req.precheck = func(inst *v1.Instance) error { return v.refusal(inst) }
	}
	return req, nil
}

// refusal stops unpause and resume of an instance that is not in the state they undo, naming
// the verb that fits: the manager would otherwise just bring it to Running by another path.
func (v powerVerb) refusal(inst *v1.Instance) error {
	got := inst.Status.VMState
	if slices.Contains(v.undoes, got) {
		return nil
	}
	state := string(got)
	if state == "" {
		state = "not launched yet"
	}
	msg := fmt.Sprintf("instance %s is %s, not %s", inst.Name, state, v.undoes[0])
	switch got {
	case v1.VMStatePaused:
		msg += ": use kubectl nova unpause"
	case v1.VMStateSuspended:
		msg += ": use kubectl nova resume"
	case v1.VMStateStopped:
		msg += ": use kubectl nova start"
	case v1.VMStateShelved, v1.VMStateShelvedOffloaded:
		msg += ": use kubectl nova unshelve"
	case v1.VMStateActive:
		msg += ": it is running already"
	}
	return fmt.Errorf("%s", msg)
}
