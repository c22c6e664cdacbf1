package utils

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// MetricsScraper is the service account that scrapes kubenova's metrics in the tests, bound to
// the ClusterRole kubenova-metrics-reader as a Prometheus would be.
const MetricsScraper = "metrics-scraper"

// MetricsScraperToken makes the scraper's service account and binding (once) and returns a
// token of it.
func (c *Cluster) MetricsScraperToken(ctx context.Context) (string, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: SystemNamespace, Name: MetricsScraper}}
	if err := client.IgnoreAlreadyExists(c.Client.Create(ctx, sa)); err != nil {
		return "", err
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: MetricsScraper},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "kubenova-metrics-reader"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: SystemNamespace, Name: MetricsScraper}}}
	if err := client.IgnoreAlreadyExists(c.Client.Create(ctx, binding)); err != nil {
		return "", err
	}
	return c.ServiceAccountToken(ctx, MetricsScraper, nil)
}

// Scrape reads a metrics endpoint with a bearer token (none when empty), trusting its
// self-signed certificate as a scraper told to skip verification does. It returns the HTTP
// status and, on 200, the metric families.
func Scrape(ctx context.Context, endpoint, token string) (int, map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the endpoint's certificate is self-signed
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	return resp.StatusCode, families, err
}

// Sum adds up the values of a family's series whose labels include want: a counter's or
// gauge's value, or a histogram's count.
func Sum(families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := families[name]
	if !ok {
		return 0
	}
	total := 0.0
	for _, m := range f.GetMetric() {
		if !hasLabels(m, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	for name, value := range want {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == name && l.GetValue() == value {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// freePort finds a local TCP port nobody listens on, never the same twice in one process.
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		// Not one libvirt may take later for an incoming migration (migration_port_min..max).
		if port >= 49152 && port <= 49215 {
			continue
		}
		if !ports[port] {
			ports[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port found")
}

// hostPort is an endpoint URL's host:port, for a --metrics-bind-address flag.
func hostPort(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return ""
	}
	return u.Host
}
