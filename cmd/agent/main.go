// Command agent is kubenova's node agent: one per compute node, it runs the node's instances
// through libvirt and reports the node's Hypervisor and heartbeat.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/fields"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/internal/driver/libvirt"
	kubescheme "github.com/kubenova/kubenova/internal/scheme"
	"github.com/kubenova/kubenova/internal/storage"
	"github.com/kubenova/kubenova/internal/version"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		nodeName       = flag.String("node-name", os.Getenv("NODE_NAME"), "the Kubernetes node this agent serves (default $NODE_NAME)")
		libvirtURI     = flag.String("libvirt-uri", "qemu:///system", "libvirt connection URI of this node")
		migrationURI   = flag.String("migration-uri", "", "libvirt URI other nodes reach this node's libvirtd at (default: --libvirt-uri)")
		virtTypeFlag   = flag.String("virt-type", "auto", "kvm, qemu (TCG) or auto (KVM on bare metal with a usable /dev/kvm)")
		storageRoot    = flag.String("storage-root", "/var/lib/kubenova", "directory for the image cache and instance disks")
		imageDirs      = flag.String("image-dirs", "/var/lib/kubenova/images", "comma-separated directories that Image file sources may name")
		maxImageSize   = flag.Int64("max-image-bytes", storage.DefaultMaxImageBytes, "largest image the node accepts")
		leaseNamespace = flag.String("lease-namespace", "kubenova-system", "namespace of the agents' heartbeat Leases")
		leaseDuration  = flag.Duration("lease-duration", 40*time.Second, "how long one heartbeat vouches for the node")
		metricsAddr    = flag.String("metrics-bind-address", "0", "address of the metrics endpoint; 0 disables it")
		probeAddr      = flag.String("health-probe-bind-address", "0", "address of the health probes; 0 disables them")
		shutdownWait   = flag.Duration("shutdown-timeout", agent.DefaultShutdownTimeout, "how long a guest has to power off after the ACPI power button before it is powered off (Nova's shutdown_timeout)")
		rebootWait     = flag.Duration("soft-reboot-timeout", agent.DefaultRebootTimeout, "how long a guest has to answer a soft reboot before it is rebooted hard (Nova's wait_soft_reboot_seconds)")
		workers        = flag.Int("workers", 4, "how many instances the agent works on at once")
		reservedMemory = flag.Int64("reserved-memory-mib", 512, "memory held back for the node itself (Nova's reserved_host_memory_mb)")
		reservedVCPUs  = flag.Int64("reserved-vcpus", 0, "vCPUs held back for the node itself (Nova's reserved_host_cpus)")
		reservedDisk   = flag.Int64("reserved-disk-gib", 0, "disk held back for the node itself (Nova's reserved_host_disk_mb, in GiB)")
	)
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	logger := ctrl.Log.WithName("agent")
	if *nodeName == "" {
		return fmt.Errorf("--node-name (or $NODE_NAME) is required")
	}
	if *migrationURI == "" {
		*migrationURI = *libvirtURI
	}
	virtType, why, err := agent.DetectVirtType(*virtTypeFlag, "/proc/cpuinfo")
	if err != nil {
		return err
	}
	logger.Info("virt type chosen", "virtType", virtType, "why", why, "node", *nodeName)

	drv, err := libvirt.New(*libvirtURI)
	if err != nil {
		return err
	}
	defer func() { _ = drv.Close() }()
	if *leaseDuration < 4*time.Second {
		return fmt.Errorf("--lease-duration must be at least 4s, not %s", *leaseDuration)
	}
	store := &storage.Node{Root: *storageRoot, ImageDirs: strings.Split(*imageDirs, ","), MaxImageBytes: *maxImageSize}
	if err := store.RemoveStaleDownloads(); err != nil {
		return err
	}

	scheme := kubescheme.New()
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress: *probeAddr,
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			// The agent sees only the instances placed on its node.
			&v1.Instance{}: {Field: fields.OneTermEqualSelector("status.nodeName", *nodeName)},
		}},
		Client: client.Options{Cache: &client.CacheOptions{
			DisableFor: []client.Object{&v1.Image{}, &v1.Hypervisor{}, &coordinationv1.Lease{}},
		}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	reconciler := &agent.InstanceReconciler{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("kubenova-agent-" + *nodeName),
		Driver: drv, Storage: store, NodeName: *nodeName, VirtType: virtType,
		ShutdownTimeout: *shutdownWait, RebootTimeout: *rebootWait, Workers: *workers,
	}
	if err := reconciler.SetupWithManager(mgr); err != nil {
		return err
	}
	reporter := &agent.Reporter{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Driver: drv, Storage: store,
		NodeName: *nodeName, VirtType: virtType, MigrationURI: *migrationURI, AgentVersion: version.Version,
		Reserved:       v1.Resources{VCPUs: *reservedVCPUs, MemoryMiB: *reservedMemory, DiskGiB: *reservedDisk},
		LeaseNamespace: *leaseNamespace, LeaseDuration: *leaseDuration,
		ReportPeriod: time.Minute, CleanupPeriod: 5 * time.Minute,
	}
	if err := mgr.Add(reporter); err != nil {
		return err
	}
	logger.Info("starting", "libvirt", *libvirtURI, "storageRoot", *storageRoot)
	return mgr.Start(ctrl.SetupSignalHandler())
}
