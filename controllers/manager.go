package controllers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/scheduler"
	kubescheme "github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/subresources"
)

// ManagerOptions are the manager's settings: its command line's flags (cmd/manager says what
// each does).
type ManagerOptions struct {
	LeaderElect     bool
	LeaseNamespace  string
	NodeDownGrace   time.Duration
	AutoEvacuate    time.Duration
	MetricsAddr     string
	MetricsSecure   bool
	ProbeAddr       string
	Workers         int
	ImageStore      string
	ImageSourceDirs []string
	MaxImageBytes   int64
	// ShelvedOffloadTime: 0 at once, negative never.
	ShelvedOffloadTime     time.Duration
	AllowResizeToSameHost  bool
	InstanceBuildTimeout   time.Duration
	TaskTimeout            time.Duration
	ResizeConfirmWindow    time.Duration
	MissingInstanceTimeout time.Duration
	// SubresourcesAddr is where the aggregated API listens ("" or "0": nowhere).
	SubresourcesAddr, SubresourcesService, SubresourcesSecret string
	DefaultRescueImage                                        string
	// ReservationImage is the reservation pods' container image; "" writes no reservation
	// pods (Kubernetes then does not count the guests, nor quotas limit them).
	ReservationImage string
	// DefaultEvictionStrategy applies to instances that name none; MaxDrainMovesPerNode and
	// MaxDrainMoves bound the moves drains have in flight off one node and in all.
	DefaultEvictionStrategy             v1.EvictionStrategy
	MaxDrainMovesPerNode, MaxDrainMoves int
	// RestartableInProcess lets one process build the manager again after a stop (a test
	// that kills and restarts it in process): controller-runtime refuses a second controller
	// of a name otherwise.
	RestartableInProcess bool
}

