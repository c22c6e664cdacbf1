// Command devenv is `make dev`: a local control plane, the manager and two agents on real
// libvirt hosts, with the sample manifests applied. It stays up until Ctrl-C, then tears down
// everything it started.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/dev", "where the hosts, disks, kubeconfig and logs go")
	hosts := flag.Int("hosts", 2, "how many libvirt hosts (compute nodes) to start")
	shared := flag.Int("shared-storage-hosts", 0, "how many of the hosts (the first ones) share one storage root, as nodes that mount one NFS export do")
	flag.Parse()
	if err := run(*workDir, *hosts, *shared); err != nil {
		fmt.Fprintln(os.Stderr, "devenv:", err)
		os.Exit(1)
	}
}

func run(workDir string, hosts, shared int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Printf("starting kube-apiserver, etcd, %d libvirt hosts with their agents, and the manager in %s\n", hosts, workDir)
	cluster, err := utils.StartCluster(ctx, workDir, hosts, utils.WithSharedStorage(shared))
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\ntearing down")
		cluster.Stop()
	}()

	// The scheduler places only on nodes whose Hypervisor is Up: applied before the last agent
	// reported, every sample would land on the first nodes.
	if err := cluster.WaitHypervisorsUp(ctx, 2*time.Minute); err != nil {
		return err
	}
	var manifests []byte
	for _, name := range []string{"flavors.yaml", "image.yaml", "instance.yaml", "instance-network.yaml"} {
		b, err := utils.RenderSample(name)
		if err != nil {
			return err
		}
		manifests = append(append(manifests, b...), []byte("\n---\n")...)
	}
	rendered := filepath.Join(workDir, "samples.yaml")
	if err := os.WriteFile(rendered, manifests, 0o644); err != nil {
		return err
	}
	out, err := cluster.KubectlAsCloudAdmin(ctx, "apply", "-f", rendered)
	fmt.Print(out)
	if err != nil {
		return fmt.Errorf("apply samples: %w", err)
	}

	token, err := cluster.MetricsScraperToken(ctx)
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(workDir, "identities", "metrics-scraper.token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return err
	}
	scrapes := "  curl -sk -H \"Authorization: Bearer $(cat " + tokenFile + ")\" " + cluster.ManagerMetrics + " | grep ^kubenova_\n"
	for _, h := range cluster.Hosts {
		scrapes += "  curl -sk -H \"Authorization: Bearer $(cat " + tokenFile + ")\" " + h.Metrics + " | grep ^kubenova_   # " + h.Name + "'s agent\n"
	}

	kubectl := filepath.Join(utils.BinDir(), "kubectl")
	fmt.Printf(`
kubenova is up, every process under its own identity. In another shell, as the cloud's
administrator (group kubenova:admins; %s is an ordinary user with edit in default):

  export KUBECONFIG=%s
  %s get instances,hypervisors
  %s describe instance demo
  %s console-log demo -f      # the guest's serial console, through the API server

Metrics, with the token of a service account bound to kubenova-metrics-reader:
%s
Logs of the manager and agents: %s/logs. Press Ctrl-C to tear everything down.
`, cluster.Kubeconfig, cluster.CloudAdminKubeconfig, kubectl, kubectl, filepath.Join(utils.BinDir(), "kubectl-nova"), scrapes, workDir)

	watch := exec.CommandContext(ctx, kubectl, "get", "instances", "--watch")
	watch.Env = append(os.Environ(), "KUBECONFIG="+cluster.CloudAdminKubeconfig)
	watch.Stdout, watch.Stderr = os.Stdout, os.Stderr
	// Ctrl-C ends the watch too (same terminal); the error it returns for that is no failure.
	_ = watch.Run()
	<-ctx.Done()
	return nil
}
