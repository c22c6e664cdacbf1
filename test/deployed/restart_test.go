package deployed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// kubenova's own pods restarted under running guests, as an upgrade or a crash does. These run
// after the moves, on their instance and TestAnInstanceBootsOnARealNode's.

// runningGuest is an instance's guest as one node's libvirt runs it.
type runningGuest struct {
	inst *v1.Instance
	node utils.DeployedNode
	pid  string
}

func runningGuests(ctx context.Context, t *testing.T, names ...string) []runningGuest {
	t.Helper()
	var out []runningGuest
	for _, name := range names {
		inst := waitSettled(ctx, t, name, v1.VMStateActive, time.Minute)
		node := nodeNamed(t, inst.Status.NodeName)
		out = append(out, runningGuest{inst: inst, node: node, pid: qemuUser(t, node, inst)})
	}
	return out
}

// `kubectl rollout restart` of the agents' DaemonSet (an upgrade's path): every node's agent
// pod is replaced, one node at a time, and each new agent takes its node's guests over (a pause
// and an unpause only it can carry out), which run on in the same QEMU throughout.
func TestTheAgentsRollOutWithGuestsRunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	guests := runningGuests(ctx, t, "on-a-real-node", mover)
	before := map[types.UID]bool{}
	for _, p := range agentPods(ctx, t) {
		before[p.UID] = true
	}
	started := time.Now()
	for _, args := range [][]string{
		{"rollout", "restart", "daemonset/kubenova-agent"},
		{"rollout", "status", "daemonset/kubenova-agent", "--timeout=4m"},
	} {
		if out, err := cluster.KubectlWith(ctx, cluster.AdminKubeconfig, append([]string{"-n", utils.SystemNamespace}, args...)...); err != nil {
			t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Logf("FIGURE rollout restart of the agents on %d nodes: %s", nodes, time.Since(started).Round(100*time.Millisecond))
	eventually(t, time.Minute, "a new, Ready agent pod on every node", func() error {
		pods := agentPods(ctx, t)
		if len(pods) != nodes {
			return fmt.Errorf("%d agent pods", len(pods))
		}
		for _, p := range pods {
			if before[p.UID] || !podReady(&p) {
				return fmt.Errorf("pod %s on %s: old %v, Ready %v", p.Name, p.Spec.NodeName, before[p.UID], podReady(&p))
			}
		}
		return nil
	})
	for _, g := range guests {
		pauseAndUnpause(ctx, t, g.node, g.inst.Name, string(g.inst.UID))
		if _, err := os.Stat(filepath.Join("/proc", g.pid)); err != nil {
			t.Errorf("%s: its QEMU %s on %s is gone: %v", g.inst.Name, g.pid, g.node.Name, err)
		}
		if now := qemuUser(t, g.node, g.inst); now != g.pid {
			t.Errorf("%s: QEMU %s on %s, was %s: the guest was restarted", g.inst.Name, now, g.node.Name, g.pid)
		}
	}
}

// The manager's process killed (SIGKILL) while a live migration runs: the agents carry the move
// on, and the manager's next pod finishes the record of it. The guest runs on the target only,
// the same guest (it never booted there), and the Migration and the instance say so.
func TestTheManagerKilledDuringALiveMigration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	inst := waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	source := nodeNamed(t, inst.Status.NodeName)
	target := otherNode(t, source.Name)
	manager := managerPod(ctx, t)

	out := mustNova(ctx, t, "migrate", mover, "--live", "--node", target.Name)
	created := createdMigration.FindStringSubmatch(out)
	if created == nil {
		t.Fatalf("kubectl nova migrate --live said:\n%s", out)
	}
	// Kill it once the instance carries the move's task: mid-task, whichever step it is in.
	mig := &v1.Migration{}
	var task v1.TaskState
	deadline := time.Now().Add(time.Minute)
	for task == "" {
		if time.Now().After(deadline) {
			t.Fatal("the instance took no migration task within a minute")
		}
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
			t.Fatal(err)
		}
		task = inst.Status.TaskState
		time.Sleep(20 * time.Millisecond) // polling the API server
	}
	killContainer(t, manager)
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: created[1]}, mig); err != nil {
		t.Fatal(err)
	}
	t.Logf("manager killed with the instance in task %s, the Migration in phase %q", task, mig.Status.Phase)
	if task != v1.TaskStateMigrating || mig.Status.Phase == v1.MigrationSucceeded || mig.Status.Phase == v1.MigrationFailed {
		t.Fatalf("the kill came outside the move: task %q, Migration %q", task, mig.Status.Phase)
	}

	eventually(t, 3*time.Minute, "the Migration Succeeded, recorded by the manager's next run", func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(mig), mig); err != nil {
			return err
		}
		if mig.Status.Phase != v1.MigrationSucceeded {
			return fmt.Errorf("phase %q: %s", mig.Status.Phase, mig.Status.Message)
		}
		return nil
	})
	inst = waitSettled(ctx, t, mover, v1.VMStateActive, time.Minute)
	if inst.Status.NodeName != target.Name {
		t.Fatalf("instance on %s, want %s", inst.Status.NodeName, target.Name)
	}
	runsOnlyOn(ctx, t, target, inst)
	if c := consoleOn(t, target, inst); c.Boots() != 0 {
		t.Errorf("the guest booted on %s: %d boot lines", target.Name, c.Boots())
	}
	eventually(t, time.Minute, "the manager's container restarted and Ready", func() error {
		p := managerPod(ctx, t)
		if p.UID == manager.UID && p.Status.ContainerStatuses[0].RestartCount == manager.Status.ContainerStatuses[0].RestartCount {
			return fmt.Errorf("pod %s not restarted", p.Name)
		}
		if !podReady(&p) {
			return fmt.Errorf("pod %s not Ready", p.Name)
		}
		return nil
	})
}

func managerPod(ctx context.Context, t *testing.T) corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	if err := cluster.Client.List(ctx, pods, client.InNamespace(utils.SystemNamespace),
		client.MatchingLabels{"app.kubernetes.io/component": "manager"}); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 || len(pods.Items[0].Status.ContainerStatuses) != 1 {
		t.Fatalf("%d manager pods, want one with one container", len(pods.Items))
	}
	return pods.Items[0]
}

// killContainer sends SIGKILL to every process of the pod's first container.
func killContainer(t *testing.T, pod corev1.Pod) {
	t.Helper()
	for _, pid := range containerPIDs(t, pod) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 %d: %v", pid, err)
		}
	}
}

// containerPIDs are the processes of the pod's first container, found through the container's
// cgroup on its node (the kubelet's cgroupfs layout under the node's cgroup, hack/kube-node.sh).
func containerPIDs(t *testing.T, pod corev1.Pod) []int {
	t.Helper()
	id, ok := strings.CutPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if !ok {
		t.Fatalf("container ID %q", pod.Status.ContainerStatuses[0].ContainerID)
	}
	var procs []string
	for _, pattern := range []string{"kubepods/*/pod*/", "kubepods/pod*/"} {
		found, err := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids", "kubenova-"+pod.Spec.NodeName, pattern, id, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, found...)
	}
	if len(procs) != 1 {
		t.Fatalf("the cgroup of container %s on %s: %v", id, pod.Spec.NodeName, procs)
	}
	b, err := os.ReadFile(procs[0])
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, p := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(p)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if len(pids) == 0 {
		t.Fatalf("no process in %s", procs[0])
	}
	return pids
}
