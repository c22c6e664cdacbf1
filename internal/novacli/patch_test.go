package novacli

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// TestVerbsWriteMergePatches runs each verb against a fake client and checks the exact patch
// it sends: the manager reads these fields, so their shape is the contract.
func TestVerbsWriteMergePatches(t *testing.T) {
	const at = "2026-03-14T15:09:26.535897Z" // testNow cut to microseconds
	tests := []struct {
		args    []string
		vmState v1.VMState
		body    string
		printed string
	}{
		{args: []string{"start", "web"}, vmState: v1.VMStateStopped,
			body: `{"spec":{"powerState":"Running","startRequest":{"requestedAt":"` + at + `"}}}`, printed: "start requested"},
		{args: []string{"stop", "web"}, body: `{"spec":{"powerState":"Stopped"}}`, printed: "stop requested"},
		{args: []string{"pause", "web"}, body: `{"spec":{"powerState":"Paused"}}`, printed: "pause requested"},
		{args: []string{"unpause", "web"}, vmState: v1.VMStatePaused,
			body: `{"spec":{"powerState":"Running"}}`, printed: "unpause requested"},
		{args: []string{"suspend", "web"}, body: `{"spec":{"powerState":"Suspended"}}`, printed: "suspend requested"},
		{args: []string{"resume", "web"}, vmState: v1.VMStateSuspended,
			body: `{"spec":{"powerState":"Running"}}`, printed: "resume requested"},
		{args: []string{"reboot", "web"},
			body: `{"spec":{"rebootRequest":{"type":"Soft","requestedAt":"` + at + `"}}}`, printed: "reboot requested"},
		{args: []string{"reboot", "web", "--hard"},
			body: `{"spec":{"rebootRequest":{"type":"Hard","requestedAt":"` + at + `"}}}`, printed: "reboot requested"},
		{args: []string{"lock", "web", "--reason", "audit"},
			body: `{"spec":{"locked":true,"lockedReason":"audit"}}`, printed: "lock requested"},
		{args: []string{"lock", "web"},
			body: `{"spec":{"locked":true,"lockedReason":null}}`, printed: "lock requested"},
		{args: []string{"unlock", "web"},
			body: `{"spec":{"locked":null,"lockedReason":null}}`, printed: "unlock requested"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			inst := sampleInstance("web")
			if tt.vmState != "" {
				inst.Status.VMState = tt.vmState
			}
			h := newHarness(t, inst)
			if err := h.run(tt.args...); err != nil {
				t.Fatalf("run: %v", err)
			}
			if len(h.patches) != 1 {
				t.Fatalf("sent %d patches, want 1", len(h.patches))
			}
			p := h.patches[0]
			if p.name != "web" || p.typ != string(types.MergePatchType) {
				t.Errorf("patch of %q with type %q, want web with a JSON merge patch", p.name, p.typ)
			}
			if p.body != tt.body {
				t.Errorf("body\n %s\nwant\n %s", p.body, tt.body)
			}
			if want := "instance.compute.kubenova.io/web " + tt.printed + "\n"; h.out.String() != want {
				t.Errorf("printed %q, want %q", h.out.String(), want)
			}
		})
	}
}

func TestStampKeepsMicroseconds(t *testing.T) {
	s := stamp(testNow)
	if got := s.Nanosecond(); got != 535897000 {
		t.Errorf("stamp nanoseconds = %d, want 535897000", got)
	}
	if !sameStamp(s.Time, testNow) {
		t.Error("a stamp read back must match the time it was made from")
	}
}
