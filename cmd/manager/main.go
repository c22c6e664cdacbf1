// Command manager is kubenova's control loop: it schedules instances, drives them through Nova's
// state machine and keeps the Hypervisors' bookkeeping. It links no libvirt code.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/metrics"
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
		taskTimeout    = flag.Duration("task-timeout", controllers.DefaultTaskTimeout, "fail a task of one node (not a move between two, not a terminate) that the node's agent has not answered this long after it began, though the agent keeps its heartbeat; negative never does")
		confirmWindow  = flag.Duration("resize-confirm-window", 0, "confirm a resize or cold migration by itself once it has waited this long in Resized (Nova's resize_confirm_window); 0 waits for a person")
		missingWait    = flag.Duration("missing-instance-timeout", controllers.DefaultMissingInstanceTimeout, "how long a Snapshot or Migration waits for the instance it names to exist (a GitOps sync applies them in any order) before it fails with InstanceNotFound")
		apiAddr        = flag.String("subresources-bind-address", "0", "address of the aggregated API (subresources.compute.kubenova.io: instances/log, the console logs), which kube-apiserver proxies to; 0 disables it")
		apiService     = flag.String("subresources-service", "kubenova-manager-subresources", "the Service in --lease-namespace that kube-apiserver reaches the aggregated API through, which its certificate names")
		apiSecret      = flag.String("subresources-secret", "kubenova-manager-subresources-tls", "the Secret in --lease-namespace that keeps the aggregated API's certificate, made by the manager")
		reserveImage   = flag.String("reservation-image", controllers.DefaultReservationImage, "image of the reservation pods, which carry the instances' vCPUs and memory for kube-scheduler, the kubelet and ResourceQuotas (a pause container); empty writes none, leaving Kubernetes blind to the guests")
		evictStrategy  = flag.String("default-eviction-strategy", string(v1.EvictionLiveMigrate), "what a drain of its node does with an instance whose spec.evictionStrategy is empty: LiveMigrate, or None")
		drainPerNode   = flag.Int("max-drain-moves-per-node", 2, "how many instances a drain moves off one node at once (Nova's max_concurrent_live_migrations is per node too)")
		drainMoves     = flag.Int("max-drain-moves", 5, "how many instances all drains move at once")
		rescueImage    = flag.String("default-rescue-image", "", "ClusterImage a rescue boots when spec.rescue names no image; empty boots the instance's own image, as Nova does")
	)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	if s := v1.EvictionStrategy(*evictStrategy); s != v1.EvictionLiveMigrate && s != v1.EvictionNone {
		return fmt.Errorf("--default-eviction-strategy=%s: want LiveMigrate or None", s)
	}

	mgr, err := controllers.NewManager(ctrl.GetConfigOrDie(), controllers.ManagerOptions{
		LeaderElect: *leaderElect, LeaseNamespace: *leaseNamespace, NodeDownGrace: *nodeDownGrace, AutoEvacuate: *autoEvacuate,
		MetricsAddr: *metricsAddr, MetricsSecure: *metricsSecure, ProbeAddr: *probeAddr, Workers: *workers,
		ImageStore: *imageStore, ImageSourceDirs: splitList(*sourceDirs), MaxImageBytes: *maxImageBytes,
		ShelvedOffloadTime: *offloadTime, AllowResizeToSameHost: *sameHost, InstanceBuildTimeout: *buildTimeout, TaskTimeout: *taskTimeout,
		ResizeConfirmWindow: *confirmWindow, MissingInstanceTimeout: *missingWait,
		SubresourcesAddr: *apiAddr, SubresourcesService: *apiService, SubresourcesSecret: *apiSecret,
		DefaultRescueImage: *rescueImage, ReservationImage: *reserveImage,
		DefaultEvictionStrategy: v1.EvictionStrategy(*evictStrategy), MaxDrainMovesPerNode: *drainPerNode, MaxDrainMoves: *drainMoves,
	})
	if err != nil {
		return err
	}
	// kubenova_instances, counted from the cache at each scrape, by the leader only.
	if err := crmetrics.Registry.Register(&metrics.InstanceCollector{Reader: mgr.GetCache(), Elected: mgr.Elected()}); err != nil {
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
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,verbs=get;update,resourceNames=kubenova-reservation-eviction
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
