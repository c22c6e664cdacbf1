package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/agent"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/fake"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/internal/storage"
	"github.com/kubenova/kubenova/test/utils"
)

const (
	systemNamespace = "kubenova-system"
	imageName       = "chaos-image"
	flavorSmall     = "chaos-small"
	flavorLarge     = "chaos-large"
)

// nodes are the cluster's two compute nodes, each with storage of its own.
var nodes = []string{"chaos-node-1", "chaos-node-2"}

// sweepInterval is how often the agents look for orphaned and stale domains and files.
const sweepInterval = 5 * time.Second

// smallNode's storage root is a filesystem of smallNodeMiB.
const (
	smallNode    = "chaos-node-2"
	smallNodeMiB = 256
)

// cluster is a real API server and etcd, with kubenova's manager and two agents as killable
// processes over fake hypervisors and real storage directories (disks made by qemu-img).
type cluster struct {
	env     *utils.Env
	k8s     client.Client
	manager *process
	agents  map[string]*process
	hosts   map[string]*fake.Driver
	roots   map[string]string
	logPath string
	// proxy carries every process's requests to the API server.
	proxy *apiProxy
	// mounts are the filesystems the cluster mounted, unmounted when it stops.
	mounts []string
	// sources is the directory the image service imports files from.
	sources string
}

// startCluster starts the control plane and the processes, and waits until both nodes are up
// and the image is Available.
func startCluster(ctx context.Context, workDir string) (*cluster, error) {
	logPath := filepath.Join(workDir, "processes.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(logFile), zap.UseDevMode(true)))
	env, err := utils.StartEnv()
	if err != nil {
		return nil, err
	}
	c := &cluster{env: env, k8s: env.Client, agents: map[string]*process{}, hosts: map[string]*fake.Driver{},
		roots: map[string]string{}, logPath: logPath}
	if err := c.k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: systemNamespace}}); err != nil {
		return c, err
	}
	store := filepath.Join(workDir, "images")
	sources := filepath.Join(workDir, "sources")
	c.sources = sources
	for _, dir := range []string{store, sources} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return c, err
		}
	}
	upstream, err := url.Parse(env.Config.Host)
	if err != nil {
		return c, err
	}
	if c.proxy, err = startProxy(upstream.Host); err != nil {
		return c, err
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Host = "https://" + c.proxy.addr()
	c.manager = &process{name: "manager", cfg: cfg, build: func(cfg *rest.Config, _ *processRun) (manager.Manager, error) {
		return controllers.NewManager(cfg, controllers.ManagerOptions{LeaseNamespace: systemNamespace, NodeDownGrace: 2 * time.Second,
			MetricsAddr: "0", ProbeAddr: "0", Workers: 4, ImageStore: store, ImageSourceDirs: []string{sources},
			MaxImageBytes: imagestore.DefaultMaxImageBytes, MissingInstanceTimeout: time.Minute, RestartableInProcess: true})
	}}
	for _, node := range nodes {
		if err := c.k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node,
			Labels: map[string]string{corev1.LabelHostname: node}}}); err != nil {
			return c, err
		}
		host := fake.NewHost(driver.HostInfo{Hostname: node, HostUUID: "chaos-" + node, VCPUs: 64, MemoryMiB: 262144,
			LibvirtVersion: "fake", QEMUVersion: "fake"})
		uri := "fake://" + node
		host.Serve(uri)
		root := filepath.Join(workDir, node)
		if node == smallNode {
			// A filesystem of its own, small enough to fill (TestAFullStorageRoot).
			if err := os.MkdirAll(root, 0o755); err != nil {
				return c, err
			}
			if err := syscall.Mount("tmpfs", root, "tmpfs", 0, fmt.Sprintf("size=%dm", smallNodeMiB)); err != nil {
				return c, fmt.Errorf("mount a tmpfs as %s's storage root (the chaos suite runs as root): %w", node, err)
			}
			c.mounts = append(c.mounts, root)
		}
		c.hosts[node], c.roots[node] = host, root
		c.agents[node] = &process{name: "agent " + node, cfg: cfg, build: func(cfg *rest.Config, run *processRun) (manager.Manager, error) {
			return agent.NewManager(cfg, agent.Node{Name: node, Driver: &stepDriver{Driver: host, run: run},
				Storage:   &storage.Node{Root: root, Images: &imagestore.Dir{Root: store}},
				VirtTypes: agent.FixedVirtType(v1.VirtTypeQEMU), MigrationURI: uri, AgentVersion: "chaos",
				LeaseNamespace: systemNamespace, LeaseDuration: 4 * time.Second,
				ShutdownTimeout: 5 * time.Second, RebootTimeout: 5 * time.Second, TaskAttemptTimeout: 20 * time.Second,
				ImageStoreWait: time.Minute, MetricsAddr: "0", ProbeAddr: "0", Workers: 2,
				// Sweeps often, so that stale guests and files meet it within a case.
				SweepInterval: sweepInterval})
		}}
	}
	for _, p := range c.processes() {
		if err := p.start(); err != nil {
			return c, err
		}
	}
	for _, node := range nodes {
		if err := waitFor(ctx, time.Minute, "node "+node+" up", func() (bool, error) {
			hv := &v1.Hypervisor{}
			if err := c.k8s.Get(ctx, client.ObjectKey{Name: node}, hv); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			return hv.Status.State == v1.HypervisorUp && hv.Status.StorageID != "", nil
		}); err != nil {
			return c, err
		}
	}
	for name, vcpus := range map[string]int32{flavorSmall: 1, flavorLarge: 2} {
		if err := c.k8s.Create(ctx, &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1.FlavorSpec{VCPUs: vcpus, MemoryMiB: 128 * vcpus}}); err != nil {
			return c, err
		}
	}
	return c, c.createImage(ctx, sources)
}

