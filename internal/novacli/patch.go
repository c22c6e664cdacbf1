package novacli

import (
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// The verbs write JSON merge patches of the spec alone: a merge patch needs no resourceVersion,
// so a verb never fails because the manager wrote the status meanwhile, and it leaves every
// field it does not name to whoever else manages the object (GitOps tools included).

// specPatch wraps fields of the spec in a merge patch; a nil value deletes the field.
func specPatch(fields map[string]any) ([]byte, error) {
	return json.Marshal(map[string]any{"spec": fields})
}

// powerPatch asks for a power state; a start also stamps a start request, because only a new
// spec lifts kubenova's hold on an instance that stopped outside it, and spec.powerState may
// already say Running.
func powerPatch(desired v1.DesiredPowerState, startStamp *metav1.MicroTime) ([]byte, error) {
	fields := map[string]any{"powerState": desired}
	if startStamp != nil {
		fields["startRequest"] = v1.StartRequest{RequestedAt: *startStamp}
	}
	return specPatch(fields)
}

// rebootPatch asks for one reboot, identified by its stamp.
func rebootPatch(t v1.RebootType, stamp metav1.MicroTime) ([]byte, error) {
	return specPatch(map[string]any{"rebootRequest": v1.RebootRequest{Type: t, RequestedAt: stamp}})
}

// lockPatch locks the instance. Without a reason it clears any earlier one, which would
// otherwise explain a lock it was not written for.
func lockPatch(reason string) ([]byte, error) {
	var r any
	if reason != "" {
		r = reason
	}
	return specPatch(map[string]any{"locked": true, "lockedReason": r})
}

// unlockPatch removes both fields: the API allows a reason only on a locked instance.
func unlockPatch() ([]byte, error) {
	return specPatch(map[string]any{"locked": nil, "lockedReason": nil})
}

// stamp is a request's identity: now, cut to the microseconds the API keeps, so that the
// stamp read back from the status compares equal to the one written.
func stamp(now time.Time) metav1.MicroTime {
	return metav1.NewMicroTime(now.Truncate(time.Microsecond))
}

// sameStamp compares two request stamps at the API's precision.
func sameStamp(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}
