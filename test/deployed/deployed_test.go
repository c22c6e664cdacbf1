// Package deployed tests kubenova as a cluster administrator installs it: the images `make
// images` assembles, imported into real nodes' containerd; `make deploy`'s manifests
// (config/default, through an overlay that sets only images and test flags); and a kubelet that
// runs the manager and the agents, mounts their host paths, projects their tokens and calls
// their probes. Each node is a libvirt host too, so a deployed agent drives its node's own
// libvirtd (hack/kube-node.sh, utils.StartDeployedCluster).
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

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/test/utils"
)

// nodes is how many real nodes the cluster has: two, for the DaemonSet's spread and moves.
const nodes = 2

var (
	cluster *utils.Cluster
	// images are make images' tarballs: the manager, the agent and the pause image.
	images = map[string]string{}
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	workDir := os.Getenv("DEPLOYED_WORK_DIR")
	if workDir == "" {
		fmt.Fprintln(os.Stderr, "DEPLOYED_WORK_DIR is not set (make test-deployed sets it)")
		return 1
	}
	imageDir := filepath.Join(utils.BinDir(), "images")
	for _, name := range []string{"manager", "agent", "pause"} {
		images[name] = filepath.Join(imageDir, name+".tar")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	started := time.Now()
	var err error
	cluster, err = utils.StartDeployedCluster(ctx, workDir, nodes,
		[]string{images["pause"], images["manager"], images["agent"]})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the deployed cluster:", err)
		return 1
	}
	fmt.Printf("deployed profile: %d real nodes Ready in %s\n", nodes, time.Since(started).Round(time.Second))
	code := m.Run()
	if os.Getenv("DEPLOYED_KEEP") != "" {
		return code
	}
	cluster.Stop()
	// What the kubelets, containerd, CNI and kube-proxy changed on the machine is undone.
	if left := leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "the stopped cluster left behind: %s\n", strings.Join(left, "; "))
		return 1
	}
	return code
}

// leftovers lists what a stopped deployed cluster must not leave on the machine: processes
// in the nodes' cgroups (the cgroups themselves), the pods' bridges, and iptables chains.
func leftovers() []string {
	var left []string
	cgroups, err := filepath.Glob("/sys/fs/cgroup/*/kubenova-host-*")
	if err != nil {
		left = append(left, err.Error())
	}
	left = append(left, cgroups...)
	bridges, err := filepath.Glob("/sys/class/net/kncni*")
	if err != nil {
		left = append(left, err.Error())
	}
	left = append(left, bridges...)
	for _, ipt := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(ipt).Output()
		if err != nil {
			left = append(left, fmt.Sprintf("%s: %v", ipt, err))
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "KUBE-") {
				left = append(left, ipt+": "+line)
			}
		}
	}
	return left
}

// tagOf is the tag an image tarball carries.
func tagOf(t *testing.T, name string) string {
	t.Helper()
	tag, err := utils.ImageTag(images[name])
	if err != nil {
		t.Fatal(err)
	}
	return tag
}

// eventually retries check every 500 ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond) // polling the API server
	}
}

// The tests run in order: TestDeploy installs what the others look at.

// make deploy's manifests on real nodes: the agents (one per compute node) and the manager
// become Ready through their probes, called by the kubelet.
func TestDeploy(t *testing.T) {
	ctx := context.Background()
	started := time.Now()
	if err := cluster.Deploy(ctx, tagOf(t, "manager"), tagOf(t, "agent"), tagOf(t, "pause")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "the agents' DaemonSet ready on every node", func() error {
		ds := &appsv1.DaemonSet{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: utils.SystemNamespace, Name: "kubenova-agent"}, ds); err != nil {
			return err
		}
		if ds.Status.NumberReady != nodes || ds.Status.DesiredNumberScheduled != nodes {
			return fmt.Errorf("%d of %d scheduled, %d ready", ds.Status.DesiredNumberScheduled, nodes, ds.Status.NumberReady)
		}
		return nil
	})
	eventually(t, 3*time.Minute, "the manager's Deployment available", func() error {
		d := &appsv1.Deployment{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: utils.SystemNamespace, Name: "kubenova-manager"}, d); err != nil {
			return err
		}
		if d.Status.AvailableReplicas != 1 {
			return fmt.Errorf("%d available", d.Status.AvailableReplicas)
		}
		return nil
	})
	t.Logf("make deploy to every pod Ready: %s", time.Since(started).Round(time.Second))

	// Each agent pod runs on its own node, with the node's name, and its container became
	// ready only by its probe (a container with a readiness probe starts not ready).
	pods := agentPods(ctx, t)
	seen := map[string]bool{}
	for _, p := range pods {
		seen[p.Spec.NodeName] = true
		if !podReady(&p) {
			t.Errorf("agent pod %s on %s is not Ready", p.Name, p.Spec.NodeName)
		}
		if p.Spec.Containers[0].ReadinessProbe == nil {
			t.Errorf("agent pod %s has no readiness probe: nothing proves the kubelet called one", p.Name)
		}
	}
	for _, n := range cluster.Nodes {
		if !seen[n.Name] {
			t.Errorf("no agent pod on node %s (pods: %v)", n.Name, seen)
		}
	}
}

