// Command agent is kubenova's node agent: one per compute node, it runs the node's instances
// through libvirt and reports the node's Hypervisor and heartbeat.
//
// With --driver=fake it simulates a node instead (no libvirt, no disks), and with
// --simulate-nodes=N it simulates N nodes in one process, each with its own Node, Hypervisor,
// Lease and agent, the way kubemark and KWOK simulate kubelets: a fleet to measure the control
// plane against.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/driver/libvirt"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/scheduler"
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

// simulation is how simulated nodes look.
type simulation struct {
	nodes                     int
	vcpus, memoryMiB, diskGiB int64
	zone                      string
}

func run() error {
	var (
		nodeName       = flag.String("node-name", os.Getenv("NODE_NAME"), "the Kubernetes node this agent serves (default $NODE_NAME); with --simulate-nodes, the prefix of the simulated nodes' names")
		driverName     = flag.String("driver", "libvirt", "libvirt, or fake to simulate the node: no hypervisor, no disks")
		libvirtURI     = flag.String("libvirt-uri", "qemu:///system", "libvirt connection URI of this node")
		migrationURI   = flag.String("migration-uri", "", "libvirt URI other nodes reach this node's libvirtd at (default: --libvirt-uri)")
		virtTypeFlag   = flag.String("virt-type", "auto", "kvm, qemu (TCG) or auto: KVM where the node's libvirtd offers it and the node is bare metal, TCG otherwise (the Hypervisor says which and why)")
		storageRoot    = flag.String("storage-root", "/var/lib/kubenova", "directory for the image cache and instance disks")
		sharedStorage  = flag.Bool("shared-storage", false, "the storage root is on storage other nodes mount at the same path (NFS, CephFS): live migrations between such nodes move only memory, and evacuations keep the disk")
		migrationWait  = flag.Duration("live-migration-completion-timeout", agent.DefaultMigrationTimeoutPerGiB, "how long a live migration may take per GiB it copies (memory, and disk in a block migration) before it is aborted, the guest running on at the source (Nova's live_migration_completion_timeout)")
		migrationRate  = flag.Uint64("live-migration-bandwidth", 0, "the most MiB/s an outgoing live migration may use; 0: no cap (Nova's live_migration_bandwidth)")
		migrationTLS   = flag.Bool("migration-tls", false, "encrypt the data of outgoing live migrations with libvirt's TLS certificates (VIR_MIGRATE_TLS); use with a qemu+tls:// --migration-uri")
		networks       = flag.String("networks", "", "the networks this node has, which instances' NICs are plugged into: comma-separated NAME=bridge:BRIDGE (a Linux bridge) or NAME=network:NAME (a libvirt network), as Neutron's bridge_mappings")
		attemptWait    = flag.Duration("task-attempt-timeout", agent.DefaultTaskAttemptTimeout, "how long one attempt of a task step may take (an image fetch, a disk copy, an upload, a libvirt call) before it counts as failed; a task fails after three")
		libvirtWait    = flag.Duration("hypervisor-wait", agent.DefaultHypervisorWait, "how long a task whose attempts fail while libvirtd does not answer (restarting) waits for it before its attempts count as failures")
		storeWait      = flag.Duration("image-store-wait", agent.DefaultImageStoreWait, "how long a task waits for an unavailable image store (its directory without the store's identity file: an NFS mount not there yet) before it fails")
		imageStore     = flag.String("image-store", "/var/lib/kubenova-images", "directory of the image store, shared with the manager and the other nodes (Glance's filesystem store)")
		imageGrace     = flag.Duration("image-cache-grace", agent.DefaultImageCacheGrace, "how long a cached image no instance of the node uses is kept (Nova's remove_unused_original_minimum_age_seconds)")
		sweepEvery     = flag.Duration("orphan-sweep-interval", agent.DefaultSweepInterval, "how often the agent looks for the domains and files of instances that vanished or moved away, and for unused cached images, besides at its start (Nova's running_deleted_instance_poll_interval)")
		quarantineWait = flag.Duration("quarantine-grace", agent.DefaultQuarantineGrace, "how long the files of an instance that vanished without its terminate are kept in quarantine before they are deleted; 0 keeps them until an administrator removes them")
		leaseNamespace = flag.String("lease-namespace", "kubenova-system", "namespace of the agents' heartbeat Leases")
		leaseDuration  = flag.Duration("lease-duration", 40*time.Second, "how long one heartbeat vouches for the node")
		metricsAddr    = flag.String("metrics-bind-address", "0", "address of the metrics endpoint; 0 disables it")
		metricsSecure  = flag.Bool("metrics-secure", true, "serve the metrics over HTTPS to callers whose token may get the non-resource URL /metrics (the ClusterRole kubenova-metrics-reader); false serves plain HTTP to anyone")
		probeAddr      = flag.String("health-probe-bind-address", "0", "address of the health probes; 0 disables them")
		consoleAddr    = flag.String("console-bind-address", "0", "address of the console-log service (HTTPS, for the manager only, which relays the logs to users); 0 disables it")
		advertise      = flag.String("advertise-address", "", "the node address the manager reaches the console-log service at (default: the host of --console-bind-address)")
		consoleClients = flag.String("console-clients", "system:serviceaccount:kubenova-system:kubenova-manager", "comma-separated users the console-log service serves: the manager's service account")
		shutdownWait   = flag.Duration("shutdown-timeout", agent.DefaultShutdownTimeout, "how long a guest has to power off after the ACPI power button before it is powered off (Nova's shutdown_timeout)")
		rebootWait     = flag.Duration("soft-reboot-timeout", agent.DefaultRebootTimeout, "how long a guest has to answer a soft reboot before it is rebooted hard (Nova's wait_soft_reboot_seconds)")
		workers        = flag.Int("workers", agent.DefaultWorkers, "how many instances the agent works on at once")
		reservedMemory = flag.Int64("reserved-memory-mib", 512, "memory held back for the node itself (Nova's reserved_host_memory_mb)")
		reservedVCPUs  = flag.Int64("reserved-vcpus", 0, "vCPUs held back for the node itself (Nova's reserved_host_cpus)")
		reservedDisk   = flag.Int64("reserved-disk-gib", 0, "disk held back for the node itself (Nova's reserved_host_disk_mb, in GiB)")
		sim            simulation
	)
	flag.IntVar(&sim.nodes, "simulate-nodes", 0, "with --driver=fake: simulate this many nodes in one process, named <node-name>-001 on, creating their Node objects")
	flag.Int64Var(&sim.vcpus, "simulated-vcpus", 64, "with --driver=fake: vCPUs of each simulated node")
	flag.Int64Var(&sim.memoryMiB, "simulated-memory-mib", 256*1024, "with --driver=fake: memory of each simulated node")
	flag.Int64Var(&sim.diskGiB, "simulated-disk-gib", 4096, "with --driver=fake: disk of each simulated node")
	flag.StringVar(&sim.zone, "simulated-zone", "zone-1", "with --simulate-nodes: the zone label of the simulated nodes")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	logger := ctrl.Log.WithName("agent")
	if *nodeName == "" {
		return errors.New("--node-name (or $NODE_NAME) is required")
	}
	if *leaseDuration < 4*time.Second {
		return fmt.Errorf("--lease-duration must be at least 4s, not %s", *leaseDuration)
	}
	if *migrationURI == "" {
		*migrationURI = *libvirtURI
	}
	*migrationURI = agent.BracketIPv6Host(*migrationURI)
	consoleHost := consoleAdvertise(*consoleAddr, *advertise)
	if ip := net.ParseIP(consoleHost); *consoleAddr != "0" && *consoleAddr != "" && (consoleHost == "" || ip != nil && ip.IsUnspecified()) {
		return errors.New("--console-bind-address listens on every address: say which one the manager reaches with --advertise-address")
	}
	nodeNetworks, err := agent.ParseNetworks(*networks)
	if err != nil {
		return err
	}
	cfg := ctrl.GetConfigOrDie()
	base := agent.Node{
		Name: *nodeName, MigrationURI: *migrationURI, AgentVersion: version.Version,
		Reserved:       v1.Resources{VCPUs: *reservedVCPUs, MemoryMiB: *reservedMemory, DiskGiB: *reservedDisk},
		LeaseNamespace: *leaseNamespace, LeaseDuration: *leaseDuration,
		ShutdownTimeout: *shutdownWait, RebootTimeout: *rebootWait, ImageCacheGrace: *imageGrace, QuarantineGrace: *quarantineWait, SweepInterval: *sweepEvery, Workers: *workers,
		MetricsAddr: *metricsAddr, MetricsSecure: *metricsSecure, ProbeAddr: *probeAddr, SharedStorage: *sharedStorage, MigrationTLS: *migrationTLS,
		MigrationTimeoutPerGiB: *migrationWait, ImageStoreWait: *storeWait, HypervisorWait: *libvirtWait, TaskAttemptTimeout: *attemptWait, MigrationBandwidthMiBs: *migrationRate, Networks: nodeNetworks,
		ConsoleAddr: *consoleAddr, ConsoleAdvertise: consoleHost, ConsoleClients: strings.FieldsFunc(*consoleClients, func(r rune) bool { return r == ',' || r == ' ' }),
	}
	ctx := ctrl.SetupSignalHandler()

	switch *driverName {
	case "libvirt":
		if sim.nodes > 0 {
			return errors.New("--simulate-nodes needs --driver=fake")
		}
		virtTypes, err := agent.NewVirtTypeChooser(*virtTypeFlag, "/proc/cpuinfo")
		if err != nil {
			return err
		}
		drv, err := libvirt.New(*libvirtURI)
		if err != nil {
			return err
		}
		defer func() { _ = drv.Close() }()
		store := &storage.Node{Root: *storageRoot, Images: &imagestore.Dir{Root: *imageStore}}
		if err := store.RemoveStaleDownloads(10 * time.Minute); err != nil {
			return err
		}
		base.Driver, base.Storage, base.VirtTypes = drv, store, virtTypes
		mgr, err := agent.NewManager(cfg, base)
		if err != nil {
			return err
		}
		logger.Info("starting", "libvirt", *libvirtURI, "storageRoot", *storageRoot)
		return mgr.Start(ctx)
	case "fake":
		return simulate(ctx, cfg, base, sim, *storageRoot)
	default:
		return fmt.Errorf("--driver must be libvirt or fake, not %q", *driverName)
	}
}

