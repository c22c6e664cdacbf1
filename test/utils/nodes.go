package utils

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kubenova/kubenova/internal/scheme"
)

// The deployed profile's cluster: kubenova as a cluster administrator installs it. Each libvirt
// host is also a real Kubernetes node (containerd and a kubelet in the host's namespaces,
// hack/kube-node.sh), and the control plane is what a real cluster runs: kube-apiserver with
// Node authorization and the ServiceAccount and NodeRestriction admission plugins, the whole
// kube-controller-manager, kube-scheduler and kube-proxy. Nothing of kubenova is installed
// until Deploy.

// DeployedNode is a libvirt host that is a real node too.
type DeployedNode struct {
	Host
	// IP is the node's address (on the hosts' bridge); PodCIDR its pods' subnet.
	IP, PodCIDR string
}

// Node labels the deployed profile's nodes register with: every node is a compute node
// (config/agent's nodeSelector), the first also has the image store the manager mounts
// (config/manager's).
const (
	ComputeNodeLabel    = "kubenova.io/compute"
	ImageStoreNodeLabel = "kubenova.io/image-store"
)

// podCIDRs are the nodes' pods' subnets: node i (from 0) has 10.200.i.0/24. serviceCIDR is
// kube-apiserver's service-cluster-ip-range (envtest's default).
const (
	podCIDRs    = "10.200.0.0/16"
	serviceCIDR = "10.0.0.0/24"
)

// StartDeployedCluster starts n libvirt hosts, each a real node with the images (docker-archive
// tarballs, hack/imagebuild's) in its containerd, and a control plane for them, and waits until
// every node is Ready.
func StartDeployedCluster(ctx context.Context, workDir string, n int, images []string) (c *Cluster, err error) {
	c = &Cluster{WorkDir: workDir, ImageStore: filepath.Join(workDir, "image-store"),
		ImageSources: filepath.Join(workDir, "image-sources")}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	for _, dir := range []string{filepath.Join(workDir, "logs"), c.ImageSources} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return c, err
		}
	}
	if err := prepareImageStore(c.ImageStore); err != nil {
		return c, err
	}
	// A new cluster starts with nothing of an earlier one's: its nodes and hosts stopped (a run
	// kept with DEPLOYED_KEEP, or cut short), their disks and state removed.
	hostsDir := filepath.Join(workDir, "hosts")
	for i := 1; i <= n; i++ {
		_ = exec.CommandContext(ctx, filepath.Join(RepoRoot(), "hack", "kube-node.sh"), "stop", hostsDir, fmt.Sprintf("host-%d", i)).Run()
	}
	_ = exec.CommandContext(ctx, filepath.Join(RepoRoot(), "hack", "libvirt-hosts.sh"), "stop", hostsDir).Run()
	if err := os.RemoveAll(hostsDir); err != nil {
		return c, err
	}
	// The nodes' libvirt is set up as a distribution installs it (QEMU unprivileged, libvirt's
	// ownership handling, virtlogd), not as the other suites' hosts are.
	if err := c.startHosts(ctx, n, clusterLayout{libvirtProfile: "production"}); err != nil {
		return c, err
	}
	gateway := net.ParseIP(c.Network.Gateway).To4()
	if gateway == nil {
		return c, fmt.Errorf("the hosts' gateway %q is no IPv4 address", c.Network.Gateway)
	}
	for i, h := range c.Hosts {
		ip := net.IPv4(gateway[0], gateway[1], gateway[2], gateway[3]+byte(i+1)).String()
		if out, err := exec.CommandContext(ctx, "ip", "addr", "replace", ip+"/32", "dev", c.Network.Bridge).CombinedOutput(); err != nil {
			return c, fmt.Errorf("give node %s the address %s: %w: %s", h.Name, ip, err, out)
		}
		c.Nodes = append(c.Nodes, DeployedNode{Host: h, IP: ip, PodCIDR: fmt.Sprintf("10.200.%d.0/24", i)})
	}
	// Before the nodes join: a host restarted now starts a new namespace, which the node's
	// containerd and kubelet then enter.
	if err := c.setUpMigrationTLS(ctx); err != nil {
		return c, err
	}
	pki, err := c.startDeployedControlPlane(ctx)
	if err != nil {
		return c, err
	}
	for i, node := range c.Nodes {
		if err := c.startNode(ctx, node, i == 0, pki, images); err != nil {
			return c, err
		}
	}
	return c, c.waitNodesReady(ctx, 3*time.Minute)
}

// ManagerUID is the user and group the manager's image runs as (the Dockerfile's USER).
const ManagerUID = 65532

