// Package e2e runs kubenova for real: kube-apiserver and etcd, the manager binary, and one agent
// binary per libvirt host, each host its own libvirtd in its own namespaces, booting the tiny
// test guest under QEMU.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

var cluster *utils.Cluster

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	// Suite-wide patience: a TCG guest on a busy 2-core machine is slow, and Gomega's own
	// default (1 s) would make every unqualified Eventually a coin toss.
	SetDefaultEventuallyTimeout(60 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	SetDefaultConsistentlyDuration(3 * time.Second)
	SetDefaultConsistentlyPollingInterval(100 * time.Millisecond)
	// Ginkgo prints the run's "Random Seed", which decides the order of the containers; a
	// failure is replayed with ginkgo --seed=N (README, "The e2e suite").
	RunSpecs(t, "kubenova e2e")
}

// clusterPerProcess: every ginkgo process starts a cluster of its own instead of sharing the
// first one's. hack/e2e.sh runs the disruptive containers so, two processes side by side: a
// container then has a cluster to itself and need not be Serial (helpers_test.go).
var clusterPerProcess = os.Getenv("KUBENOVA_E2E_CLUSTER_PER_PROCESS") == "1"

// The first process starts the cluster and hands its description to the others (ginkgo -p):
// one control plane, one manager and one agent per host for the whole run. Specs that stop,
// kill or restart any of these processes, change the manager's flags or read cluster-wide
// totals are disruptive (helpers_test.go): Serial, and run by hack/e2e.sh on clusters of their
// own.
var _ = SynchronizedBeforeSuite(func(ctx SpecContext) []byte {
	if clusterPerProcess {
		return nil
	}
	startSuiteCluster(ctx, suiteWorkDir())
	description, err := cluster.Describe()
	Expect(err).NotTo(HaveOccurred())
	return description
}, func(ctx SpecContext, description []byte) {
	if clusterPerProcess {
		startSuiteCluster(ctx, filepath.Join(suiteWorkDir(), fmt.Sprintf("p%d", GinkgoParallelProcess())))
		return
	}
	if cluster != nil {
		return // the first process started it
	}
	var err error
	cluster, err = utils.AttachCluster(description)
	Expect(err).NotTo(HaveOccurred())
}, NodeTimeout(4*time.Minute))

var _ = SynchronizedAfterSuite(func() {
	if clusterPerProcess && cluster != nil {
		cluster.Stop()
	}
}, func() {
	if !clusterPerProcess && cluster != nil {
		cluster.Stop()
	}
})

// suiteWorkDir is where the suite's cluster keeps its state: KUBENOVA_WORK_DIR.
func suiteWorkDir() string {
	if dir := os.Getenv("KUBENOVA_WORK_DIR"); dir != "" {
		return dir
	}
	return filepath.Join(os.TempDir(), "kubenova-e2e")
}

// startSuiteCluster starts the suite's cluster in workDir, waits for every hypervisor and makes
// the cloud's flavors.
func startSuiteCluster(ctx SpecContext, workDir string) {
	Expect(os.RemoveAll(filepath.Join(workDir, "hosts"))).To(Succeed())
	start := time.Now()
	var err error
	// host-1 and host-2 share their storage root, as two nodes that mount one NFS export do;
	// host-3 keeps its own: live migrations and evacuations of both kinds can run.
	cluster, err = utils.StartCluster(context.Background(), workDir, hostCount, utils.WithSharedStorage(2))
	Expect(err).NotTo(HaveOccurred())
	GinkgoWriter.Printf("cluster with %d hosts started in %s (work dir %s)\n", hostCount, time.Since(start).Round(time.Millisecond), workDir)

	// Every spec starts from a cluster whose agents have reported: a fresh libvirtd probes
	// QEMU's capabilities for several seconds before its first answer.
	expectHypervisorsUp(ctx)
	GinkgoWriter.Printf("every hypervisor up %s after the start\n", time.Since(start).Round(time.Millisecond))
	// The flavors are the cloud's, shared by every container: made once here, so that no two
	// processes race to create them.
	applySample(ctx, "flavors.yaml")
}

// Dump the processes' logs when a spec fails, so CI output says why.
var _ = ReportAfterEach(func(report SpecReport) {
	if !report.Failed() || cluster == nil {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(cluster.WorkDir, "logs", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		GinkgoWriter.Printf("==== %s (tail)\n%s\n", l, b)
	}
})

// hostCount is how many libvirt hosts the suite's cluster has.
const hostCount = 3

// expectHypervisorsUp waits until every host's agent has reported and renews its lease.
func expectHypervisorsUp(ctx context.Context) {
	Eventually(func(g Gomega) {
		var hvs v1.HypervisorList
		g.Expect(cluster.Client.List(ctx, &hvs)).To(Succeed())
		g.Expect(hvs.Items).To(HaveLen(hostCount))
		for _, hv := range hvs.Items {
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorUp), hv.Name)
			g.Expect(hv.Status.VirtType).To(Equal(v1.VirtTypeQEMU))
			g.Expect(hv.Status.Capacity.VCPUs).To(BeNumerically(">", 0))
			g.Expect(hv.Status.LibvirtVersion).NotTo(BeEmpty())
			g.Expect(hv.Status.HostUUID).NotTo(BeEmpty())
			g.Expect(hv.Status.Reserved.MemoryMiB).To(Equal(int64(512)), "the agent's default reserved_host_memory_mb")
		}
		uuids := map[string]bool{}
		for _, hv := range hvs.Items {
			uuids[hv.Status.HostUUID] = true
		}
		g.Expect(uuids).To(HaveLen(hostCount), "each host has its own libvirt host UUID")
		g.Expect(hvs.Items[0].Status.StorageID).To(Equal(hvs.Items[1].Status.StorageID), "host-1 and host-2 share their storage")
		g.Expect(hvs.Items[0].Status.StorageShared).To(BeTrue())
		g.Expect(hvs.Items[2].Status.StorageID).NotTo(Equal(hvs.Items[0].Status.StorageID), "host-3 keeps its own")
		g.Expect(hvs.Items[2].Status.StorageShared).To(BeFalse())
	}).WithContext(ctx).WithTimeout(90 * time.Second).Should(Succeed())
}
