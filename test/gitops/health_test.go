package gitops

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// outcome is a status's three kstatus conditions: which one is True, with its reason.
func outcome(trueType, reason, message string) []metav1.Condition {
	var conds []metav1.Condition
	for _, t := range []string{v1.ConditionReady, v1.ConditionReconciling, v1.ConditionStalled} {
		c := metav1.Condition{Type: t, Status: metav1.ConditionFalse, Reason: "Idle", ObservedGeneration: 2}
		if t == trueType || (t == v1.ConditionReady && trueType == "") {
			c.Reason, c.Message = reason, message
		}
		if t == trueType {
			c.Status = metav1.ConditionTrue
		}
		conds = append(conds, c)
	}
	return conds
}

func instance(o lifecycle.Observation) *v1.Instance {
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Generation: 2},
		Status: v1.InstanceStatus{ObservedGeneration: 2, VMState: o.VMState, TaskState: o.TaskState}}
	for _, c := range lifecycle.Health(o) {
		c.ObservedGeneration = 2
		inst.Status.Conditions = append(inst.Status.Conditions, c)
	}
	return inst
}

// asCreated is the object as the API server returns it before the manager writes a status:
// the CRD's default status, observedGeneration 0.
func asCreated(t *testing.T, obj runtime.Object) *unstructured.Unstructured {
	u, err := toUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedField(u.Object, int64(0), "status", "observedGeneration"); err != nil {
		t.Fatal(err)
	}
	return u
}

func meta() metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: "x", Namespace: "default", Generation: 2}
}

// TestHealthOfEachKindInEachState runs the shipped Argo CD scripts and kstatus on each kind in
// each state: what Argo CD and Flux show must agree with what kubenova means.
func TestHealthOfEachKindInEachState(t *testing.T) {
	scripts, err := LoadHealthScripts()
	if err != nil {
		t.Fatal(err)
	}
	resized := &lifecycle.Refusal{Reason: "Resized", Message: "resized to flavor large: confirm or revert"}
	noHost := &lifecycle.Refusal{Reason: v1.ReasonNoValidHost, Message: "no node fits"}
	refused := &lifecycle.Refusal{Reason: v1.ReasonInvalidState, Message: "cannot pause a stopped instance"}
	unobserved := instance(lifecycle.Observation{VMState: v1.VMStateActive, DesiredReached: true})
	unobserved.Generation = 3
	cases := []struct {
		name    string
		obj     runtime.Object
		argo    string
		kstatus status.Status
	}{
		{"instance created, no status yet", asCreated(t, &v1.Instance{ObjectMeta: meta()}), Progressing, status.InProgressStatus},
		{"instance with a spec change not yet observed", unobserved, Progressing, status.InProgressStatus},
		{"instance spawning", instance(lifecycle.Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateSpawning}), Progressing, status.InProgressStatus},
		{"instance waiting for a host", instance(lifecycle.Observation{VMState: v1.VMStateBuilding, TaskState: v1.TaskStateScheduling, Waiting: noHost}), Progressing, status.InProgressStatus},
		{"instance active", instance(lifecycle.Observation{VMState: v1.VMStateActive, DesiredReached: true}), Healthy, status.CurrentStatus},
		{"instance rebooting", instance(lifecycle.Observation{VMState: v1.VMStateActive, TaskState: v1.TaskStateRebooting}), Progressing, status.InProgressStatus},
		{"instance rescued as asked", instance(lifecycle.Observation{VMState: v1.VMStateRescued, DesiredReached: true}), Healthy, status.CurrentStatus},
		{"instance stopped as asked", instance(lifecycle.Observation{VMState: v1.VMStateStopped, DesiredReached: true}), Suspended, status.CurrentStatus},
		{"instance paused as asked", instance(lifecycle.Observation{VMState: v1.VMStatePaused, DesiredReached: true}), Suspended, status.CurrentStatus},
		{"instance suspended as asked", instance(lifecycle.Observation{VMState: v1.VMStateSuspended, DesiredReached: true}), Suspended, status.CurrentStatus},
		{"instance shelved as asked", instance(lifecycle.Observation{VMState: v1.VMStateShelvedOffloaded, DesiredReached: true}), Suspended, status.CurrentStatus},
		{"instance resized, awaiting a decision", instance(lifecycle.Observation{VMState: v1.VMStateResized, Waiting: resized}), Suspended, status.InProgressStatus},
		{"instance stopping toward its spec", instance(lifecycle.Observation{VMState: v1.VMStateActive}), Progressing, status.InProgressStatus},
		{"instance refusing a request", instance(lifecycle.Observation{VMState: v1.VMStateStopped, Refusal: refused}), Degraded, status.FailedStatus},
		{"instance in error", instance(lifecycle.Observation{VMState: v1.VMStateError, Fault: &v1.InstanceFault{Message: "spawn failed"}}), Degraded, status.FailedStatus},
		{"instance on a node that is down", instance(lifecycle.Observation{VMState: v1.VMStateActive, DesiredReached: true, NodeDown: "node-1 is down"}), Degraded, status.InProgressStatus},
		{"stopped instance on a node that is down", instance(lifecycle.Observation{VMState: v1.VMStateStopped, DesiredReached: true, NodeDown: "node-1 is down"}), Degraded, status.InProgressStatus},

		{"image importing", &v1.Image{ObjectMeta: meta(), Status: v1.ImageStatus{ObservedGeneration: 2, Phase: v1.ImageImporting,
			Conditions: outcome(v1.ConditionReconciling, "Importing", "downloading")}}, Progressing, status.InProgressStatus},
		{"image available", &v1.Image{ObjectMeta: meta(), Status: v1.ImageStatus{ObservedGeneration: 2, Phase: v1.ImageAvailable,
			Conditions: outcome(v1.ConditionReady, "Available", "")}}, Healthy, status.CurrentStatus},
		{"image failed", &v1.Image{ObjectMeta: meta(), Status: v1.ImageStatus{ObservedGeneration: 2, Phase: v1.ImageError,
			Conditions: outcome(v1.ConditionStalled, "ChecksumMismatch", "the sha256 differs")}}, Degraded, status.FailedStatus},
		{"cluster image available", &v1.ClusterImage{ObjectMeta: metav1.ObjectMeta{Name: "x", Generation: 2}, Status: v1.ImageStatus{ObservedGeneration: 2,
			Phase: v1.ImageAvailable, Conditions: outcome(v1.ConditionReady, "Available", "")}}, Healthy, status.CurrentStatus},

		{"snapshot created, no status yet", asCreated(t, &v1.Snapshot{ObjectMeta: meta()}), Progressing, status.InProgressStatus},
		{"snapshot uploading", &v1.Snapshot{ObjectMeta: meta(), Status: v1.SnapshotStatus{ObservedGeneration: 2, Phase: v1.SnapshotUploading,
			Conditions: outcome(v1.ConditionReconciling, "Uploading", "copying to the image store")}}, Progressing, status.InProgressStatus},
		{"snapshot succeeded", &v1.Snapshot{ObjectMeta: meta(), Status: v1.SnapshotStatus{ObservedGeneration: 2, Phase: v1.SnapshotSucceeded,
			Conditions: outcome(v1.ConditionReady, "Succeeded", "image web-snap")}}, Healthy, status.CurrentStatus},
		{"snapshot failed", &v1.Snapshot{ObjectMeta: meta(), Status: v1.SnapshotStatus{ObservedGeneration: 2, Phase: v1.SnapshotFailed,
			Conditions: outcome(v1.ConditionStalled, "InstanceNotFound", "no instance web")}}, Degraded, status.FailedStatus},

		{"migration migrating", &v1.Migration{ObjectMeta: meta(), Status: v1.MigrationStatus{ObservedGeneration: 2, Phase: v1.MigrationMigrating,
			Conditions: outcome(v1.ConditionReconciling, "Migrating", "42%")}}, Progressing, status.InProgressStatus},
		{"cold migration awaiting a confirm", &v1.Migration{ObjectMeta: meta(), Status: v1.MigrationStatus{ObservedGeneration: 2, Phase: v1.MigrationFinalizing,
			Conditions: outcome(v1.ConditionReconciling, "Resized", "confirm or revert")}}, Suspended, status.InProgressStatus},
		{"migration succeeded", &v1.Migration{ObjectMeta: meta(), Status: v1.MigrationStatus{ObservedGeneration: 2, Phase: v1.MigrationSucceeded,
			Conditions: outcome(v1.ConditionReady, "MigrationSucceeded", "on host-2")}}, Healthy, status.CurrentStatus},
		{"migration failed", &v1.Migration{ObjectMeta: meta(), Status: v1.MigrationStatus{ObservedGeneration: 2, Phase: v1.MigrationFailed,
			Conditions: outcome(v1.ConditionStalled, "Locked", "the instance is locked")}}, Degraded, status.FailedStatus},
	}
	for _, c := range cases {
		h, err := scripts.Of(c.obj)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if h.Status != c.argo {
			t.Errorf("%s: Argo CD says %s (%q), want %s", c.name, h.Status, h.Message, c.argo)
		}
		if h.Message == "" {
			t.Errorf("%s: Argo CD shows %s with no message", c.name, h.Status)
		}
		res, err := Kstatus(c.obj)
		if err != nil {
			t.Errorf("%s: kstatus: %v", c.name, err)
			continue
		}
		if res.Status != c.kstatus {
			t.Errorf("%s: kstatus says %s (%s), want %s", c.name, res.Status, res.Message, c.kstatus)
		}
	}
}

