package utils

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kubenova/kubenova/internal/scheme"
)

// clusterDescription is what a process needs to use a cluster another process started: the
// parallel e2e suite starts one cluster in its first process and hands this to the others.
type clusterDescription struct {
	WorkDir, Kubeconfig, CloudAdminKubeconfig, StrangerKubeconfig, AdminKubeconfig string
	Hosts                                                                          []Host
	Network                                                                        ProviderNetwork
	ImageStore, ImageSources, ManagerMetrics, ManagerSubresources                  string
}

// Describe is the cluster as AttachCluster takes it.
func (c *Cluster) Describe() ([]byte, error) {
	return json.Marshal(clusterDescription{WorkDir: c.WorkDir, Kubeconfig: c.Kubeconfig,
		CloudAdminKubeconfig: c.CloudAdminKubeconfig, StrangerKubeconfig: c.StrangerKubeconfig,
		AdminKubeconfig: c.AdminKubeconfig, Hosts: c.Hosts, Network: c.Network, ImageStore: c.ImageStore,
		ImageSources: c.ImageSources, ManagerMetrics: c.ManagerMetrics, ManagerSubresources: c.ManagerSubresources})
}

// AttachCluster uses a cluster that another process started and described: the API, the
// people's kubeconfigs, the hosts' virsh and files. It owns none of the processes, so it can
// neither stop nor restart them (the specs that do run where the cluster was started), and
// Stop leaves everything running.
func AttachCluster(description []byte) (*Cluster, error) {
	var d clusterDescription
	if err := json.Unmarshal(description, &d); err != nil {
		return nil, fmt.Errorf("cluster description: %w", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", d.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("the cluster's admin kubeconfig: %w", err)
	}
	s := scheme.New()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return nil, err
	}
	return &Cluster{Env: &Env{Environment: &envtest.Environment{Config: cfg, Scheme: s}, Client: c}, attached: true,
		WorkDir: d.WorkDir, Kubeconfig: d.Kubeconfig, CloudAdminKubeconfig: d.CloudAdminKubeconfig,
		StrangerKubeconfig: d.StrangerKubeconfig, AdminKubeconfig: d.AdminKubeconfig, Hosts: d.Hosts, Network: d.Network,
		ImageStore: d.ImageStore, ImageSources: d.ImageSources, ManagerMetrics: d.ManagerMetrics,
		ManagerSubresources: d.ManagerSubresources}, nil
}

// Namespace makes a namespace in which TenantUser has the edit role, and writes the kubeconfigs
// of TenantUser and CloudAdmin with it as their namespace, so that kubectl and kubectl-nova
// work there without -n. It is there already if another spec made it.
func (c *Cluster) Namespace(ctx context.Context, name string) (tenant, cloudAdmin string, err error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := client.IgnoreAlreadyExists(c.Client.Create(ctx, ns)); err != nil {
		return "", "", fmt.Errorf("create namespace %s: %w", name, err)
	}
	if err := c.GrantTenant(ctx, name); err != nil {
		return "", "", fmt.Errorf("grant %s edit in %s: %w", TenantUser, name, err)
	}
	tenant, err = kubeconfigIn(c.Kubeconfig, name)
	if err != nil {
		return "", "", err
	}
	cloudAdmin, err = kubeconfigIn(c.CloudAdminKubeconfig, name)
	return tenant, cloudAdmin, err
}

// kubeconfigIn writes a copy of a kubeconfig whose current context has namespace ns, beside it.
func kubeconfigIn(path, ns string) (string, error) {
	kc, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return "", err
	}
	ctx, ok := kc.Contexts[kc.CurrentContext]
	if !ok {
		return "", fmt.Errorf("%s has no current context", path)
	}
	ctx.Namespace = ns
	b, err := clientcmd.Write(*kc)
	if err != nil {
		return "", err
	}
	out := filepath.Join(filepath.Dir(path), "namespaces", ns, filepath.Base(path))
	return out, writeFile(out, b)
}
