package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	clientfake "sigs.k8s.io/controller-runtime/pkg/client/fake"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/scheme"
)

// A task tried again reaches the step it wrote before: the agent writes nothing then, and must
// not wait for a newer version of its own (a snapshot whose upload failed twice waited so forever).
func TestProgressWithNothingNewIsNotAwaited(t *testing.T) {
	ctx := context.Background()
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: uidHere},
		Status: v1.InstanceStatus{NodeName: thisNodeName, AgentReport: &v1.AgentReport{NodeName: thisNodeName}}}
	c := clientfake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(inst).WithStatusSubresource(inst).Build()
	r := &InstanceReconciler{Client: c, NodeName: thisNodeName}
	if err := c.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
		t.Fatal(err)
	}

	orig, working := inst.DeepCopy(), inst.DeepCopy()
	working.Status.AgentReport.Step, working.Status.AgentReport.StepTaskID = v1.StepUploading, 7
	orig = r.writeProgress(ctx, orig, working)
	if !r.cacheBehind(inst) {
		t.Fatal("after a write, the version it replaced is known as behind")
	}
	var written v1.Instance
	if err := c.Get(ctx, client.ObjectKeyFromObject(inst), &written); err != nil {
		t.Fatal(err)
	}
	if written.Status.AgentReport.Step != v1.StepUploading || orig.ResourceVersion != written.ResourceVersion {
		t.Fatalf("the step was not written: %+v at %s, returned %s", written.Status.AgentReport, written.ResourceVersion, orig.ResourceVersion)
	}
	if r.cacheBehind(&written) {
		t.Fatal("the written version is not behind")
	}

	// The retry: the same step again, on the version the API server holds.
	again := written.DeepCopy()
	if got := r.writeProgress(ctx, written.DeepCopy(), again); got.ResourceVersion != written.ResourceVersion {
		t.Errorf("nothing new was written, yet the version moved to %s", got.ResourceVersion)
	}
	if r.cacheBehind(&written) {
		t.Error("the agent waits for a newer version after a write it did not make")
	}
}

// A task whose attempt fails while the hypervisor does not answer waits for it (libvirtd
// restarting) instead of counting the attempt, for HypervisorWait; one that fails while the
// hypervisor answers counts.
func TestATaskWaitsForAHypervisorThatDoesNotAnswer(t *testing.T) {
	ctx := context.Background()
	d := fake.New()
	r := &InstanceReconciler{Driver: d, HypervisorWait: time.Hour}
	failure := errors.New("cannot connect to libvirtd")
	if _, _, ok := r.waitInsteadOfFailing(ctx, "u-1", 1, failure); ok {
		t.Fatal("waits though the hypervisor answers")
	}
	d.SetFail("Ping", failure)
	wait, what, ok := r.waitInsteadOfFailing(ctx, "u-1", 1, failure)
	if !ok || wait != hypervisorPoll || what != "the hypervisor" {
		t.Fatalf("with libvirtd down: %s %q %v", wait, what, ok)
	}
	if _, _, ok := r.waitInsteadOfFailing(ctx, "u-1", 1, finalError{failure}); ok {
		t.Error("waits on a final failure")
	}
	r.HypervisorWait = time.Nanosecond
	if _, _, ok := r.waitInsteadOfFailing(ctx, "u-1", 1, failure); ok {
		t.Error("still waits past HypervisorWait")
	}
}