// prepareImageStore makes a fresh image store directory as the README's install section tells
// an administrator to: the manager's, group-writable, passing its group on (setgid), so that
// the agents (root) and the manager can each write in what the other made.
func prepareImageStore(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chown(dir, ManagerUID, ManagerUID); err != nil {
		return err
	}
	return os.Chmod(dir, 0o775|os.ModeSetgid)
}

// deployedPKI is what the nodes need of the control plane's certificates.
type deployedPKI struct {
	dir string
	// kubeletClientCA signs kube-apiserver's client certificate for the kubelets.
	kubeletClientCA string
}

// startDeployedControlPlane starts etcd and kube-apiserver on the hosts' gateway address (the
// kubelets refuse a loopback one, and pods reach it through the kubernetes Service), then
// kube-controller-manager, kube-scheduler and kube-proxy.
func (c *Cluster) startDeployedControlPlane(ctx context.Context) (*deployedPKI, error) {
	pki := &deployedPKI{dir: filepath.Join(c.WorkDir, "pki")}
	apiDir := filepath.Join(pki.dir, "apiserver")
	if err := os.RemoveAll(pki.dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(apiDir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	servingCA, err := newTestCA("kubenova-test-cluster-ca")
	if err != nil {
		return nil, err
	}
	// The names pods and nodes reach it by: the gateway (nodes, the test), the kubernetes
	// Service's cluster IP (pods' in-cluster configuration), and the Service's DNS names.
	servingCert, servingKey, err := servingCA.issue(certRequest{CommonName: "kube-apiserver", Usage: x509.ExtKeyUsageServerAuth,
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPs:      []net.IP{net.ParseIP(c.Network.Gateway), net.ParseIP("10.0.0.1"), net.ParseIP("127.0.0.1")}})
	if err != nil {
		return nil, err
	}
	kubeletCA, err := newTestCA("kubenova-test-kubelet-client-ca")
	if err != nil {
		return nil, err
	}
	kubeletClientCert, kubeletClientKey, err := kubeletCA.issue(certRequest{CommonName: "kube-apiserver-kubelet-client",
		Organizations: []string{"system:masters"}, Usage: x509.ExtKeyUsageClientAuth})
	if err != nil {
		return nil, err
	}
	saKey, saPub, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	pki.kubeletClientCA = filepath.Join(pki.dir, "kubelet-client-ca.crt")
	// envtest takes the serving certificate and the service account keys it finds in its
	// certificate directory (apiserver.crt, sa-signer.key) instead of making its own.
	files := map[string][]byte{
		filepath.Join(apiDir, "apiserver.crt"): servingCert, filepath.Join(apiDir, "apiserver.key"): servingKey,
		filepath.Join(apiDir, "sa-signer.key"): saKey, filepath.Join(apiDir, "sa-signer.crt"): saPub,
		filepath.Join(pki.dir, "ca.crt"): servingCA.PEM, pki.kubeletClientCA: kubeletCA.PEM,
		filepath.Join(pki.dir, "kubelet-client.crt"): kubeletClientCert, filepath.Join(pki.dir, "kubelet-client.key"): kubeletClientKey,
	}
	for path, b := range files {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}

	env := &envtest.Environment{BinaryAssetsDirectory: BinDir(), Scheme: scheme.New()}
	api := env.ControlPlane.GetAPIServer()
	api.CertDir = apiDir
	serving := &api.SecureServing
	serving.Address, serving.Port = c.Network.Gateway, strconv.Itoa(port)
	serving.CA = servingCA.PEM
	if err := withFrontProxy(filepath.Join(c.WorkDir, "front-proxy"))(env); err != nil {
		return nil, err
	}
	api.Configure().
		Set("advertise-address", c.Network.Gateway).
		Set("authorization-mode", "Node,RBAC").
		Set("enable-admission-plugins", "NodeRestriction").
		// envtest turns the ServiceAccount plugin off; pods need it for their tokens.
		Disable("disable-admission-plugins").
		Set("kubelet-client-certificate", filepath.Join(pki.dir, "kubelet-client.crt")).
		Set("kubelet-client-key", filepath.Join(pki.dir, "kubelet-client.key")).
		Set("kubelet-preferred-address-types", "InternalIP").
		// The manager's aggregated API is reached through its Service, by kube-proxy's rules.
		Set("enable-aggregator-routing", "false")
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd: %w", err)
	}
	c.Env = &Env{Environment: env}
	if c.Client, err = client.New(cfg, client.Options{Scheme: env.Scheme}); err != nil {
		return nil, err
	}
	if err := c.writeKubeconfig(); err != nil {
		return nil, err
	}
	bin := BinDir()
	if err := c.start("kube-controller-manager", c.AdminKubeconfig, filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+c.AdminKubeconfig, "--controllers=*", "--leader-elect=false", "--secure-port=0",
		"--root-ca-file="+filepath.Join(pki.dir, "ca.crt"),
		"--service-account-private-key-file="+filepath.Join(apiDir, "sa-signer.key")); err != nil {
		return nil, err
	}
	if err := c.start("kube-scheduler", c.AdminKubeconfig, filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig="+c.AdminKubeconfig, "--leader-elect=false", "--secure-port=0"); err != nil {
		return nil, err
	}
	// Services' cluster IPs are routed to the hosts' bridge: kube-proxy's rules rewrite what
	// goes to a Service, and what they do not (before kube-proxy has written them, say) stays on
	// the bridge instead of following the machine's default route out.
	if out, err := exec.CommandContext(ctx, "ip", "route", "replace", serviceCIDR, "dev", c.Network.Bridge).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("route %s to %s: %w: %s", serviceCIDR, c.Network.Bridge, err, out)
	}
	// One kube-proxy for the machine: the nodes share its network namespace.
	healthz, err := freePort()
	if err != nil {
		return nil, err
	}
	metrics, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := c.start("kube-proxy", c.AdminKubeconfig, filepath.Join(bin, "kube-proxy"),
		"--kubeconfig="+c.AdminKubeconfig, "--hostname-override="+c.Nodes[0].Name, "--proxy-mode=iptables",
		"--cluster-cidr="+podCIDRs, "--conntrack-max-per-core=0",
		fmt.Sprintf("--healthz-bind-address=127.0.0.1:%d", healthz), fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics)); err != nil {
		return nil, err
	}
	return pki, nil
}

