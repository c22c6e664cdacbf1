package utils

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// The identities of the test cluster, each what it would be on a real cluster:
//   - the manager runs as its service account (config/rbac), with a token of its own;
//   - each agent runs as the agents' service account with a token bound to its Node, which
//     names the node, as a DaemonSet pod's token does (config/admission's
//     kubenova-agent-node-restriction reads it);
//   - people: TenantUser, who has the built-in edit role in the namespaces the tests use, and
//     CloudAdmin, in the group kubenova:admins (the kubenova-cloud-admin role).
//
// Only the test's own Go client (Cluster.Client) and kube-controller-manager are
// system:masters.
const (
	TenantUser = "tenant"
	CloudAdmin = "cloud-admin"

	// SystemNamespace is where kubenova's service accounts and Leases live.
	SystemNamespace = "kubenova-system"

	// identityTokenLifetime outlasts any run of the suite; a real pod's token is renewed by
	// the kubelet instead.
	identityTokenLifetime = 12 * 60 * 60
)

// setUpIdentities installs kubenova's RBAC (config/rbac) and writes the kubeconfigs of the
// people. The processes' kubeconfigs are minted as they start.
func (c *Cluster) setUpIdentities(ctx context.Context) error {
	objects, err := Render("rbac")
	if err != nil {
		return err
	}
	if err := Apply(ctx, c.Client, objects, false); err != nil {
		return err
	}
	if err := c.waitForAggregation(ctx); err != nil {
		return err
	}
	tenant, err := c.userKubeconfig(TenantUser)
	if err != nil {
		return err
	}
	admin, err := c.userKubeconfig(CloudAdmin, "kubenova:admins")
	if err != nil {
		return err
	}
	stranger, err := c.userKubeconfig("stranger")
	if err != nil {
		return err
	}
	c.Kubeconfig, c.CloudAdminKubeconfig, c.StrangerKubeconfig = tenant, admin, stranger
	return c.GrantTenant(ctx, "default")
}

// userKubeconfig writes the kubeconfig of a person with a client certificate.
func (c *Cluster) userKubeconfig(name string, groups ...string) (string, error) {
	user, err := c.ControlPlane.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return "", fmt.Errorf("add user %s: %w", name, err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(c.WorkDir, "identities", name+".kubeconfig")
	return path, writeFile(path, kc)
}

// GrantTenant gives TenantUser the built-in edit role in namespace, as a project's member has.
func (c *Cluster) GrantTenant(ctx context.Context, namespace string) error {
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "tenant-edit"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: TenantUser}}}
	return client.IgnoreAlreadyExists(c.Client.Create(ctx, binding))
}

// managerKubeconfig mints a token of the manager's service account.
func (c *Cluster) managerKubeconfig(ctx context.Context) (string, error) {
	return c.serviceAccountKubeconfig(ctx, "kubenova-manager", nil, "manager")
}

// agentKubeconfig mints a token of the agents' service account bound to node's Node object:
// its identity carries the node's name, as a DaemonSet pod's does.
func (c *Cluster) agentKubeconfig(ctx context.Context, node string) (string, error) {
	n := &corev1.Node{}
	if err := c.Client.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
		return "", fmt.Errorf("node %s: %w", node, err)
	}
	bound := &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID}
	return c.serviceAccountKubeconfig(ctx, "kubenova-agent", bound, "agent-"+node)
}

// ServiceAccountToken asks the API server for a token of one of kubenova's service accounts,
// bound to an object when bound is not nil.
func (c *Cluster) ServiceAccountToken(ctx context.Context, account string, bound *authenticationv1.BoundObjectReference) (string, error) {
	return RequestToken(ctx, c.Config, account, bound)
}

// RequestToken asks the API server at cfg for a token of the service account
// kubenova-system/account, bound to an object when bound is not nil.
func RequestToken(ctx context.Context, cfg *rest.Config, account string, bound *authenticationv1.BoundObjectReference) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr.To[int64](identityTokenLifetime), BoundObjectRef: bound}}
	resp, err := cs.CoreV1().ServiceAccounts(SystemNamespace).CreateToken(ctx, account, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of %s: %w", account, err)
	}
	return resp.Status.Token, nil
}

// TokenConfig is cfg's server with token as its credentials.
func TokenConfig(cfg *rest.Config, token string) *rest.Config {
	out := rest.AnonymousClientConfig(cfg)
	out.BearerToken = token
	return out
}

func (c *Cluster) serviceAccountKubeconfig(ctx context.Context, account string, bound *authenticationv1.BoundObjectReference, file string) (string, error) {
	token, err := c.ServiceAccountToken(ctx, account, bound)
	if err != nil {
		return "", err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: c.Config.CAData}
	kc.AuthInfos[account] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: account}
	kc.CurrentContext = "test"
	b, err := clientcmd.Write(*kc)
	if err != nil {
		return "", err
	}
	path := filepath.Join(c.WorkDir, "identities", file+".kubeconfig")
	return path, writeFile(path, b)
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// startControllerManager runs kube-controller-manager with the one controller the identities
// need: ClusterRole aggregation, which folds kubenova's user roles into view, edit and admin.
func (c *Cluster) startControllerManager(ctx context.Context) error {
	if err := c.start("kube-controller-manager", c.AdminKubeconfig, filepath.Join(BinDir(), "kube-controller-manager"),
		"--kubeconfig="+c.AdminKubeconfig, "--controllers=clusterrole-aggregation-controller",
		"--leader-elect=false", "--secure-port=0"); err != nil {
		return err
	}
	return nil
}

// waitForAggregation waits until kube-controller-manager has folded kubenova's rules into the
// built-in edit role.
func (c *Cluster) waitForAggregation(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		edit := &rbacv1.ClusterRole{}
		if err := c.Client.Get(ctx, client.ObjectKey{Name: "edit"}, edit); err == nil {
			for _, rule := range edit.Rules {
				if slices.Contains(rule.APIGroups, "compute.kubenova.io") && slices.Contains(rule.Resources, "instances") &&
					slices.Contains(rule.Verbs, "create") {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return errors.New("the built-in edit role did not take in kubenova's rules within 60s: is kube-controller-manager running (logs/kube-controller-manager.log)?")
		}
		time.Sleep(100 * time.Millisecond) // polling the API server; nothing to wait on instead
	}
}