// Each deployed agent drives its own node's libvirtd, reached through the hostPath socket:
// the Hypervisor it writes names that libvirtd's host UUID (each host has its own, in its
// libvirtd.conf).
func TestEachAgentReachesItsNodesLibvirtd(t *testing.T) {
	ctx := context.Background()
	for _, n := range cluster.Nodes {
		want, err := os.ReadFile(filepath.Join(cluster.WorkDir, "hosts", n.Name, "host-uuid"))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "Hypervisor "+n.Name+" reported by its deployed agent", func() error {
			hv := &v1.Hypervisor{}
			if err := cluster.Client.Get(ctx, client.ObjectKey{Name: n.Name}, hv); err != nil {
				return err
			}
			if got := hv.Status.HostUUID; got != strings.TrimSpace(string(want)) {
				return fmt.Errorf("host UUID %q, want %q (that host's libvirtd)", got, strings.TrimSpace(string(want)))
			}
			// --virt-type is auto in config/agent: this machine is a virtual machine, so TCG.
			if hv.Status.VirtType != v1.VirtTypeQEMU || !strings.Contains(hv.Status.VirtTypeReason, "virtual machine") {
				return fmt.Errorf("virt type %q (%q), want qemu because the node is a virtual machine", hv.Status.VirtType, hv.Status.VirtTypeReason)
			}
			return nil
		})
		eventually(t, time.Minute, "Event "+agent.ReasonVirtTypeChosen+" on Hypervisor "+n.Name, func() error {
			list := &eventsv1.EventList{}
			if err := cluster.Client.List(ctx, list); err != nil {
				return err
			}
			for _, e := range list.Items {
				if e.Regarding.Kind == "Hypervisor" && e.Regarding.Name == n.Name && e.Reason == agent.ReasonVirtTypeChosen {
					return nil
				}
			}
			return fmt.Errorf("none among %d Events", len(list.Items))
		})
	}
}

// The agent's readiness is its libvirtd's: with the daemon down the kubelet's probe takes the
// pod out of Ready, and back in once the daemon answers again.
func TestAnAgentIsNotReadyWhileItsLibvirtdIsDown(t *testing.T) {
	ctx := context.Background()
	node := cluster.Nodes[len(cluster.Nodes)-1]
	if err := cluster.KillHost(ctx, node.Host); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "agent on "+node.Name+" not Ready while its libvirtd is down", func() error {
		for _, p := range agentPods(ctx, t) {
			if p.Spec.NodeName == node.Name && podReady(&p) {
				return fmt.Errorf("pod %s still Ready", p.Name)
			}
		}
		return nil
	})
	if err := cluster.StartHost(ctx, node.Host); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "agent on "+node.Name+" Ready again", func() error {
		for _, p := range agentPods(ctx, t) {
			if p.Spec.NodeName == node.Name && !podReady(&p) {
				return fmt.Errorf("pod %s not Ready", p.Name)
			}
		}
		return nil
	})
}

func agentPods(ctx context.Context, t *testing.T) []corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	if err := cluster.Client.List(ctx, pods, client.InNamespace(utils.SystemNamespace),
		client.MatchingLabels{"app.kubernetes.io/component": "agent"}); err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