// startNode starts containerd and a kubelet on one host, with a kubeconfig of the node's own
// identity (system:node:NAME), as a node joined by kubeadm has.
func (c *Cluster) startNode(ctx context.Context, node DeployedNode, imageStore bool, pki *deployedPKI, images []string) error {
	user, err := c.ControlPlane.AddUser(envtest.User{Name: "system:node:" + node.Name, Groups: []string{"system:nodes"}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(c.WorkDir, "identities", node.Name+".kubeconfig")
	if err := writeFile(kubeconfig, kc); err != nil {
		return err
	}
	labels := ComputeNodeLabel + "=true"
	if imageStore {
		labels += "," + ImageStoreNodeLabel + "=true"
	}
	cmd := exec.CommandContext(ctx, filepath.Join(RepoRoot(), "hack", "kube-node.sh"), "start",
		filepath.Join(c.WorkDir, "hosts"), node.Name)
	cmd.Env = append(os.Environ(), "BIN_DIR="+BinDir(), "KUBE_NODE_KUBECONFIG="+kubeconfig,
		"KUBE_NODE_CLIENT_CA="+pki.kubeletClientCA, "KUBE_NODE_IP="+node.IP, "KUBE_NODE_POD_CIDR="+node.PodCIDR,
		"KUBE_NODE_IMAGE_STORE="+c.ImageStore, "KUBE_NODE_IMAGE_SOURCES="+c.ImageSources, "KUBE_NODE_LABELS="+labels, "KUBE_NODE_IMAGES="+strings.Join(images, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start node %s: %w: %s", node.Name, err, out)
	}
	return nil
}

// waitNodesReady waits until every node reports Ready.
func (c *Cluster) waitNodesReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		notReady := []string{}
		for _, n := range c.Nodes {
			node := &corev1.Node{}
			if err := c.Client.Get(ctx, client.ObjectKey{Name: n.Name}, node); err != nil || !nodeReady(node) {
				notReady = append(notReady, n.Name)
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes %v not Ready within %s (their kubelet.log and containerd.log are in hosts/<node>/node)", notReady, timeout)
		}
		time.Sleep(time.Second) // polling the API server; a watch would need its own plumbing here
	}
}

func nodeReady(node *corev1.Node) bool {
	for _, cond := range node.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// stopNodes stops every node's kubelet, containerd and pods, and kube-proxy's rules.
func (c *Cluster) stopNodes() {
	script := filepath.Join(RepoRoot(), "hack", "kube-node.sh")
	for _, n := range c.Nodes {
		if out, err := exec.Command(script, "stop", filepath.Join(c.WorkDir, "hosts"), n.Name).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "stop node %s: %v: %s\n", n.Name, err, out)
		}
	}
}

// cleanUpKubeProxy removes the iptables rules kube-proxy made, once it has stopped.
func cleanUpKubeProxy() {
	if out, err := exec.Command(filepath.Join(BinDir(), "kube-proxy"), "--cleanup").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "kube-proxy --cleanup: %v: %s\n", err, out)
	}
}
