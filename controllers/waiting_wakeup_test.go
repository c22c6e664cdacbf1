package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// A waiting instance is woken by every Hypervisor change that may let a scheduler filter pass,
// and not by a node taking on one more instance. A change missed here left the launch to its
// backoff: in CI, a launch waiting on an unmounted storage root was still waiting two minutes
// after the root came back.
func TestHypervisorChangesThatWakeWaitingInstances(t *testing.T) {
	base := func() *v1.Hypervisor {
		hv := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "a", Generation: 1}}
		hv.Status.State = v1.HypervisorUp
		hv.Status.Capacity = v1.Resources{VCPUs: 4, MemoryMiB: 4096, DiskGiB: 40}
		hv.Status.Instances = 2
		hv.Status.Networks = []v1.HypervisorNetwork{{Name: "provider"}}
		return hv
	}
	for _, tc := range []struct {
		name   string
		change func(*v1.Hypervisor)
		wakes  bool
	}{
		{"storage root back", func(hv *v1.Hypervisor) { hv.Status.StorageUnavailable = "" }, true},
		{"a quarantined disk listed", func(hv *v1.Hypervisor) {
			hv.Status.Quarantined = append(hv.Status.Quarantined, v1.QuarantinedInstance{UID: "u", Reason: "vanished"})
		}, true},
		{"up again", func(hv *v1.Hypervisor) { hv.Status.State = v1.HypervisorDown }, true},
		{"spec changed (enabled)", func(hv *v1.Hypervisor) { hv.Generation++ }, true},
		{"more capacity", func(hv *v1.Hypervisor) { hv.Status.Capacity.MemoryMiB *= 2 }, true},
		{"an instance fewer", func(hv *v1.Hypervisor) { hv.Status.Instances-- }, true},
		{"a network more", func(hv *v1.Hypervisor) {
			hv.Status.Networks = append(hv.Status.Networks, v1.HypervisorNetwork{Name: "other"})
		}, true},
		{"an instance more", func(hv *v1.Hypervisor) { hv.Status.Instances++ }, false},
		{"nothing a filter reads", func(hv *v1.Hypervisor) { hv.Status.AgentVersion = "v2" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := base()
			old.Status.StorageUnavailable = "storage root has no .storage-id: is it mounted?"
			hv := old.DeepCopy()
			tc.change(hv)
			if got := hypervisorMayTakeMore(event.UpdateEvent{ObjectOld: old, ObjectNew: hv}); got != tc.wakes {
				t.Errorf("wakes waiting instances: %v, want %v", got, tc.wakes)
			}
		})
	}
}
