package novacli

import (
	"strings"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestRebuildStampsARequestAndSetsTheImage(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	if err := h.run("rebuild", "web", "--image", "debian-12", "--cluster-image"); err != nil {
		t.Fatal(err)
	}
	want := `{"spec":{"image":{"kind":"ClusterImage","name":"debian-12"},"rebuildRequest":{"requestedAt":"2026-03-14T15:09:26.535897Z"}}}`
	if len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("patches = %+v; want one with %s", h.patches, want)
	}
	h = newHarness(t, sampleInstance("web"))
	if err := h.run("rebuild", "web"); err != nil {
		t.Fatal(err)
	}
	if want := `{"spec":{"rebuildRequest":{"requestedAt":"2026-03-14T15:09:26.535897Z"}}}`; h.patches[0].body != want {
		t.Fatalf("rebuild onto the same image sent %s, want %s", h.patches[0].body, want)
	}
}

// TestRebuildWaitFollowsTheRequest: a rebuild onto the same image changes no state, so --wait
// is done only when the request's acknowledgement says Succeeded, and fails with its reason.
func TestRebuildWaitFollowsTheRequest(t *testing.T) {
	ack := func(result v1.RequestResult, reason, msg string) func(*v1.Instance) {
		return func(inst *v1.Instance) {
			inst.Status.RebuildRequest = &v1.RequestStatus{RequestedAt: stamp(testNow), Result: result, Reason: reason, Message: msg}
		}
	}
	h := newHarness(t, sampleInstance("web"))
	h.gets = []*v1.Instance{
		instanceAt(4, func(inst *v1.Instance) {}), // Ready from before: not the request's doing
		instanceAt(4, func(inst *v1.Instance) {
			ack(v1.RequestAccepted, "", "")(inst)
			inst.Status.TaskState = v1.TaskStateRebuilding
		}),
		instanceAt(4, ack(v1.RequestSucceeded, "", "")),
	}
	if err := h.run("rebuild", "web", "--wait", "--timeout", time.Minute.String()); err != nil {
		t.Fatal(err)
	}
	if got := h.out.String(); !strings.Contains(got, "web: Active/Rebuilding/Running") || !strings.Contains(got, "rebuild done: Active") {
		t.Errorf("printed %q", got)
	}

	h = newHarness(t, sampleInstance("web"))
	h.gets = []*v1.Instance{instanceAt(4, ack(v1.RequestRefused, v1.ReasonInvalidState,
		"cannot rebuild an instance in vm state Paused: rebuild is allowed from Active, Stopped, Error"))}
	err := h.run("rebuild", "web", "--wait", "--timeout", time.Minute.String())
	if err == nil || err.Error() != "InvalidState: cannot rebuild an instance in vm state Paused: rebuild is allowed from Active, Stopped, Error" {
		t.Fatalf("err = %v", err)
	}
}

func TestRescueAndUnrescueWriteSpecRescue(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"rescue", "web"}, `{"spec":{"rescue":{}}}`},
		{[]string{"rescue", "web", "--image", "tools", "--cluster-image"}, `{"spec":{"rescue":{"image":{"kind":"ClusterImage","name":"tools"}}}}`},
		{[]string{"unrescue", "web"}, `{"spec":{"rescue":null}}`},
	} {
		h := newHarness(t, sampleInstance("web"))
		if err := h.run(c.args...); err != nil {
			t.Fatal(err)
		}
		if len(h.patches) != 1 || h.patches[0].body != c.want {
			t.Errorf("%v sent %+v, want %s", c.args, h.patches, c.want)
		}
	}
}

func TestShelveAndUnshelve(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	if err := h.run("shelve", "web"); err != nil {
		t.Fatal(err)
	}
	if want := `{"spec":{"powerState":"Shelved"}}`; len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("shelve sent %+v, want %s", h.patches, want)
	}
	h = newHarness(t, sampleInstance("web"))
	err := h.run("unshelve", "web")
	if err == nil || err.Error() != "instance web is Active, not Shelved: it is running already" || len(h.patches) != 0 {
		t.Fatalf("unshelve of an Active instance: %v, %d patches", err, len(h.patches))
	}
	offloaded := sampleInstance("web")
	offloaded.Status.VMState, offloaded.Status.NodeName = v1.VMStateShelvedOffloaded, ""
	h = newHarness(t, offloaded)
	if err := h.run("unshelve", "web"); err != nil {
		t.Fatal(err)
	}
	if want := `{"spec":{"powerState":"Running"}}`; len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("unshelve sent %+v, want %s", h.patches, want)
	}
}
