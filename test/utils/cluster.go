package utils

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Cluster is kubenova running for real on one machine: kube-apiserver and etcd, the manager,
// and one agent per libvirt "host" (its own libvirtd in its own mount and UTS namespace), each
// with a Node object. `make dev` and the e2e suite both start one.
type Cluster struct {
	*Env
	// WorkDir holds the kubeconfigs, the hosts' state and disks, and the processes' logs.
	WorkDir string
	// Kubeconfig is an ordinary user's (TenantUser, with the edit role in the namespaces
	// the tests use): Kubectl and kubectl-nova run with it.
	Kubeconfig string
	// CloudAdminKubeconfig is the cloud administrator's (CloudAdmin, in kubenova:admins):
	// flavors, hypervisors, migrations to a chosen node, evacuation.
	CloudAdminKubeconfig string
	// StrangerKubeconfig is a person's who has no rights at all: what everyone is refused.
	StrangerKubeconfig string
	// AdminKubeconfig is system:masters', for kube-controller-manager and the simulated
	// fleet (one process playing many nodes has no single node's identity).
	AdminKubeconfig string
	Hosts           []Host
	// Nodes are the hosts as real nodes, in a cluster StartDeployedCluster started; empty in
	// the others, whose agents run as processes beside Node objects that no kubelet keeps.
	Nodes []DeployedNode
	// Network is the provider network every host has (hack/libvirt-hosts.sh).
	Network ProviderNetwork
	// ImageStore is the image store's directory, shared by the manager and every agent as
	// shared storage would be.
	ImageStore string
	// ImageSources is a directory the image service imports file sources from, besides the
	// test guest's (BinDir()/guest); tests put their own images there.
	ImageSources string
	// ManagerMetrics is the URL of the manager's metrics endpoint (HTTPS, for callers with
	// the kubenova-metrics-reader role, as deployed).
	ManagerMetrics string
	// ManagerSubresources is where the manager serves its aggregated API (console logs), on
	// the hosts' bridge; empty in a cluster without hosts.
	ManagerSubresources string

	procs         []*exec.Cmd
	managerConfig string
	// attached: another process started the cluster and owns its processes (AttachCluster).
	attached bool
}

// ProviderNetwork is the one network of the test cluster: a Linux bridge with a DHCP server
// that every host plugs guests into, as compute nodes share a provider network.
type ProviderNetwork struct {
	// Name is what instances put in spec.networks.
	Name string
	// Bridge is the Linux bridge's name; Gateway its address, in CIDR.
	Bridge, Gateway, CIDR string
}

// ProviderNetworkName is the name of the test cluster's network.
const ProviderNetworkName = "provider"

// Host is one libvirt host playing a compute node.
type Host struct {
	Name        string
	URI         string
	StorageRoot string
	// SharedStorage: the storage root is shared with other hosts of the cluster, as an NFS
	// export mounted on several nodes is (its agent runs with --shared-storage).
	SharedStorage bool
	// Metrics is the URL of its agent's metrics endpoint (HTTPS, as the manager's).
	Metrics string
	// ConsoleAddr is where its agent serves console logs to the manager.
	ConsoleAddr string
}

// ClusterOption changes how StartCluster lays the cluster out.
type ClusterOption func(*clusterLayout)

type clusterLayout struct {
	sharedHosts int
	// libvirtProfile is hack/libvirt-hosts.sh's LIBVIRT_HOST_PROFILE: "" (test) or production.
	libvirtProfile string
}

// WithSharedStorage has the first n hosts share one storage root (DIR/hosts/shared-storage),
// the others keeping their own, so that live migrations and evacuations of both kinds can run.
func WithSharedStorage(n int) ClusterOption {
	return func(l *clusterLayout) { l.sharedHosts = n }
}

// StartControlPlane starts kube-apiserver, etcd and kube-controller-manager, with kubenova's
// CRDs, admission policies and RBAC and the people's kubeconfigs, but no manager and no hosts.
func StartControlPlane(ctx context.Context, workDir string, opts ...EnvOption) (*Cluster, error) {
	return startControlPlane(ctx, workDir, opts...)
}

