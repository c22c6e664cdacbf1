// Package metrics holds kubenova's Prometheus metrics. They are registered with
// controller-runtime's registry, so the manager and the agent serve them on their metrics
// endpoints beside controller-runtime's own (controller_runtime_reconcile_total,
// workqueue_*, rest_client_requests_total).
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Outcomes of an operation.
const (
	OutcomeSucceeded = "Succeeded"
	OutcomeFailed    = "Failed"
)

var (
	// OperationDuration is how long each Nova operation took, from its task's start to its end,
	// by operation (the task's action: Launch, Reboot, LiveMigrate, ...) and outcome.
	OperationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "kubenova", Name: "operation_duration_seconds",
		Help: "How long an instance's operation took, from its task's start to its end, by operation and outcome.",
		// From a pause (well under a second) to a block migration of a large disk.
		Buckets: []float64{0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600},
	}, []string{"operation", "outcome"})

	// SchedulingFailures counts placement attempts that found no valid host, by each filter
	// that rejected at least one host ("NoHosts" when there were none to filter). A launch or a
	// resize that waits for room counts each of its retries.
	SchedulingFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubenova", Name: "scheduling_failures_total",
		Help: "Placement attempts that found no valid host, by each filter that rejected a host.",
	}, []string{"filter"})

	// MigrationDowntime is how long live migrations paused their guests, as libvirt measured.
	MigrationDowntime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "kubenova", Name: "live_migration_downtime_seconds",
		Help:    "How long a live migration that succeeded paused its guest, as libvirt measured it.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
	})

	// Migrations counts the Migrations that ended, by type and outcome.
	Migrations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubenova", Name: "migrations_total",
		Help: "Migrations that ended, by type (Live, Cold, Evacuate) and outcome.",
	}, []string{"type", "outcome"})

	// DriverCalls counts the agent's calls into its hypervisor driver.
	DriverCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubenova", Name: "driver_calls_total",
		Help: "Calls the agent made into its hypervisor driver (libvirt), by method.",
	}, []string{"method"})
	// DriverErrors counts the calls into the driver that failed.
	DriverErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubenova", Name: "driver_errors_total",
		Help: "Calls into the hypervisor driver that failed, by method (a domain that is not there is no error).",
	}, []string{"method"})
	// DriverCallDuration is how long the calls into the driver took.
	DriverCallDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "kubenova", Name: "driver_call_duration_seconds",
		Help:    "How long the agent's calls into its hypervisor driver took, by method.",
		Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600},
	}, []string{"method"})

	// QuarantinedInstances is how many vanished instances' files each node keeps in quarantine
	// instead of deleting them (the agent's orphan cleanup).
	QuarantinedInstances = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "kubenova", Name: "quarantined_instances",
		Help: "Instance directories a node keeps in quarantine: their instance vanished without its terminate.",
	}, []string{"node"})
	// QuarantinedBytes is the space a node's quarantined instance directories take.
	QuarantinedBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "kubenova", Name: "quarantined_bytes",
		Help: "Space the quarantined instance directories of a node take.",
	}, []string{"node"})

	// StatusWrites counts the status writes of kubenova's controllers, by kind and result:
	// Written, Conflict (a lost race, retried), NotFound (the object went) or Error.
	StatusWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kubenova", Name: "status_writes_total",
		Help: "Status writes to the API server, by kind and result (Written, Conflict, NotFound, Error).",
	}, []string{"kind", "result"})
)

func init() {
	crmetrics.Registry.MustRegister(OperationDuration, SchedulingFailures, MigrationDowntime, Migrations,
		DriverCalls, DriverErrors, DriverCallDuration, StatusWrites, QuarantinedInstances, QuarantinedBytes)
}

// CountNoValidHost records a placement that found no valid host, once for each filter to blame.
func CountNoValidHost(filters []string) {
	for _, f := range filters {
		SchedulingFailures.WithLabelValues(f).Inc()
	}
}

// ObserveDriverCall records one call into the driver.
func ObserveDriverCall(method string, took time.Duration, failed bool) {
	DriverCalls.WithLabelValues(method).Inc()
	DriverCallDuration.WithLabelValues(method).Observe(took.Seconds())
	if failed {
		DriverErrors.WithLabelValues(method).Inc()
	}
}
