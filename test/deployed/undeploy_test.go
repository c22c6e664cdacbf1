package deployed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/test/utils"
)

// These run after TestAnInstanceBootsOnARealNode, on its instance.

// guestOf is the running instance the earlier test booted, its node, and its QEMU's pid.
func guestOf(ctx context.Context, t *testing.T) (*v1.Instance, utils.DeployedNode, string) {
	t.Helper()
	inst := &v1.Instance{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "on-a-real-node"}, inst); err != nil {
		t.Fatalf("the instance TestAnInstanceBootsOnARealNode made: %v", err)
	}
	for _, n := range cluster.Nodes {
		if n.Name == inst.Status.NodeName {
			pid, err := os.ReadFile(filepath.Join(cluster.WorkDir, "hosts", n.Name, "run", "qemu", agent.DomainName(inst.UID)+".pid"))
			if err != nil {
				t.Fatal(err)
			}
			return inst, n, strings.TrimSpace(string(pid))
		}
	}
	t.Fatalf("instance on %q, no node of the cluster", inst.Status.NodeName)
	return nil, utils.DeployedNode{}, ""
}

// stillTheSameGuest: the instance is Active, its QEMU is the same process, and the guest
// booted once (nothing restarted it).
func stillTheSameGuest(ctx context.Context, t *testing.T, node utils.DeployedNode, uid, pid string) {
	t.Helper()
	inst := &v1.Instance{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: "on-a-real-node"}, inst); err != nil {
		t.Fatal(err)
	}
	if inst.DeletionTimestamp != nil || inst.Status.VMState != v1.VMStateActive || string(inst.UID) != uid {
		t.Errorf("instance: uid %s, vm state %q, deleting %v; want the same one, Active", inst.UID, inst.Status.VMState, inst.DeletionTimestamp)
	}
	if _, err := os.Stat(filepath.Join("/proc", pid)); err != nil {
		t.Errorf("QEMU %s is gone: %v", pid, err)
	}
	if out, err := node.Virsh(ctx, "domstate", uid); err != nil || strings.TrimSpace(out) != "running" {
		t.Errorf("virsh domstate on %s: %q, %v; want running", node.Name, out, err)
	}
	log := filepath.Join(cluster.WorkDir, "hosts", node.Name, "storage", "instances", uid, "console.log")
	c, err := utils.ReadConsole(log)
	if err != nil || c.Boots() != 1 {
		t.Errorf("console %s: %d boots, %v; want the one boot", log, c.Boots(), err)
	}
}

// pauseAndUnpause has the instance paused and running again: only the agent now running can do
// it, so it is the proof that the agent took the guest over (an agent that adopts a guest in the
// state its spec asks writes nothing). virsh confirms each state on the node.
func pauseAndUnpause(ctx context.Context, t *testing.T, node utils.DeployedNode, name, uid string) {
	t.Helper()
	for _, step := range []struct {
		ask   v1.DesiredPowerState
		state v1.VMState
		virsh string
	}{{v1.DesiredPaused, v1.VMStatePaused, "paused"}, {v1.DesiredRunning, v1.VMStateActive, "running"}} {
		inst := &v1.Instance{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, inst); err != nil {
			t.Fatal(err)
		}
		orig := inst.DeepCopy()
		inst.Spec.PowerState = step.ask
		if err := cluster.Client.Patch(ctx, inst, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
		eventually(t, 2*time.Minute, fmt.Sprintf("instance %s, virsh %s", step.state, step.virsh), func() error {
			if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
				return err
			}
			out, err := node.Virsh(ctx, "domstate", uid)
			if err != nil || strings.TrimSpace(out) != step.virsh || inst.Status.VMState != step.state || inst.Status.TaskState != "" {
				return fmt.Errorf("vm state %q, task %q, virsh %q (%v)", inst.Status.VMState, inst.Status.TaskState, out, err)
			}
			return nil
		})
	}
}

// kubectl delete pod of the agent whose node runs the guest: the DaemonSet's new pod takes the
// guest over; the guest runs on, untouched.
func TestAnAgentPodReplacedAdoptsItsGuest(t *testing.T) {
	ctx := context.Background()
	inst, node, pid := guestOf(ctx, t)
	var old corev1.Pod
	for _, p := range agentPods(ctx, t) {
		if p.Spec.NodeName == node.Name {
			old = p
		}
	}
	if old.Name == "" {
		t.Fatalf("no agent pod on %s", node.Name)
	}
	if out, err := cluster.KubectlWith(ctx, cluster.AdminKubeconfig, "-n", utils.SystemNamespace, "delete", "pod", old.Name); err != nil {
		t.Fatalf("kubectl delete pod %s: %v: %s", old.Name, err, out)
	}
	eventually(t, 2*time.Minute, "a new agent pod Ready on "+node.Name, func() error {
		for _, p := range agentPods(ctx, t) {
			if p.Spec.NodeName == node.Name && p.UID != old.UID && podReady(&p) {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	pauseAndUnpause(ctx, t, node, inst.Name, string(inst.UID))
	stillTheSameGuest(ctx, t, node, string(inst.UID), pid)
}

// make undeploy removes kubenova but leaves users' instances: the objects (the CRDs stay),
// their guests running, their disks. Deployed again, the agents take the guests over.
func TestUndeployLeavesInstancesAndARedeployTakesThemOver(t *testing.T) {
	ctx := context.Background()
	inst, node, pid := guestOf(ctx, t)
	disk := filepath.Join(cluster.WorkDir, "hosts", node.Name, "storage", "instances", string(inst.UID), "disk")
	undeploy := exec.CommandContext(ctx, "make", "-C", utils.RepoRoot(), "undeploy")
	undeploy.Env = append(os.Environ(), "KUBECONFIG="+cluster.AdminKubeconfig)
	if out, err := undeploy.CombinedOutput(); err != nil {
		t.Fatalf("make undeploy: %v: %s", err, out)
	}
	eventually(t, 2*time.Minute, "kubenova's namespace gone", func() error {
		ns := &corev1.Namespace{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Name: utils.SystemNamespace}, ns); !apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %s: %v", utils.SystemNamespace, err)
		}
		return nil
	})
	if out, err := cluster.KubectlWith(ctx, cluster.AdminKubeconfig, "get", "crd", "instances.compute.kubenova.io"); err != nil {
		t.Errorf("the Instance CRD after make undeploy: %v: %s", err, out)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Errorf("the instance's disk after make undeploy: %v", err)
	}
	stillTheSameGuest(ctx, t, node, string(inst.UID), pid)
	// undeploy-crds refuses without the words, and while an Instance is left.
	for _, args := range [][]string{{"undeploy-crds"}, {"undeploy-crds", "CONFIRM=delete-every-kubenova-object"}} {
		cmd := exec.CommandContext(ctx, "make", append([]string{"-C", utils.RepoRoot()}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+cluster.AdminKubeconfig)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("make %s deleted the CRDs with an Instance left: %s", strings.Join(args, " "), out)
		}
	}

	if err := cluster.Deploy(ctx, tagOf(t, "manager"), tagOf(t, "agent"), tagOf(t, "pause")); err != nil {
		t.Fatal(err)
	}
	pauseAndUnpause(ctx, t, node, inst.Name, string(inst.UID))
	stillTheSameGuest(ctx, t, node, string(inst.UID), pid)
}
