package agent

import (
	"context"
	"fmt"
	"net/http"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/fields"
	authenticationv1 "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/metrics"
	kubescheme "github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
)

// Disks fetches images into the node's cache and makes root disks: *storage.Node on a real
// node, *storage.SimulatedDisks on a simulated one.
type Disks interface {
	EnsureImage(ctx context.Context, img v1.AppliedImage) (string, error)
	CreateRootDisk(ctx context.Context, uid, base string, format v1.DiskFormat, sizeGiB int32) (string, error)
	CreateDisk(ctx context.Context, path, base string, format v1.DiskFormat, sizeGiB int32) error
	CapacityGiB() (int64, error)
}

var _ Disks = (*storage.Node)(nil)
var _ Disks = (*storage.SimulatedDisks)(nil)

// Node is everything one node's agent needs: the node, its hypervisor and storage, and how it
// behaves. The agent binary runs one; a simulated fleet runs many in one process.
type Node struct {
	Name         string
	Driver       driver.Driver
	Storage      *storage.Node
	Disks        Disks
	VirtTypes    *VirtTypeChooser
	MigrationURI string
	// SharedStorage declares that the storage root is on storage other nodes mount too.
	SharedStorage bool
	// Networks are the networks the node has (--networks).
	Networks []v1.HypervisorNetwork
	// MigrationTLS encrypts outgoing live migrations' data.
	MigrationTLS bool
	// MigrationBandwidthMiBs caps outgoing live migrations' data rate (MiB/s; 0: no cap).
	MigrationBandwidthMiBs uint64
	// MigrationTimeoutPerGiB bounds a live migration's time per GiB copied.
	MigrationTimeoutPerGiB time.Duration
	// ImageStoreWait bounds a task's wait for an unavailable image store.
	ImageStoreWait time.Duration
	// HypervisorWait bounds a task's wait for a hypervisor that does not answer.
	HypervisorWait time.Duration
	// TaskAttemptTimeout bounds one attempt of a task step.
	TaskAttemptTimeout time.Duration
	AgentVersion       string
	Reserved           v1.Resources

	LeaseNamespace  string
	LeaseDuration   time.Duration
	ShutdownTimeout time.Duration
	RebootTimeout   time.Duration
	ImageCacheGrace time.Duration
	// QuarantineGrace is how long a vanished instance's files are kept (Reporter.QuarantineGrace).
	QuarantineGrace time.Duration
	// SweepInterval is how often the agent looks for orphaned domains and files and unused
	// cached images (DefaultSweepInterval when zero).
	SweepInterval time.Duration
	Workers       int
	MetricsAddr   string
	// MetricsSecure serves the metrics over HTTPS to callers with the metrics-reader role.
	MetricsSecure bool
	ProbeAddr     string
	// ConsoleAddr is where the console-log service listens ("" or "0": none), published as
	// https://ConsoleAdvertise:<port>; ConsoleClients are the users it serves (the manager's
	// service account).
	ConsoleAddr, ConsoleAdvertise string
	ConsoleClients                []string
}

