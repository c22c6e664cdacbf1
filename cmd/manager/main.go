// Command manager is kubenova's control loop: it schedules instances, drives them through Nova's
// state machine and keeps the Hypervisors' bookkeeping. It links no libvirt code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/scheduler"
	kubescheme "github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/subresources"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		leaderElect    = flag.Bool("leader-elect", true, "elect a leader so that only one manager schedules and acts; the scheduler's claims are in memory, so never run two managers without it")
		leaseNamespace = flag.String("lease-namespace", "kubenova-system", "kubenova's own namespace: the agents' heartbeat Leases, the leader Lease and the copies of the instances' user data")
		nodeDownGrace  = flag.Duration("node-down-grace", 10*time.Second, "time past a heartbeat lease's expiry before its node counts as down")
		autoEvacuate   = flag.Duration("auto-evacuate-after", 0, "evacuate the instances of a node once it has been down this long and is fenced (forced down or tainted out-of-service); 0 never does, leaving evacuation to people")
		metricsAddr    = flag.String("metrics-bind-address", "0", "address of the metrics endpoint; 0 disables it")
		metricsSecure  = flag.Bool("metrics-secure", true, "serve the metrics over HTTPS to callers whose token may get the non-resource URL /metrics (the ClusterRole kubenova-metrics-reader); false serves plain HTTP to anyone")
		probeAddr      = flag.String("health-probe-bind-address", ":8081", "address of the health probes; 0 disables them")
		workers        = flag.Int("workers", controllers.DefaultInstanceWorkers, "how many instances the manager reconciles at once; most of a reconcile is waiting for the API server")
		imageStore     = flag.String("image-store", "/var/lib/kubenova-images", "directory of the image store, shared with the nodes (Glance's filesystem store)")
		sourceDirs     = flag.String("image-source-dirs", "", "comma-separated directories that an Image's file source may name; empty allows no file sources")
		maxImageBytes  = flag.Int64("max-image-bytes", imagestore.DefaultMaxImageBytes, "largest image the image service imports")
		offloadTime    = flag.Duration("shelved-offload-time", 0, "how long a shelved instance keeps its domain and disks on its node before they are offloaded (Nova's shelved_offload_time): 0 at once, negative never")
		sameHost       = flag.Bool("allow-resize-to-same-host", true, "let a resize stay on its node when both flavors fit there (Nova's allow_resize_to_same_host); false always moves it to another node")
		buildTimeout   = flag.Duration("instance-build-timeout", 0, "fail a launch that has not finished this long after it began, the instance going to Error (Nova's instance_build_timeout); 0 waits as long as the node keeps at it (each of its attempts is bounded by the agent's --task-attempt-timeout)")
		confirmWindow  = flag.Duration("resize-confirm-window", 0, "confirm a resize or cold migration by itself once it has waited this long in Resized (Nova's resize_confirm_window); 0 waits for a person")
		missingWait    = flag.Duration("missing-instance-timeout", controllers.DefaultMissingInstanceTimeout, "how long a Snapshot or Migration waits for the instance it names to exist (a GitOps sync applies them in any order) before it fails with InstanceNotFound")
		apiAddr        = flag.String("subresources-bind-address", "0", "address of the aggregated API (subresources.compute.kubenova.io: instances/log, the console logs), which kube-apiserver proxies to; 0 disables it")
		apiService     = flag.String("subresources-service", "kubenova-manager-subresources", "the Service in --lease-namespace that kube-apiserver reaches the aggregated API through, which its certificate names")
		apiSecret      = flag.String("subresources-secret", "kubenova-manager-subresources-tls", "the Secret in --lease-namespace that keeps the aggregated API's certificate, made by the manager")
		rescueImage    = flag.String("default-rescue-image", "", "ClusterImage a rescue boots when spec.rescue names no image; empty boots the instance's own image, as Nova does")
	)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  kubescheme.New(),
		Metrics:                 metrics.ServerOptions(*metricsAddr, *metricsSecure),
		HealthProbeBindAddress:  *probeAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        "kubenova-manager",
		LeaderElectionNamespace: *leaseNamespace,
		// A manager that stops cleanly hands over at once instead of after the lease expires.
		LeaderElectionReleaseOnCancel: true,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{*leaseNamespace: {}}},
		}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	// kubenova_instances, counted from the cache at each scrape, by the leader only.
	if err := crmetrics.Registry.Register(&metrics.InstanceCollector{Reader: mgr.GetCache(), Elected: mgr.Elected()}); err != nil {
		return err
	}
	if err := controllers.IndexInstances(context.Background(), mgr); err != nil {
		return err
	}
	if err := controllers.IndexSnapshots(context.Background(), mgr); err != nil {
		return err
	}
	if err := controllers.IndexMigrations(context.Background(), mgr); err != nil {
		return err
	}
	store := &imagestore.Dir{Root: *imageStore}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return err
	}
	if err := controllers.EnsureImageStoreIdentity(context.Background(), direct, *leaseNamespace, store); err != nil {
		return err
	}
	if _, err := store.Identify(); err != nil {
		ctrl.Log.Error(err, "the image store is unavailable; imports, uploads and deletes wait for it", "path", store.Root, "id", store.ID)
	}
	if err := (&controllers.InstanceReconciler{
		Client:    mgr.GetClient(),
		Recorder:  mgr.GetEventRecorder("kubenova-manager"),
		Placement: scheduler.NewPlacement(),
		Workers:   *workers,

		APIReader:          mgr.GetAPIReader(),
		SystemNamespace:    *leaseNamespace,
		DefaultRescueImage: *rescueImage,
		ShelvedOffloadTime: *offloadTime,

		AllowResizeToSameHost: *sameHost,
		ResizeConfirmWindow:   *confirmWindow,
		BuildTimeout:          *buildTimeout,
		Images:                store,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("instance controller: %w", err)
	}
	if err := (&controllers.HypervisorReconciler{
		Client: mgr.GetClient(), LeaseNamespace: *leaseNamespace, Grace: *nodeDownGrace,
		AutoEvacuateAfter: *autoEvacuate, Recorder: mgr.GetEventRecorder("kubenova-hypervisors"),
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("hypervisor controller: %w", err)
	}
	// What an import cut short by a crash left in the store; an hour spares the uploads that
	// other processes have in flight.
	if err := store.RemoveStalePuts(time.Hour); err != nil && !errors.Is(err, imagestore.ErrUnavailable) {
		return fmt.Errorf("image store %s: %w", *imageStore, err)
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
	importer := &imagestore.Importer{Store: store, SourceDirs: splitList(*sourceDirs), MaxBytes: *maxImageBytes, HTTPClient: httpClient}
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
		return err
	}
	for _, kind := range []v1.ImageKind{v1.KindImage, v1.KindClusterImage} {
		if err := (&controllers.ImageReconciler{
			Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-images"), Importer: importer, Kind: kind,
		}).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("%s controller: %w", kind, err)
		}
	}
	if err := (&controllers.SnapshotReconciler{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-snapshots"),
		MissingInstanceTimeout: *missingWait,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("snapshot controller: %w", err)
	}
	if err := (&controllers.MigrationReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("kubenova-migrations"),
		MissingInstanceTimeout: *missingWait,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("migration controller: %w", err)
	}
	if *apiAddr != "0" && *apiAddr != "" {
		clientset, err := kubernetes.NewForConfig(mgr.GetConfig())
		if err != nil {
			return err
		}
		if err := mgr.Add(&subresources.Server{Addr: *apiAddr, Namespace: *leaseNamespace, ServiceName: *apiService, SecretName: *apiSecret,
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clientset: clientset, Agents: &consolelog.AgentClient{}}); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// What the manager may do beyond what its controllers' markers grant: hold the leader Lease and
// say so in Events, and check the tokens of those who scrape its metrics. For the aggregated
// API: check the rights of those who read console logs, keep its certificate in a Secret and
// its CA in its APIService, and mint tokens of its own service account for the agents. (It
// reads kube-apiserver's front-proxy settings through the built-in Role
// extension-apiserver-authentication-reader, config/rbac/role_binding.yaml.)
//
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=create;update;patch,namespace=kubenova-system
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch,namespace=kubenova-system
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=get;patch,resourceNames=v1alpha1.subresources.compute.kubenova.io
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create,resourceNames=kubenova-manager,namespace=kubenova-system

// splitList splits a comma-separated flag, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