// TestEveryKindWithStatusHasAHealthScript: a kind Argo CD cannot judge shows as Healthy the
// moment it exists, whatever it does.
func TestEveryKindWithStatusHasAHealthScript(t *testing.T) {
	scripts, err := LoadHealthScripts()
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"Instance", "Image", "ClusterImage", "Snapshot", "Migration"} {
		if _, ok := scripts[kind]; !ok {
			t.Errorf("config/argocd has no health script for %s", kind)
		}
	}
}

// TestFlavorsAndHypervisorsToKstatus: a Flavor is only a spec, Current at once; a Hypervisor
// is Current while Up and InProgress while Down (its Ready condition False), waiting for its
// agent. Neither is an Argo CD kind of kubenova's (no script: Argo CD shows them Healthy).
func TestFlavorsAndHypervisorsToKstatus(t *testing.T) {
	hypervisor := func(state v1.HypervisorState, ready metav1.ConditionStatus) *v1.Hypervisor {
		return &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "host-1", Generation: 1},
			Status: v1.HypervisorStatus{ObservedGeneration: 1, State: state,
				Conditions: []metav1.Condition{{Type: v1.ConditionReady, Status: ready, Reason: "Heartbeat", ObservedGeneration: 1}}}}
	}
	flavor := &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: "m1.tiny", Generation: 1}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 256}}
	for _, c := range []struct {
		name string
		obj  runtime.Object
		want status.Status
	}{
		{"flavor", flavor, status.CurrentStatus},
		{"hypervisor up", hypervisor(v1.HypervisorUp, metav1.ConditionTrue), status.CurrentStatus},
		{"hypervisor down", hypervisor(v1.HypervisorDown, metav1.ConditionFalse), status.InProgressStatus},
	} {
		res, err := Kstatus(c.obj)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != c.want {
			t.Errorf("%s: kstatus says %s (%s), want %s", c.name, res.Status, res.Message, c.want)
		}
	}
}
