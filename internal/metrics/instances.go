package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var instancesDesc = prometheus.NewDesc("kubenova_instances",
	"Instances by vm state, task state and node (the node empty while an instance has none).",
	[]string{"vm_state", "task_state", "node"}, nil)

// InstanceCollector counts the instances in the manager's cache at each scrape: a gauge that
// cannot drift from the objects, whatever process wrote them.
type InstanceCollector struct {
	Reader client.Reader
	// Elected closes once this manager leads; until then it reports nothing, so that the
	// replicas of a highly available manager do not count each instance once each.
	Elected <-chan struct{}
}

// Describe implements prometheus.Collector.
func (c *InstanceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- instancesDesc }

// Collect implements prometheus.Collector. A cache that cannot list (not yet synced) yields no
// series rather than failing the whole scrape.
func (c *InstanceCollector) Collect(ch chan<- prometheus.Metric) {
	if c.Elected != nil {
		select {
		case <-c.Elected:
		default:
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var list v1.InstanceList
	if err := c.Reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return
	}
	type key struct{ vmState, taskState, node string }
	counts := map[key]int{}
	for i := range list.Items {
		st := &list.Items[i].Status
		counts[key{string(st.VMState), string(st.TaskState), st.NodeName}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), k.vmState, k.taskState, k.node)
	}
}
