package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// The manager's and the agents' metrics, scraped as Prometheus does: over HTTPS with the token
// of a service account bound to kubenova-metrics-reader.
var _ = Describe("Metrics", Ordered, disruptive, func() {
	inNamespace("metrics")
	const name = "measured"
	var token string

	// scrape reads an endpoint; g is the Gomega of an Eventually, so that a failed scrape is
	// tried again.
	scrape := func(ctx context.Context, g Gomega, endpoint string) map[string]*dto.MetricFamily {
		code, families, err := utils.Scrape(ctx, endpoint, token)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(http.StatusOK))
		return families
	}
	manager := func(ctx context.Context, g Gomega) map[string]*dto.MetricFamily {
		return scrape(ctx, g, cluster.ManagerMetrics)
	}
	agent := func(ctx context.Context, g Gomega, node string) map[string]*dto.MetricFamily {
		return scrape(ctx, g, host(node).Metrics)
	}

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		var err error
		token, err = cluster.MetricsScraperToken(ctx)
		Expect(err).NotTo(HaveOccurred())
	})

	It("tells nothing to a caller without the metrics-reader role", func(ctx SpecContext) {
		agentToken, err := cluster.ServiceAccountToken(ctx, "kubenova-agent", nil)
		Expect(err).NotTo(HaveOccurred())
		for _, endpoint := range []string{cluster.ManagerMetrics, host("host-1").Metrics} {
			// A Serial spec before this one may have just restarted the process: its listener
			// opens moments after it starts.
			Eventually(func(g Gomega) {
				code, _, err := utils.Scrape(ctx, endpoint, "")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(code).To(Equal(http.StatusUnauthorized), endpoint)
				code, _, err = utils.Scrape(ctx, endpoint, agentToken)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(code).To(Equal(http.StatusForbidden), endpoint)
			}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		}
	})

	It("counts a launch, a refused placement and a live migration as they happen", func(ctx SpecContext) {
		before := manager(ctx, Default)
		agentBefore := agent(ctx, Default, "host-1")
		launches := utils.Sum(before, "kubenova_operation_duration_seconds", map[string]string{"operation": "Launch", "outcome": "Succeeded"})
		moves := utils.Sum(before, "kubenova_operation_duration_seconds", map[string]string{"operation": "LiveMigrate", "outcome": "Succeeded"})
		downtimes := utils.Sum(before, "kubenova_live_migration_downtime_seconds", nil)
		refusals := utils.Sum(before, "kubenova_scheduling_failures_total", map[string]string{"filter": "NodeSelectorFilter"})
		reconciles := utils.Sum(before, "controller_runtime_reconcile_total", map[string]string{"controller": "instance"})
		spawns := utils.Sum(agentBefore, "kubenova_driver_calls_total", map[string]string{"method": "Spawn"})
		writes := utils.Sum(before, "kubenova_status_writes_total", map[string]string{"kind": "Instance", "result": "Written"})

		By("launching on host-1")
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: "+name, 1)
		manifest = strings.Replace(manifest, "spec:\n", "spec:\n  nodeSelector:\n    kubernetes.io/hostname: host-1\n", 1)
		path := writeManifest(name+".yaml", manifest)
		out, err := kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		DeferCleanup(func(ctx SpecContext) {
			out, err := kubectl(ctx, "delete", "instance", name, name+"-nowhere", "--ignore-not-found", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}, NodeTimeout(2*time.Minute))
		expectInstance(ctx, name, settled(v1.VMStateActive))
		Eventually(func(g Gomega) {
			after := manager(ctx, g)
			g.Expect(utils.Sum(after, "kubenova_operation_duration_seconds", map[string]string{"operation": "Launch", "outcome": "Succeeded"})).
				To(Equal(launches + 1))
			g.Expect(utils.Sum(after, "kubenova_instances", map[string]string{"vm_state": "Active", "node": "host-1"})).To(BeNumerically(">=", 1))
			g.Expect(utils.Sum(after, "controller_runtime_reconcile_total", map[string]string{"controller": "instance"})).To(BeNumerically(">", reconciles))
			g.Expect(utils.Sum(after, "kubenova_status_writes_total", map[string]string{"kind": "Instance", "result": "Written"})).To(BeNumerically(">", writes))
			// A spawn repeated after a lost race counts again: at least one.
			g.Expect(utils.Sum(agent(ctx, g, "host-1"), "kubenova_driver_calls_total", map[string]string{"method": "Spawn"})).To(BeNumerically(">", spawns))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())

		By("asking for a node that does not exist")
		nowhere := strings.Replace(manifest, "name: "+name, "name: "+name+"-nowhere", 1)
		nowhere = strings.Replace(nowhere, "kubernetes.io/hostname: host-1", "kubernetes.io/hostname: nowhere", 1)
		path = writeManifest(name+"-nowhere.yaml", nowhere)
		out, err = kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		Eventually(func(g Gomega) float64 {
			return utils.Sum(manager(ctx, g), "kubenova_scheduling_failures_total", map[string]string{"filter": "NodeSelectorFilter"})
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(BeNumerically(">", refusals))

		By("moving it live to host-2")
		// The node selector pinned the launch; the move names its target.
		patchSpec(ctx, name, `{"spec":{"nodeSelector":null}}`)
		out, err = kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--live", "--node", "host-2", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		var after map[string]*dto.MetricFamily
		Eventually(func(g Gomega) {
			after = manager(ctx, g)
			g.Expect(utils.Sum(after, "kubenova_operation_duration_seconds", map[string]string{"operation": "LiveMigrate", "outcome": "Succeeded"})).
				To(Equal(moves + 1))
			g.Expect(utils.Sum(after, "kubenova_live_migration_downtime_seconds", nil)).To(Equal(downtimes + 1))
			g.Expect(utils.Sum(after, "kubenova_migrations_total", map[string]string{"type": "Live", "outcome": "Succeeded"})).To(BeNumerically(">=", 1))
			g.Expect(utils.Sum(after, "kubenova_instances", map[string]string{"vm_state": "Active", "node": "host-2"})).To(BeNumerically(">=", 1))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		GinkgoWriter.Printf("kubenova's own series on the manager after the launch and the move:\n%s", kubenovaSeries(after))

		By("finding the move in host-1's agent log, told with the instance and the operation")
		b, err := os.ReadFile(filepath.Join(cluster.WorkDir, "logs", "agent-host-1.log"))
		Expect(err).NotTo(HaveOccurred())
		var told map[string]any
		for _, line := range strings.Split(string(b), "\n") {
			var entry map[string]any
			if json.Unmarshal([]byte(line), &entry) == nil && entry["msg"] == "live-migrating" && entry["name"] == name {
				told = entry
			}
		}
		Expect(told).NotTo(BeNil(), "a structured line about the move")
		Expect(told).To(HaveKeyWithValue("namespace", ns))
		Expect(told).To(HaveKeyWithValue("operation", "LiveMigrate"))
		GinkgoWriter.Printf("and on host-1's agent:\n%s", kubenovaSeries(agent(ctx, Default, "host-1")))
	}, NodeTimeout(6*time.Minute))
})

// kubenovaSeries prints the kubenova_* families in the exposition format, for the record.
func kubenovaSeries(families map[string]*dto.MetricFamily) string {
	names := make([]string, 0, len(families))
	for n := range families {
		if strings.HasPrefix(n, "kubenova_") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		_, _ = expfmt.MetricFamilyToText(&b, families[n])
	}
	return b.String()
}
