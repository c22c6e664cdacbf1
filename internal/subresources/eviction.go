package subresources

import (
	"context"
	"encoding/json"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kubenova/kubenova/internal/scheduler"
)

// EvictionPath is where kube-apiserver sends the evictions of pods for review (the
// ValidatingWebhookConfiguration kubenova-reservation-eviction, config/manager).
const EvictionPath = "/validate-pod-eviction"

// EvictionWebhookName is the ValidatingWebhookConfiguration whose CA bundle the manager keeps.
const EvictionWebhookName = "kubenova-reservation-eviction"

// ReservationEvictions answers the eviction of a reservation pod: the message of the refusal
// (the instances it carries are moved by the drain, not evicted with it).
type ReservationEvictions func(ctx context.Context, pod *corev1.Pod, dryRun bool) (string, error)

// serveEviction reviews a pods/eviction: any pod but a reservation pod may go; a reservation
// pod is refused with 429 Too Many Requests, which kubectl drain retries, until the instances
// it carries have left and the manager deleted it. Whoever reaches this endpoint learns only
// what the evicted pod's namespace holds; the review has no other effect than recording that
// a drain asked for the node, which starts moves only on a cordoned node.
func (s *Server) serveEviction(w http.ResponseWriter, req *http.Request) {
	review := &admissionv1.AdmissionReview{}
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20)).Decode(review); err != nil || review.Request == nil {
		writeStatus(w, apierrors.NewBadRequest("not an AdmissionReview"))
		return
	}
	r := review.Request
	resp := &admissionv1.AdmissionResponse{UID: r.UID, Allowed: true}
	review.Response, review.Request = resp, nil
	defer writeJSON(w, review)
	if r.Resource.Resource != "pods" || r.SubResource != "eviction" || r.Operation != admissionv1.Create || s.Evictions == nil {
		return
	}
	pod := &corev1.Pod{}
	if err := s.Client.Get(req.Context(), client.ObjectKey{Namespace: r.Namespace, Name: r.Name}, pod); err != nil ||
		pod.Labels[scheduler.ReservationLabel] == "" || pod.Spec.NodeName == "" {
		return // not kubenova's: evicted as any pod is
	}
	dryRun := r.DryRun != nil && *r.DryRun
	msg, err := s.Evictions(req.Context(), pod, dryRun)
	if err != nil {
		log.FromContext(req.Context()).Error(err, "review an eviction of a reservation pod", "pod", client.ObjectKeyFromObject(pod))
		msg = "kubenova could not review the eviction of reservation pod " + pod.Name + ": " + err.Error()
	}
	resp.Allowed = false
	resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusTooManyRequests,
		Reason: metav1.StatusReasonTooManyRequests, Message: msg}
}