// startControlPlane starts kube-apiserver and etcd, writes the kubeconfigs and creates
// kubenova's namespace and identities. On error the cluster is stopped.
func startControlPlane(ctx context.Context, workDir string, opts ...EnvOption) (*Cluster, error) {
	if err := os.MkdirAll(filepath.Join(workDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	env, err := StartEnv(append([]EnvOption{withFrontProxy(filepath.Join(workDir, "front-proxy"))}, opts...)...)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Env: env, WorkDir: workDir,
		ImageStore: filepath.Join(workDir, "image-store"), ImageSources: filepath.Join(workDir, "image-sources")}
	// A fresh store per cluster: the keys are the UIDs of objects of one API server.
	for _, dir := range []string{c.ImageStore, c.ImageSources} {
		if err := os.RemoveAll(dir); err != nil {
			c.Stop()
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := c.writeKubeconfig(); err != nil {
		c.Stop()
		return nil, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: SystemNamespace}}
	if err := c.Client.Create(ctx, ns); err != nil {
		c.Stop()
		return nil, fmt.Errorf("create namespace %s: %w", SystemNamespace, err)
	}
	if err := c.startControllerManager(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.setUpIdentities(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// StartCluster starts a control plane, n libvirt hosts with their agents, and the manager.
func StartCluster(ctx context.Context, workDir string, n int, opts ...ClusterOption) (c *Cluster, err error) {
	var layout clusterLayout
	for _, o := range opts {
		o(&layout)
	}
	c, err = startControlPlane(ctx, workDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := c.startHosts(ctx, n, layout); err != nil {
		return c, err
	}
	for _, h := range c.Hosts {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: h.Name, Labels: map[string]string{
			"kubernetes.io/hostname": h.Name, "topology.kubernetes.io/zone": "zone-1"}}}
		if err := c.Client.Create(ctx, node); err != nil {
			return c, fmt.Errorf("create node %s: %w", h.Name, err)
		}
		if err := c.StartAgent(h); err != nil {
			return c, err
		}
	}
	if err := c.StartManager(); err != nil {
		return c, err
	}
	return c, nil
}

// StartManager starts the manager, as its service account.
func (c *Cluster) StartManager(args ...string) error {
	if c.managerConfig == "" {
		kc, err := c.managerKubeconfig(context.Background())
		if err != nil {
			return err
		}
		c.managerConfig = kc
	}
	if c.ManagerMetrics == "" {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.ManagerMetrics = fmt.Sprintf("https://127.0.0.1:%d/metrics", port)
	}
	if c.ManagerSubresources == "" && c.Network.Gateway != "" {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.ManagerSubresources = net.JoinHostPort(c.Network.Gateway, strconv.Itoa(port))
		if err := c.routeAggregatedAPI(context.Background(), c.ManagerSubresources); err != nil {
			return err
		}
	}
	if c.ManagerSubresources != "" {
		args = append([]string{"--subresources-bind-address=" + c.ManagerSubresources}, args...)
	}
	return c.start("manager", c.managerConfig, filepath.Join(BinDir(), "manager"),
		append([]string{"--health-probe-bind-address=0", "--metrics-bind-address=" + hostPort(c.ManagerMetrics),
			"--node-down-grace=5s", "--image-store=" + c.ImageStore,
			"--image-source-dirs=" + filepath.Join(BinDir(), "guest") + "," + c.ImageSources}, args...)...)
}

// Process is the running process of the manager ("manager") or of an agent ("agent"), the
// first one started; nil if none runs.
func (c *Cluster) Process(binary string) *os.Process {
	for _, cmd := range c.procs {
		if filepath.Base(cmd.Path) == binary {
			return cmd.Process
		}
	}
	return nil
}

// AgentProcess is the running process of one host's agent; nil if none runs.
func (c *Cluster) AgentProcess(node string) *os.Process {
	for _, cmd := range c.procs {
		if filepath.Base(cmd.Path) == "agent" && containsArg(cmd.Args, "--node-name="+node) {
			return cmd.Process
		}
	}
	return nil
}

// StopManager ends the manager, as a crash or an upgrade would.
func (c *Cluster) StopManager() error {
	return c.stop(func(cmd *exec.Cmd) bool { return filepath.Base(cmd.Path) == "manager" }, "manager")
}

// writeKubeconfig writes system:masters' kubeconfig.
func (c *Cluster) writeKubeconfig() error {
	user, err := c.ControlPlane.AddUser(envtest.User{Name: "kubenova-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("add admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	c.AdminKubeconfig = filepath.Join(c.WorkDir, "identities", "admin.kubeconfig")
	return writeFile(c.AdminKubeconfig, kc)
}

func (c *Cluster) startHosts(ctx context.Context, n int, layout clusterLayout) error {
	dir := filepath.Join(c.WorkDir, "hosts")
	script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
	// A previous run cut short may have left hosts running; stop them before starting anew.
	_ = exec.CommandContext(ctx, script, "stop", dir).Run()
	start := exec.CommandContext(ctx, script, "start", dir, fmt.Sprint(n))
	if layout.libvirtProfile != "" {
		start.Env = append(os.Environ(), "LIBVIRT_HOST_PROFILE="+layout.libvirtProfile)
	}
	out, err := start.CombinedOutput()
	if err != nil {
		return fmt.Errorf("start libvirt hosts: %w: %s", err, out)
	}
	c.Network = ProviderNetwork{Name: ProviderNetworkName}
	for file, field := range map[string]*string{"bridge": &c.Network.Bridge, "gateway": &c.Network.Gateway, "cidr": &c.Network.CIDR} {
		b, err := os.ReadFile(filepath.Join(dir, "network", file))
		if err != nil {
			return fmt.Errorf("the hosts' network: %w", err)
		}
		*field = strings.TrimSpace(string(b))
	}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("host-%d", i)
		uri, err := os.ReadFile(filepath.Join(dir, name, "uri"))
		if err != nil {
			return err
		}
		port, err := freePort()
		if err != nil {
			return err
		}
		consolePort, err := freePort()
		if err != nil {
			return err
		}
		h := Host{Name: name, URI: strings.TrimSpace(string(uri)), StorageRoot: filepath.Join(dir, name, "storage"),
			Metrics: fmt.Sprintf("https://127.0.0.1:%d/metrics", port), ConsoleAddr: fmt.Sprintf("127.0.0.1:%d", consolePort)}
		if i <= layout.sharedHosts {
			h.StorageRoot, h.SharedStorage = filepath.Join(dir, "shared-storage"), true
		}
		c.Hosts = append(c.Hosts, h)
	}
	return nil
}

// The agents' guest timeouts in the test cluster: short, so that a guest that ignores ACPI
// is powered off or rebooted hard within a spec's patience, long enough for a TCG guest that
// obeys.
const (
	AgentShutdownTimeout = 20 * time.Second
	AgentRebootTimeout   = 20 * time.Second
)

// StartAgent starts the agent of one host, with a token bound to its Node; args are added to
// its flags.
func (c *Cluster) StartAgent(h Host, args ...string) error {
	if h.SharedStorage {
		args = append([]string{"--shared-storage"}, args...)
	}
	kubeconfig, err := c.agentKubeconfig(context.Background(), h.Name)
	if err != nil {
		return err
	}
	return c.start("agent-"+h.Name, kubeconfig, filepath.Join(BinDir(), "agent"), append([]string{
		"--node-name=" + h.Name, "--libvirt-uri=" + h.URI, "--virt-type=qemu", "--metrics-bind-address=" + hostPort(h.Metrics),
		"--console-bind-address=" + h.ConsoleAddr, "--storage-root=" + h.StorageRoot, "--lease-duration=12s",
		"--shutdown-timeout=" + AgentShutdownTimeout.String(), "--soft-reboot-timeout=" + AgentRebootTimeout.String(),
		"--image-store=" + c.ImageStore, "--networks=" + c.Network.Name + "=bridge:" + c.Network.Bridge}, args...)...)
}

// errAttached refuses to start, stop or kill a process of a cluster this process only attached to.
var errAttached = errors.New("this process attached to a cluster another process started: only that one may start, stop or kill its processes (mark the spec Serial)")

// start runs a binary in the background with a kubeconfig, logging to logs/<name>.log.
func (c *Cluster) start(name, kubeconfig, binary string, args ...string) error {
	if c.attached {
		return errAttached
	}
	// Append, so that a restarted process keeps its predecessor's log.
	logFile, err := os.OpenFile(filepath.Join(c.WorkDir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	c.procs = append(c.procs, cmd)
	return nil
}

// Kubectl runs bin/kubectl against the cluster as TenantUser.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlWith(ctx, c.Kubeconfig, args...)
}

// KubectlAsCloudAdmin runs bin/kubectl as CloudAdmin.
func (c *Cluster) KubectlAsCloudAdmin(ctx context.Context, args ...string) (string, error) {
	return c.KubectlWith(ctx, c.CloudAdminKubeconfig, args...)
}

// KubectlWith runs bin/kubectl with a kubeconfig (one of Namespace's, say).
func (c *Cluster) KubectlWith(ctx context.Context, kubeconfig string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(BinDir(), "kubectl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// What kubectl prints besides its answer (a discovery hiccup while the manager's
	// aggregated API restarts, a warning) stays out of a successful answer that specs parse;
	// a failure returns both, for its message.
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// RestartLibvirtd restarts one host's libvirtd; its guests keep running.
func (c *Cluster) RestartLibvirtd(ctx context.Context, h Host) error {
	if c.attached {
		return errAttached
	}
	script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
	out, err := exec.CommandContext(ctx, script, "restart-daemon", filepath.Join(c.WorkDir, "hosts"), h.Name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("restart libvirtd of %s: %w: %s", h.Name, err, out)
	}
	return nil
}

// KillHost ends one host's libvirtd and QEMUs with SIGKILL, as a power failure of the node
// would: its guests die, its disks stay. Its agent is the caller's to kill.
func (c *Cluster) KillHost(ctx context.Context, h Host) error {
	return c.hostScript(ctx, "kill-host", h)
}

// StartHost starts one host's libvirtd again after KillHost; its agent is the caller's to start.
func (c *Cluster) StartHost(ctx context.Context, h Host) error {
	return c.hostScript(ctx, "start-host", h)
}

func (c *Cluster) hostScript(ctx context.Context, command string, h Host) error {
	if c.attached {
		return errAttached
	}
	script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
	out, err := exec.CommandContext(ctx, script, command, filepath.Join(c.WorkDir, "hosts"), h.Name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", command, h.Name, err, out)
	}
	return nil
}

// Virsh runs virsh against one host.
func (h Host) Virsh(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", h.URI}, args...)...).CombinedOutput()
	return string(out), err
}

// Stop ends the processes, the libvirt hosts (and their guests) and the control plane. It is
// safe to call on a cluster that only partly started.
func (c *Cluster) Stop() {
	if c.attached {
		return
	}
	// Kubelets first, so that nothing restarts the pods the stop ends.
	c.stopNodes()
	for i := len(c.procs) - 1; i >= 0; i-- {
		stopProcess(c.procs[i])
	}
	c.procs = nil
	if len(c.Nodes) > 0 {
		cleanUpKubeProxy()
	}
	if len(c.Hosts) > 0 || fileExists(filepath.Join(c.WorkDir, "hosts", "hosts")) {
		script := filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh")
		if out, err := exec.Command(script, "stop", filepath.Join(c.WorkDir, "hosts")).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "stop libvirt hosts: %v: %s\n", err, out)
		}
	}
	if c.Env != nil {
		_ = c.Env.Stop()
	}
}

// stopProcess sends SIGTERM to the process group, then SIGKILL after ten seconds.
func stopProcess(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // a signalled process exits non-zero; that is the point
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// KillManager ends the manager with SIGKILL, as a crash would: no cleanup runs.
func (c *Cluster) KillManager() error {
	return c.kill(func(cmd *exec.Cmd) bool { return filepath.Base(cmd.Path) == "manager" }, "manager")
}

// KillAgent ends one host's agent with SIGKILL, as a crash would (its libvirtd and guests stay).
func (c *Cluster) KillAgent(h Host) error {
	return c.kill(func(cmd *exec.Cmd) bool {
		return filepath.Base(cmd.Path) == "agent" && containsArg(cmd.Args, "--node-name="+h.Name)
	}, "agent of "+h.Name)
}

// kill sends SIGKILL to the first process that matches and reaps it.
func (c *Cluster) kill(match func(*exec.Cmd) bool, what string) error {
	if c.attached {
		return errAttached
	}
	for i, cmd := range c.procs {
		if match(cmd) {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait() // a killed process exits non-zero; that is the point
			c.procs = append(c.procs[:i], c.procs[i+1:]...)
			return nil
		}
	}
	return errors.New("no process runs for the " + what)
}

// StopAgent ends one host's agent, as a node failure would (its libvirtd and guests stay).
func (c *Cluster) StopAgent(h Host) error {
	return c.stop(func(cmd *exec.Cmd) bool {
		return filepath.Base(cmd.Path) == "agent" && containsArg(cmd.Args, "--node-name="+h.Name)
	}, "agent of "+h.Name)
}

// stop ends the first process that matches.
func (c *Cluster) stop(match func(*exec.Cmd) bool, what string) error {
	if c.attached {
		return errAttached
	}
	for i, cmd := range c.procs {
		if match(cmd) {
			stopProcess(cmd)
			c.procs = append(c.procs[:i], c.procs[i+1:]...)
			return nil
		}
	}
	return errors.New("no process runs for the " + what)
}

func containsArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// GuestImage is the test guest built by hack/build-test-guest.sh, and its digest.
func GuestImage() (path, sha string, err error) {
	return GuestImageVariant("kubenova-test-guest")
}

// GuestImageNoACPI is the variant of the test guest that ignores the ACPI power button.
func GuestImageNoACPI() (path, sha string, err error) {
	return GuestImageVariant("kubenova-test-guest-noacpi")
}

// GuestImageVariant is one of the images hack/build-test-guest.sh builds, and its digest.
func GuestImageVariant(name string) (path, sha string, err error) {
	path = filepath.Join(BinDir(), "guest", name+".qcow2")
	sum, err := os.ReadFile(path + ".sha256")
	if err != nil {
		return "", "", fmt.Errorf("test guest missing (run make test-guest): %w", err)
	}
	return path, strings.TrimSpace(string(sum)), nil
}

// RenderSample reads a manifest of config/samples with ${GUEST_IMAGE} and ${GUEST_SHA256}
// filled in.
func RenderSample(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(RepoRoot(), "config", "samples", name))
	if err != nil {
		return nil, err
	}
	img, sha, err := GuestImage()
	if err != nil {
		return nil, err
	}
	return []byte(strings.NewReplacer("${GUEST_IMAGE}", img, "${GUEST_SHA256}", sha).Replace(string(b))), nil
}

// WaitHypervisorsUp waits until every host's Hypervisor is Up with capacity reported: until
// then the scheduler does not see the node, and what is applied before lands on the others.
func (c *Cluster) WaitHypervisorsUp(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var notUp []string
		for _, h := range c.Hosts {
			hv := &v1.Hypervisor{}
			if err := c.Client.Get(ctx, client.ObjectKey{Name: h.Name}, hv); err != nil ||
				hv.Status.State != v1.HypervisorUp || hv.Status.Capacity.VCPUs == 0 {
				notUp = append(notUp, h.Name)
			}
		}
		if len(notUp) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hypervisors %v not Up within %s (logs/agent-*.log)", notUp, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond): // polling the API server
		}
	}
}
