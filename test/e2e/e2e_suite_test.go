// Package e2e runs kubenova for real: kube-apiserver and etcd, the manager binary, and one agent
// binary per libvirt host, each host its own libvirtd in its own namespaces, booting the tiny
// test guest under QEMU.
package e2e

import (
	"context"
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
	RunSpecs(t, "kubenova e2e")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	workDir := os.Getenv("KUBENOVA_WORK_DIR")
	if workDir == "" {
		workDir = filepath.Join(os.TempDir(), "kubenova-e2e")
	}
	Expect(os.RemoveAll(filepath.Join(workDir, "hosts"))).To(Succeed())
	start := time.Now()
	var err error
	cluster, err = utils.StartCluster(context.Background(), workDir, 2)
	Expect(err).NotTo(HaveOccurred())
	GinkgoWriter.Printf("cluster with 2 hosts started in %s (work dir %s)\n", time.Since(start).Round(time.Millisecond), workDir)

	// Every spec starts from a cluster whose agents have reported: a fresh libvirtd probes
	// QEMU's capabilities for several seconds before its first answer.
	expectHypervisorsUp(ctx)
	GinkgoWriter.Printf("both hypervisors up %s after the start\n", time.Since(start).Round(time.Millisecond))
}, NodeTimeout(4*time.Minute))

var _ = AfterSuite(func() {
	if cluster != nil {
		cluster.Stop()
	}
})

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

// expectHypervisorsUp waits until both hosts' agents have reported and renew their leases.
func expectHypervisorsUp(ctx context.Context) {
	Eventually(func(g Gomega) {
		var hvs v1.HypervisorList
		g.Expect(cluster.Client.List(ctx, &hvs)).To(Succeed())
		g.Expect(hvs.Items).To(HaveLen(2))
		for _, hv := range hvs.Items {
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorUp), hv.Name)
			g.Expect(hv.Status.VirtType).To(Equal(v1.VirtTypeQEMU))
			g.Expect(hv.Status.Capacity.VCPUs).To(BeNumerically(">", 0))
			g.Expect(hv.Status.LibvirtVersion).NotTo(BeEmpty())
			g.Expect(hv.Status.HostUUID).NotTo(BeEmpty())
			g.Expect(hv.Status.Reserved.MemoryMiB).To(Equal(int64(512)), "the agent's default reserved_host_memory_mb")
		}
		g.Expect(hvs.Items[0].Status.HostUUID).NotTo(Equal(hvs.Items[1].Status.HostUUID), "each host has its own libvirt host UUID")
	}).WithContext(ctx).WithTimeout(90 * time.Second).Should(Succeed())
}
