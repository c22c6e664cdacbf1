package novacli

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestUnpauseAndResumeRefuseTheWrongState(t *testing.T) {
	tests := []struct {
		verb    string
		vmState v1.VMState
		want    string
	}{
		{"unpause", v1.VMStateSuspended, "instance web is Suspended, not Paused: use kubectl nova resume"},
		{"resume", v1.VMStatePaused, "instance web is Paused, not Suspended: use kubectl nova unpause"},
		{"unpause", v1.VMStateStopped, "instance web is Stopped, not Paused: use kubectl nova start"},
		{"resume", v1.VMStateActive, "instance web is Active, not Suspended: it is running already"},
		{"resume", v1.VMStateError, "instance web is Error, not Suspended"},
	}
	for _, tt := range tests {
		t.Run(tt.verb+" "+string(tt.vmState), func(t *testing.T) {
			inst := sampleInstance("web")
			inst.Status.VMState = tt.vmState
			h := newHarness(t, inst)
			err := h.run(tt.verb, "web", "--wait")
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if len(h.patches) != 0 {
				t.Errorf("sent %d patches; a refused verb must not write", len(h.patches))
			}
		})
	}
}

func TestVerbOnMissingInstanceFails(t *testing.T) {
	h := newHarness(t)
	if err := h.run("stop", "ghost"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("err = %v, want not found", err)
	}
}

func TestStopWaitFollowsTheManager(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	h.gets = []*v1.Instance{
		instanceAt(3, nil),
		instanceAt(4, func(inst *v1.Instance) {
			inst.Status.TaskState = v1.TaskStatePoweringOff
			setCondition(inst, v1.ConditionReady, metav1.ConditionFalse, v1.ReasonTaskInProgress, "stopping", 4)
		}),
		instanceAt(4, func(inst *v1.Instance) {
			inst.Status.VMState, inst.Status.PowerState = v1.VMStateStopped, v1.PowerStateShutdown
		}),
	}
	if err := h.run("stop", "web", "--wait"); err != nil {
		t.Fatalf("run: %v", err)
	}
	want := "instance.compute.kubenova.io/web stop requested\n" +
		"web: Active/-/Running\nweb: Active/PoweringOff/Running\nweb: Stopped/-/Shutdown\n" +
		"instance.compute.kubenova.io/web stop done: Stopped\n"
	if h.out.String() != want {
		t.Errorf("printed\n%s\nwant\n%s", h.out.String(), want)
	}
}

func TestRebootWaitFailsWhenRefused(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	h.gets = []*v1.Instance{instanceAt(4, func(inst *v1.Instance) {
		inst.Status.RebootRequest = &v1.RequestStatus{RequestedAt: stamp(testNow), Result: v1.RequestRefused,
			Reason: v1.ReasonLocked, Message: "cannot reboot: the instance is locked"}
	})}
	err := h.run("reboot", "web", "--wait", "--timeout", time.Minute.String())
	if err == nil || err.Error() != "Locked: cannot reboot: the instance is locked" {
		t.Fatalf("err = %v", err)
	}
}
