package novacli

import (
	"strings"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// resizedInstance is web waiting in Resized after a resize from m1.tiny to m1.small.
func resizedInstance() *v1.Instance {
	inst := sampleInstance("web")
	inst.Spec.Flavor = "m1.small"
	inst.Status.VMState = v1.VMStateResized
	inst.Status.Resize = &v1.ResizeStatus{Action: v1.ActionResize, SourceNode: "host-1", TargetNode: "host-2",
		OldFlavor: *inst.Status.Flavor.DeepCopy(), Flavor: v1.AppliedFlavor{Name: "m1.small"}, PreviousVMState: v1.VMStateActive}
	return inst
}

func TestResizeWritesTheFlavorAndWaitsForResized(t *testing.T) {
	h := newHarness(t, sampleInstance("web"))
	h.gets = []*v1.Instance{
		instanceAt(4, func(inst *v1.Instance) { inst.Status.TaskState = v1.TaskStateResizeMigrating }),
		instanceAt(4, func(inst *v1.Instance) { inst.Status.VMState = v1.VMStateResized }),
	}
	if err := h.run("resize", "web", "m1.small", "--wait", "--timeout", time.Minute.String()); err != nil {
		t.Fatal(err)
	}
	if want := `{"spec":{"flavor":"m1.small"}}`; len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("patches = %+v; want one with %s", h.patches, want)
	}
	if got := h.out.String(); !strings.Contains(got, "web: Resized/-/Running") || !strings.Contains(got, "resize done: Resized") {
		t.Errorf("printed %q", got)
	}
	h = newHarness(t, sampleInstance("web"))
	if err := h.run("resize", "web", "m1.tiny"); err == nil || !strings.Contains(err.Error(), "has flavor m1.tiny already") {
		t.Errorf("a resize to the flavor it has: %v", err)
	}
	for _, args := range [][]string{{"resize", "web"}, {"resize", "web", "m1.small", "--confirm"}, {"resize", "web", "--confirm", "--revert"}} {
		if err := newHarness(t, sampleInstance("web")).run(args...); err == nil {
			t.Errorf("%v was accepted", args)
		}
	}
}

func TestResizeConfirmAndRevertStampARequest(t *testing.T) {
	h := newHarness(t, resizedInstance())
	if err := h.run("resize", "web", "--confirm"); err != nil {
		t.Fatal(err)
	}
	want := `{"spec":{"resizeRequest":{"decision":"Confirm","requestedAt":"2026-03-14T15:09:26.535897Z"}}}`
	if len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("confirm sent %+v, want %s", h.patches, want)
	}
	// A revert of a resize sets spec.flavor back to the old flavor: the spec says what runs.
	h = newHarness(t, resizedInstance())
	if err := h.run("resize", "web", "--revert"); err != nil {
		t.Fatal(err)
	}
	want = `{"spec":{"flavor":"m1.tiny","resizeRequest":{"decision":"Revert","requestedAt":"2026-03-14T15:09:26.535897Z"}}}`
	if len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("revert sent %+v, want %s", h.patches, want)
	}
	// A cold migration has no flavor to go back to.
	cold := resizedInstance()
	cold.Spec.Flavor, cold.Status.Resize.Action = "m1.tiny", v1.ActionMigrate
	h = newHarness(t, cold)
	if err := h.run("resize", "web", "--revert"); err != nil {
		t.Fatal(err)
	}
	want = `{"spec":{"resizeRequest":{"decision":"Revert","requestedAt":"2026-03-14T15:09:26.535897Z"}}}`
	if len(h.patches) != 1 || h.patches[0].body != want {
		t.Fatalf("revert of a cold migration sent %+v, want %s", h.patches, want)
	}
	h = newHarness(t, sampleInstance("web"))
	if err := h.run("resize", "web", "--confirm"); err == nil || !strings.Contains(err.Error(), "not Resized") {
		t.Errorf("a confirmation of an instance that is not Resized: %v", err)
	}
	if len(h.patches) != 0 {
		t.Errorf("sent %+v", h.patches)
	}
}
