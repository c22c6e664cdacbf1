package novacli

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// event is an Event about inst as the manager's events.k8s.io recorder writes it.
func event(inst *v1.Instance, name, action, reason, kind, note string, at time.Time) *corev1.Event {
	return &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: name},
		InvolvedObject: corev1.ObjectReference{Kind: "Instance", Namespace: inst.Namespace, Name: inst.Name, UID: inst.UID},
		Action:         action, Reason: reason, Type: kind, Message: note, ReportingController: "kubenova-manager",
		EventTime: metav1.NewMicroTime(at)}
}

func TestInstanceActionListTellsWhatHappenedInOrder(t *testing.T) {
	web := sampleInstance("web")
	web.Status.Task = &v1.Task{ID: 9, Action: v1.ActionReboot, StartedAt: metav1.NewTime(testNow.Add(-time.Minute))}
	web.Status.TaskState = v1.TaskStateRebooting
	launched := event(web, "e1", "Launch", v1.ReasonTaskSucceeded, corev1.EventTypeNormal, "Launch done on host-1: Active", testNow.Add(-80*time.Minute))
	refused := event(web, "e2", "Pause", v1.ReasonInvalidState, corev1.EventTypeWarning, "cannot pause", testNow.Add(-10*time.Minute))
	refused.Series = &corev1.EventSeries{Count: 3, LastObservedTime: metav1.NewMicroTime(testNow.Add(-5 * time.Minute))}
	// An earlier instance of the same name: not this one's history.
	earlier := event(web, "e0", "Launch", v1.ReasonTaskFailed, corev1.EventTypeWarning, "Launch failed", testNow.Add(-3*time.Hour))
	earlier.InvolvedObject.UID = "an-earlier-uid"
	h := newHarness(t, web, refused, launched, earlier)

	if err := h.opts.runInstanceActionList(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(h.out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and three rows:\n%s", h.out)
	}
	for i, want := range []string{"TIME ACTION REASON TYPE BY MESSAGE",
		"Launch TaskSucceeded Normal kubenova-manager Launch done on host-1: Active",
		"Pause InvalidState Warning kubenova-manager cannot pause (3 times, last " + testNow.Add(-5*time.Minute).UTC().Format(time.RFC3339) + ")",
		"Reboot InProgress Normal status task 9 under way (task state Rebooting)"} {
		if got := strings.Join(strings.Fields(lines[i]), " "); !strings.HasSuffix(got, want) {
			t.Errorf("line %d: %q, want it to end with %q", i, got, want)
		}
	}
}