// createImage makes a small qcow2 and has the image service import it.
func (c *cluster) createImage(ctx context.Context, sources string) error {
	path := filepath.Join(sources, imageName+".qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", path, "64M").CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create: %w: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	img := &v1.ClusterImage{ObjectMeta: metav1.ObjectMeta{Name: imageName},
		Spec: v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: hex.EncodeToString(sum[:]), DiskFormat: v1.DiskFormatQCOW2}}
	if err := c.k8s.Create(ctx, img); err != nil {
		return err
	}
	return waitFor(ctx, time.Minute, "the image Available", func() (bool, error) {
		if err := c.k8s.Get(ctx, client.ObjectKeyFromObject(img), img); err != nil {
			return false, err
		}
		return img.Status.Phase == v1.ImageAvailable, nil
	})
}

func (c *cluster) processes() []*process {
	out := []*process{c.manager}
	for _, node := range nodes {
		out = append(out, c.agents[node])
	}
	return out
}

// stop ends every process and the control plane.
func (c *cluster) stop() {
	for _, p := range c.processes() {
		if p != nil && p.current() != nil {
			_ = p.stop(30 * time.Second)
		}
	}
	if c.proxy != nil {
		c.proxy.close()
	}
	for _, m := range c.mounts {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	if c.env != nil {
		_ = c.env.Stop()
	}
}

// runningCopies lists the nodes whose hypervisor runs (or holds paused) a guest of uid.
func (c *cluster) runningCopies(ctx context.Context, uid string) ([]string, error) {
	var out []string
	for _, node := range nodes {
		st, err := c.hosts[node].State(ctx, uid)
		if err != nil {
			return nil, err
		}
		if st.Power == v1.PowerStateRunning || st.Power == v1.PowerStatePaused {
			out = append(out, node)
		}
	}
	return out, nil
}

// rootDisk is where node's storage keeps the root disk of uid.
func (c *cluster) rootDisk(node, uid string) (string, error) {
	return (&storage.Node{Root: c.roots[node]}).RootDisk(uid)
}

// panics counts the reconciles that panicked in this test process, over every controller.
func panics() (float64, error) {
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		return 0, err
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_panics_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			total += counterValue(m)
		}
	}
	return total, nil
}

func counterValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return 0
}

// waitFor polls cond every 100 ms until it holds, fails, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("%s: not within %s: %w", what, timeout, last)
			}
			return fmt.Errorf("%s: not within %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tail is the end of the processes' log, for a failure's message.
func (c *cluster) tail(lines int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