// NewManager builds the controller-runtime manager of kubenova's control loop: the instance,
// Hypervisor, image, Snapshot and Migration controllers over one image store, and the
// aggregated API when asked for. The caller starts it.
func NewManager(cfg *rest.Config, o ManagerOptions) (manager.Manager, error) {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  kubescheme.New(),
		Metrics:                 metrics.ServerOptions(o.MetricsAddr, o.MetricsSecure),
		HealthProbeBindAddress:  o.ProbeAddr,
		LeaderElection:          o.LeaderElect,
		LeaderElectionID:        "kubenova-manager",
		LeaderElectionNamespace: o.LeaseNamespace,
		// A manager that stops cleanly hands over at once instead of after the lease expires.
		LeaderElectionReleaseOnCancel: true,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{o.LeaseNamespace: {}}},
			// Every pod of the cluster, for what they request of their nodes: only that is kept.
			&corev1.Pod{}: {Transform: scheduler.StripPod},
		}},
		Controller: config.Controller{SkipNameValidation: ptr.To(o.RestartableInProcess)},
	})
	if err != nil {
		return nil, fmt.Errorf("create manager: %w", err)
	}
	if err := IndexInstances(context.Background(), mgr); err != nil {
		return nil, err
	}
	if err := IndexSnapshots(context.Background(), mgr); err != nil {
		return nil, err
	}
	if err := IndexMigrations(context.Background(), mgr); err != nil {
		return nil, err
	}
	if err := IndexServerGroupMembers(context.Background(), mgr); err != nil {
		return nil, err
	}
	store := &imagestore.Dir{Root: o.ImageStore}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return nil, err
	}
	if err := EnsureImageStoreIdentity(context.Background(), direct, o.LeaseNamespace, store); err != nil {
		return nil, err
	}
	if _, err := store.Identify(); err != nil {
		ctrl.Log.Error(err, "the image store is unavailable; imports, uploads and deletes wait for it", "path", store.Root, "id", store.ID)
	}
	var reservations *ReservationReconciler
	placement := scheduler.NewPlacement()
	if o.ReservationImage != "" {
		if err := EnsureReservationPriorityClass(context.Background(), direct, DefaultReservationPriorityClass); err != nil {
			return nil, err
		}
		reservations = &ReservationReconciler{Client: mgr.GetClient(), Placement: placement, SystemNamespace: o.LeaseNamespace,
			Image: o.ReservationImage, PriorityClass: DefaultReservationPriorityClass}
		if err := reservations.SetupWithManager(mgr); err != nil {
			return nil, fmt.Errorf("reservation controller: %w", err)
		}
	}
	if err := (&InstanceReconciler{
		Client:       mgr.GetClient(),
		Recorder:     mgr.GetEventRecorder("kubenova-manager"),
		Placement:    placement,
		Pods:         scheduler.NewPodLoad(),
		Reservations: reservations,
		Workers:      o.Workers,

		APIReader:          mgr.GetAPIReader(),
		SystemNamespace:    o.LeaseNamespace,
		DefaultRescueImage: o.DefaultRescueImage,
		ShelvedOffloadTime: o.ShelvedOffloadTime,

		AllowResizeToSameHost: o.AllowResizeToSameHost,
		ResizeConfirmWindow:   o.ResizeConfirmWindow,
		BuildTimeout:          o.InstanceBuildTimeout,
		TaskTimeout:           o.TaskTimeout,
		Images:                store,
	}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("instance controller: %w", err)
	}
	contact := &APIContact{Reader: mgr.GetAPIReader(), Namespace: o.LeaseNamespace}
	if err := mgr.Add(contact); err != nil {
		return nil, err
	}
	if err := (&HypervisorReconciler{
		Client: mgr.GetClient(), LeaseNamespace: o.LeaseNamespace, Grace: o.NodeDownGrace,
		AutoEvacuateAfter: o.AutoEvacuate, Recorder: mgr.GetEventRecorder("kubenova-hypervisors"), Contact: contact,
	}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("hypervisor controller: %w", err)
	}
	// What an import cut short by a crash left in the store; an hour spares the uploads that
	// other processes have in flight.
	if err := store.RemoveStalePuts(time.Hour); err != nil && !errors.Is(err, imagestore.ErrUnavailable) {
		return nil, fmt.Errorf("image store %s: %w", o.ImageStore, err)
	}
	// A source that accepts a connection and then says nothing must not hold an import
	// worker for ever: connecting and the response's headers are bounded, the whole import
	// by the controller's ImportTimeout.
	httpClient := &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   30 * time.Second,
		ResponseHeaderTimeout: time.Minute,
	}}
	importer := &imagestore.Importer{Store: store, SourceDirs: o.ImageSourceDirs, MaxBytes: o.MaxImageBytes, HTTPClient: httpClient}
	// Puts cut short by a crash (the manager's imports, the agents' uploads) leave temporary
	// files: sweep those older than an hour now and then.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		ticker := time.NewTicker(30 * time.Minute)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-ticker.C:
				if err := store.RemoveStalePuts(time.Hour); err != nil {
					ctrl.Log.Error(err, "sweep the image store's temporary files")
				}
			}
		}
	})); err != nil {
		return nil, err
	}
	for _, kind := range []v1.ImageKind{v1.KindImage, v1.KindClusterImage} {
		if err := (&ImageReconciler{
			Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-images"), Importer: importer, Kind: kind,
		}).SetupWithManager(mgr); err != nil {
			return nil, fmt.Errorf("%s controller: %w", kind, err)
		}
	}
	if err := (&SnapshotReconciler{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-snapshots"),
		MissingInstanceTimeout: o.MissingInstanceTimeout,
	}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("snapshot controller: %w", err)
	}
	if err := (&MigrationReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-migrations"),
		MissingInstanceTimeout: o.MissingInstanceTimeout,
	}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("migration controller: %w", err)
	}
	drain := &DrainReconciler{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-drain"),
		DefaultStrategy: o.DefaultEvictionStrategy,
		MaxPerNode:      o.MaxDrainMovesPerNode, MaxInFlight: o.MaxDrainMoves}
	if err := drain.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("drain controller: %w", err)
	}
	if err := (&ServerGroupReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("server group controller: %w", err)
	}
	if o.SubresourcesAddr != "0" && o.SubresourcesAddr != "" {
		clientset, err := kubernetes.NewForConfig(mgr.GetConfig())
		if err != nil {
			return nil, err
		}
		srv := &subresources.Server{Addr: o.SubresourcesAddr, Namespace: o.LeaseNamespace, ServiceName: o.SubresourcesService,
			SecretName: o.SubresourcesSecret, Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clientset: clientset,
			Agents: &consolelog.AgentClient{}}
		if reservations != nil {
			srv.Evictions = drain.AdmitReservationEviction
		}
		if err := mgr.Add(srv); err != nil {
			return nil, err
		}
		if err := mgr.AddReadyzCheck("aggregated-api", srv.ReadyCheck); err != nil {
			return nil, err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}
