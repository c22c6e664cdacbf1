package deployed

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// Node upkeep, the last of the deployed tests: a drain moves every instance of its node, the
// earlier tests' too (their checks read a guest's console on the node it booted on).
//
// kubectl drain of a compute node with four running instances: the eviction of their
// reservation pod is refused (429) while the manager live-migrates them, two at a time, and
// the drain completes once they have left, the pod deleted. An instance whose eviction
// strategy is None keeps a later drain waiting, counted in what kubectl drain prints and named
// in its own DrainWaiting Event, until its
// strategy changes. The drained node is the second: the manager's pod is pinned to the first
// (it mounts the image store there), and a drain of its own node would wait for it.
func TestKubectlDrainMovesInstancesOffANode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	from, to := cluster.Nodes[1], cluster.Nodes[0]
	kubectl := func(args ...string) (string, error) {
		return cluster.KubectlWith(ctx, cluster.AdminKubeconfig, args...)
	}
	mustKubectl := func(args ...string) string {
		t.Helper()
		out, err := kubectl(args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	defer func() {
		_, _ = cluster.KubectlWith(context.Background(), cluster.AdminKubeconfig, "uncordon", from.Name)
		_, _ = cluster.KubectlWith(context.Background(), cluster.AdminKubeconfig, "uncordon", to.Name)
	}()
	// launch starts instances that all land on from: the other node is cordoned meanwhile.
	launch := func(strategy v1.EvictionStrategy, names ...string) []*v1.Instance {
		t.Helper()
		mustKubectl("cordon", to.Name)
		var insts []*v1.Instance
		for _, name := range names {
			inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
				Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}, EvictionStrategy: strategy}}
			if err := cluster.Client.Create(ctx, inst); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cluster.Client.Delete(context.Background(), inst) })
			insts = append(insts, inst)
		}
		for i, inst := range insts {
			insts[i] = waitSettled(ctx, t, inst.Name, v1.VMStateActive, 3*time.Minute)
			if insts[i].Status.NodeName != from.Name {
				t.Fatalf("%s placed on %s, want %s", inst.Name, insts[i].Status.NodeName, from.Name)
			}
		}
		mustKubectl("uncordon", to.Name)
		return insts
	}

	insts := launch("", "drained-1", "drained-2", "drained-3", "drained-4")
	started := time.Now()
	out := mustKubectl("drain", from.Name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5m")
	took := time.Since(started)
	t.Logf("FIGURE kubectl drain of a node with 4 running m1.tiny instances (live migration, 2 at a time): %s", took.Round(100*time.Millisecond))
	if !strings.Contains(out, "drained") {
		t.Errorf("kubectl drain: %s", out)
	}
	var migs v1.MigrationList
	if err := cluster.Client.List(ctx, &migs, client.InNamespace("default"), client.MatchingLabels{controllers.DrainLabel: from.Name}); err != nil {
		t.Fatal(err)
	}
	downtime := map[string]int64{}
	for _, m := range migs.Items {
		if m.Status.Phase == v1.MigrationSucceeded {
			downtime[m.Spec.InstanceName] = m.Status.DowntimeMillis
		}
	}
	for _, inst := range insts {
		got := getInstance(ctx, t, inst.Name)
		ms, moved := downtime[inst.Name]
		if !moved || got.Status.NodeName != to.Name || got.Status.VMState != v1.VMStateActive {
			t.Errorf("%s: on %s, %s, drain migration succeeded %v; want Active on %s", inst.Name, got.Status.NodeName, got.Status.VMState, moved, to.Name)
			continue
		}
		t.Logf("FIGURE drain: %s moved live, %d ms of downtime", inst.Name, ms)
		runsOnlyOn(ctx, t, to, got)
	}
	pod := controllers.ReservationPodName(scheduler.ReservationKey{Namespace: "default", Node: from.Name})
	if out, err := kubectl("get", "pod", "-n", "default", pod, "-o", "name"); err == nil {
		t.Errorf("reservation pod %s still there after the drain: %s", pod, out)
	}
	mustKubectl("uncordon", from.Name)

	stays := launch(v1.EvictionNone, "stays-put")[0]
	out, err := kubectl("drain", from.Name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=20s")
	if err == nil || !strings.Contains(out, "1 left (0 moving, 0 waiting for their turn, 1 with evictionStrategy None") {
		t.Fatalf("kubectl drain with an instance whose strategy is None: %v\n%s\nwant it to wait, saying why", err, out)
	}
	if out := mustKubectl("get", "events", "-n", "default", "--field-selector", "involvedObject.name=stays-put,reason="+controllers.ReasonDrainWaiting, "-o", "jsonpath={.items[*].message}"); !strings.Contains(out, "evictionStrategy None") {
		t.Errorf("the instance's DrainWaiting Event: %q; want it to say its strategy keeps it", out)
	}
	if got := getInstance(ctx, t, stays.Name); got.Status.NodeName != from.Name {
		t.Fatalf("stays-put moved to %s", got.Status.NodeName)
	}
	patch := client.MergeFrom(stays.DeepCopy())
	stays.Spec.EvictionStrategy = v1.EvictionLiveMigrate
	if err := cluster.Client.Patch(ctx, stays, patch); err != nil {
		t.Fatal(err)
	}
	mustKubectl("drain", from.Name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=3m")
	eventually(t, time.Minute, "stays-put on "+to.Name, func() error {
		if got := getInstance(ctx, t, stays.Name); got.Status.NodeName != to.Name || got.Status.VMState != v1.VMStateActive {
			return fmt.Errorf("on %s, %s", got.Status.NodeName, got.Status.VMState)
		}
		return nil
	})
}