// simulate runs one simulated node, or sim.nodes of them, until ctx ends. Each has its own fake
// hypervisor, storage directory (records only: disks are empty files) and manager, so that the
// API server sees what it would see from as many real agents: one watch, one Lease and one
// Hypervisor per node.
func simulate(ctx context.Context, cfg *rest.Config, base agent.Node, sim simulation, storageRoot string) error {
	logger := ctrl.Log.WithName("agent")
	names := []string{base.Name}
	if sim.nodes > 0 {
		names = names[:0]
		for i := 1; i <= sim.nodes; i++ {
			names = append(names, fmt.Sprintf("%s-%03d", base.Name, i))
		}
		if err := ensureNodes(ctx, cfg, names, sim); err != nil {
			return err
		}
	}
	mgrs := make([]manager.Manager, 0, len(names))
	for _, name := range names {
		n := base
		n.Name = name
		n.VirtTypes = agent.FixedVirtType(v1.VirtTypeQEMU)
		host := fake.NewHost(driver.HostInfo{Hostname: name, HostUUID: "simulated-" + name,
			VCPUs: sim.vcpus, MemoryMiB: sim.memoryMiB, LibvirtVersion: "simulated", QEMUVersion: "simulated"})
		// The simulated nodes of one process migrate to one another.
		n.MigrationURI = "fake://" + name
		host.Serve(n.MigrationURI)
		n.Driver = host
		n.Storage = &storage.Node{Root: filepath.Join(storageRoot, name)}
		n.Disks = &storage.SimulatedDisks{Node: n.Storage, Capacity: sim.diskGiB}
		mgr, err := agent.NewManager(cfg, n)
		if err != nil {
			return err
		}
		mgrs = append(mgrs, mgr)
	}
	logger.Info("simulating nodes", "count", len(names), "first", names[0], "storageRoot", storageRoot)
	errs := make(chan error, len(mgrs))
	var wg sync.WaitGroup
	for _, mgr := range mgrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- mgr.Start(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// ensureNodes creates the Node objects of simulated nodes that do not have one yet, and reports
// their capacity and allocatable, as a kubelet registers its node (with no kubelet version: no
// kubelet admits their pods).
func ensureNodes(ctx context.Context, cfg *rest.Config, names []string, sim simulation) error {
	c, err := client.New(cfg, client.Options{Scheme: kubescheme.New()})
	if err != nil {
		return err
	}
	resources := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(sim.vcpus, resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(sim.memoryMiB<<20, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(110, resource.DecimalSI),
	}
	for _, name := range names {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname: name, scheduler.ZoneLabel: sim.zone, "kubenova.io/simulated": "true"}}}
		if err := c.Create(ctx, node); apierrors.IsAlreadyExists(err) {
			if err := c.Get(ctx, client.ObjectKeyFromObject(node), node); err != nil {
				return fmt.Errorf("node %s: %w", name, err)
			}
		} else if err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		if len(node.Status.Allocatable) > 0 {
			continue
		}
		node.Status.Capacity, node.Status.Allocatable = resources, resources
		if err := c.Status().Update(ctx, node); err != nil {
			return fmt.Errorf("node %s: report its allocatable: %w", name, err)
		}
	}
	return nil
}

// consoleAdvertise is the address published for the console-log service: --advertise-address,
// else the host it listens on.
func consoleAdvertise(addr, advertise string) string {
	if advertise != "" {
		return advertise
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return host
}
