package subresources

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/kubenova/kubenova/internal/scheduler"
	kubescheme "github.com/kubenova/kubenova/internal/scheme"
)

// The eviction review refuses (429) only a reservation pod's eviction, with the message the
// drain gives, and passes on whether it is a dry run; any other pod may go.
func TestOnlyAReservationPodsEvictionIsRefused(t *testing.T) {
	reservation := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "kubenova-guests-host-1",
		Labels: map[string]string{scheduler.ReservationLabel: "home"}}, Spec: corev1.PodSpec{NodeName: "host-1"}}
	web := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "web"}, Spec: corev1.PodSpec{NodeName: "host-1"}}
	var asked []bool
	s := &Server{Client: fake.NewClientBuilder().WithScheme(kubescheme.New()).WithObjects(reservation, web).Build(),
		Evictions: func(_ context.Context, pod *corev1.Pod, dryRun bool) (string, error) {
			asked = append(asked, dryRun)
			return "1 left: team-a/db is moving", nil
		}}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	review := func(pod string, dryRun bool) *admissionv1.AdmissionResponse {
		t.Helper()
		in := admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{UID: types.UID("uid-" + pod), Namespace: "team-a", Name: pod,
				Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				SubResource: "eviction", Operation: admissionv1.Create, DryRun: ptr.To(dryRun)}}
		body, _ := json.Marshal(in)
		resp, err := http.Post(srv.URL+EvictionPath, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
			t.Fatalf("%s: answer %d, %v", pod, resp.StatusCode, err)
		}
		if out.Response.UID != in.Request.UID {
			t.Errorf("%s: answered uid %q", pod, out.Response.UID)
		}
		return out.Response
	}
	if r := review("web", false); !r.Allowed {
		t.Errorf("the eviction of an ordinary pod was refused: %+v", r.Result)
	}
	r := review("kubenova-guests-host-1", true)
	if r.Allowed || r.Result == nil || r.Result.Code != http.StatusTooManyRequests || r.Result.Message != "1 left: team-a/db is moving" {
		t.Errorf("the eviction of a reservation pod: %+v; want refused with 429 and the drain's message", r)
	}
	if len(asked) != 1 || !asked[0] {
		t.Errorf("the drain was asked %v; want once, as a dry run", asked)
	}
	if r := review("gone", false); !r.Allowed {
		t.Errorf("the eviction of a pod that does not exist was refused: %+v", r.Result)
	}
}