// What an agent may do, and no more: read the instances (the API server cannot authorize
// a watch by field selector, so it may read every instance) and write only the status of those
// of its node, its Hypervisor and its Lease. The admission policy kubenova-agent-node-restriction
// (config/admission) narrows each write to the agent's own node, the way NodeRestriction
// narrows a kubelet's. Secrets: get only, by name, in kubenova's own namespace, where the
// manager keeps a copy of each instance's user data: an agent reads no user's Secret. Token and
// access reviews check those who scrape its metrics; token reviews the manager's token when it
// asks for a console log.
//
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances,verbs=get;list;watch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=instances/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=hypervisors,verbs=get;create
// +kubebuilder:rbac:groups=compute.kubenova.io,resources=hypervisors/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;update,namespace=kubenova-system
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get,namespace=kubenova-system
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// NewManager builds the controller-runtime manager of one node's agent: the instance
// reconciler and the reporter, with a cache that holds only the instances placed on the node.
func NewManager(cfg *rest.Config, n Node) (manager.Manager, error) {
	n.Driver = driver.Instrument(n.Driver, metrics.ObserveDriverCall)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 kubescheme.New(),
		Metrics:                metrics.ServerOptions(n.MetricsAddr, n.MetricsSecure),
		HealthProbeBindAddress: n.ProbeAddr,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// The agent sees only the instances placed on its node.
			&v1.Instance{}: {Field: fields.OneTermEqualSelector("status.nodeName", n.Name)},
		}},
		Client: client.Options{Cache: &client.CacheOptions{
			DisableFor: []client.Object{&v1.Hypervisor{}, &coordinationv1.Lease{}},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("create manager for node %s: %w", n.Name, err)
	}
	// A second cache holds the instances whose task names this node its peer while they live
	// elsewhere: a live migration's target prepares for them, a resize's source confirms.
	incoming, err := cache.New(cfg, cache.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&v1.Instance{}: {Field: fields.OneTermEqualSelector("status.task.peerNode", n.Name)},
		}})
	if err != nil {
		return nil, fmt.Errorf("create the incoming-migrations cache of node %s: %w", n.Name, err)
	}
	if err := mgr.Add(incoming); err != nil {
		return nil, err
	}
	reconciler := &InstanceReconciler{
		Incoming: incoming, MigrationTLS: n.MigrationTLS, SharedStorage: n.SharedStorage, MigrationTimeoutPerGiB: n.MigrationTimeoutPerGiB,
		ImageStoreWait: n.ImageStoreWait, TaskAttemptTimeout: n.TaskAttemptTimeout,
		MigrationBandwidthMiBs: n.MigrationBandwidthMiBs,
		Client:                 mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-agent-" + n.Name),
		Driver: n.Driver, Storage: n.Storage, Disks: n.Disks, NodeName: n.Name, VirtTypes: n.VirtTypes, Networks: n.Networks,
		UserDataNamespace: n.LeaseNamespace,
		ShutdownTimeout:   n.ShutdownTimeout, RebootTimeout: n.RebootTimeout, Workers: n.Workers,
	}
	if err := reconciler.SetupWithManager(mgr); err != nil {
		return nil, err
	}
	// Ready means libvirtd answers: an agent that cannot reach it can neither run nor report
	// guests. Alive means the process serves; restarting it would not bring libvirtd back.
	if err := mgr.AddReadyzCheck("libvirt", libvirtCheck(n.Driver)); err != nil {
		return nil, err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, err
	}
	reporter := &Reporter{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Driver: n.Driver, Storage: n.Storage, Disks: n.Disks,
		NodeName: n.Name, VirtTypes: n.VirtTypes, MigrationURI: n.MigrationURI, AgentVersion: n.AgentVersion, SharedStorage: n.SharedStorage,
		Reserved: n.Reserved, LeaseNamespace: n.LeaseNamespace, LeaseDuration: n.LeaseDuration, Networks: n.Networks,
		ReportPeriod: time.Minute, CleanupPeriod: sweepInterval(n.SweepInterval), ImageCacheGrace: n.ImageCacheGrace,
		QuarantineGrace: n.QuarantineGrace, Recorder: mgr.GetEventRecorder("kubenova-agent-" + n.Name),
	}
	if n.ConsoleAddr != "" && n.ConsoleAddr != "0" {
		tokenReviews, err := authenticationv1.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		console := &ConsoleServer{Addr: n.ConsoleAddr, AdvertiseHost: n.ConsoleAdvertise, NodeName: n.Name,
			StateDir: consoleStateDir(n.Storage.Root, n.Name), Clients: n.ConsoleClients,
			TokenReviews: tokenReviews, Reader: mgr.GetClient(), Storage: n.Storage}
		if err := console.Prepare(); err != nil {
			return nil, fmt.Errorf("the console-log service's certificate: %w", err)
		}
		if err := mgr.Add(console); err != nil {
			return nil, err
		}
		reporter.ConsoleLogService = console.Published()
	}
	if err := mgr.Add(reporter); err != nil {
		return nil, err
	}
	return mgr, nil
}

// libvirtProbeTimeout bounds one readiness check: a libvirtd that hangs is not ready either.
const libvirtProbeTimeout = 5 * time.Second

// libvirtCheck reports whether the node's libvirtd answers within libvirtProbeTimeout.
func libvirtCheck(d driver.Driver) healthz.Checker {
	return func(req *http.Request) error {
		ctx, cancel := context.WithTimeout(req.Context(), libvirtProbeTimeout)
		defer cancel()
		answer := make(chan error, 1)
		go func() { answer <- d.Ping(ctx) }()
		select {
		case err := <-answer:
			return err
		case <-ctx.Done():
			return fmt.Errorf("libvirtd did not answer within %s", libvirtProbeTimeout)
		}
	}
}

// DefaultSweepInterval is how often the agent sweeps for orphans (Nova's
// running_deleted_instance_poll_interval, 30 minutes there; shorter here, since the sweep is
// also what notices a vanished instance's guest, which holds the scheduler's resources).
const DefaultSweepInterval = 5 * time.Minute

func sweepInterval(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultSweepInterval
	}
	return d
}
