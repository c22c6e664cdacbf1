// Package scale checks kubenova's control plane against a simulated fleet: the real manager and
// kube-apiserver, and one agent process simulating several nodes (--driver=fake
// --simulate-nodes). It holds kubenova to its write budget: what test/bench/scale measures at
// a thousand instances, this checks at fifty on every CI run.
package scale

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

const (
	nodes     = 5
	instances = 50
	// writeBudget is what a launch may cost in kubenova's writes to the Instance: the manager's
	// placement, the agent's report, the manager's Active (docs/design.md, "API writes and
	// scale"). The finalizer comes with the user's create.
	writeBudget = 3
)

func TestSimulatedFleetLaunchesWithinTheWriteBudget(t *testing.T) {
	g := gomega.NewWithT(t)
	ctx := context.Background()
	workDir := filepath.Join(os.TempDir(), "kubenova-scale-test")
	_ = os.RemoveAll(workDir)
	g.Expect(os.MkdirAll(workDir, 0o755)).To(gomega.Succeed())
	auditLog := filepath.Join(workDir, "audit.log")
	cluster, err := utils.StartSimulatedCluster(ctx, workDir, nodes, utils.WithAuditLog(auditLog))
	g.Expect(err).NotTo(gomega.HaveOccurred())
	t.Cleanup(cluster.Stop)
	c := cluster.Client

	g.Expect(c.Create(ctx, &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: "m1.tiny"},
		Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 256, DiskGiB: 1}})).To(gomega.Succeed())
	g.Expect(cluster.CreateTinyImage(ctx, "default", "img")).To(gomega.Succeed())

	// Every simulated node registers: its Node (made by the simulator, as a kubelet would), its
	// Hypervisor with the simulated capacity, and a heartbeat that makes it Up.
	g.Eventually(func(g gomega.Gomega) {
		for i := 1; i <= nodes; i++ {
			name := fmt.Sprintf("%s-%03d", utils.SimulatedNodePrefix, i)
			hv := &v1.Hypervisor{}
			g.Expect(c.Get(ctx, types.NamespacedName{Name: name}, hv)).To(gomega.Succeed())
			g.Expect(hv.Status.State).To(gomega.Equal(v1.HypervisorUp), name)
			g.Expect(hv.Status.Capacity.VCPUs).To(gomega.BeNumerically(">", 0), name)
		}
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(gomega.Succeed())

	_, offset, err := benchutil.ReadWrites(auditLog, 0)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	for i := range instances {
		g.Expect(c.Create(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("sim-%02d", i)},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "img"}}})).To(gomega.Succeed())
	}
	perNode := map[string]int{}
	g.Eventually(func(g gomega.Gomega) {
		var list v1.InstanceList
		g.Expect(c.List(ctx, &list)).To(gomega.Succeed())
		g.Expect(list.Items).To(gomega.HaveLen(instances))
		clear(perNode)
		for _, inst := range list.Items {
			g.Expect(inst.Status.VMState).To(gomega.Equal(v1.VMStateActive), inst.Name)
			g.Expect(inst.Status.PowerState).To(gomega.Equal(v1.PowerStateRunning), inst.Name)
			perNode[inst.Status.NodeName]++
		}
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(gomega.Succeed())
	// RAM spread: the equal nodes take equal shares.
	g.Expect(perNode).To(gomega.HaveLen(nodes))
	for node, n := range perNode {
		g.Expect(n).To(gomega.Equal(instances/nodes), node)
	}

	writes, _, err := benchutil.ReadWritesSettled(auditLog, offset)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(writes.Total(benchutil.InstanceWrites)).To(gomega.BeNumerically("<=", writeBudget*instances),
		"kubenova's writes to the instances:\n%v", writes)
	// Every launch was written to by both: the manager placed it and the agent reported.
	g.Expect(writes[benchutil.WriteKey{Client: "agent", Kind: "status", Resource: "instances"}]).To(gomega.BeNumerically(">=", instances))
	g.Expect(writes[benchutil.WriteKey{Client: "manager", Kind: "status", Resource: "instances"}]).To(gomega.BeNumerically(">=", 2*instances))
	g.Expect(writes[benchutil.WriteKey{Client: "manager", Kind: "update", Resource: "instances"}]).To(gomega.BeZero(),
		"the finalizer comes with the create (config/admission/instance-finalizer.yaml)")
	// An agent does not write over a version it knows it replaced (before it did, after most
	// spawns: one refused write per launch); a race with the manager may still happen.
	g.Expect(writes[benchutil.WriteKey{Client: "agent", Kind: "status/409", Resource: "instances"}]).To(gomega.BeNumerically("<=", instances/10),
		"refused agent writes:\n%v", writes)

	// Delete them all: each simulated agent destroys its fake domains, and the records go.
	g.Expect(c.DeleteAllOf(ctx, &v1.Instance{}, client.InNamespace("default"))).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		var list v1.InstanceList
		g.Expect(c.List(ctx, &list)).To(gomega.Succeed())
		g.Expect(list.Items).To(gomega.BeEmpty())
	}).WithTimeout(2 * time.Minute).WithPolling(200 * time.Millisecond).Should(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		hv := &v1.Hypervisor{}
		g.Expect(c.Get(ctx, types.NamespacedName{Name: utils.SimulatedNodePrefix + "-001"}, hv)).To(gomega.Succeed())
		g.Expect(hv.Status.Instances).To(gomega.BeZero())
	}).WithTimeout(30 * time.Second).Should(gomega.Succeed())
	// The agents removed the files of the deleted instances.
	entries, err := os.ReadDir(filepath.Join(workDir, "simulated", utils.SimulatedNodePrefix+"-001", "instances"))
	if !os.IsNotExist(err) {
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(entries).To(gomega.BeEmpty())
	}
}
