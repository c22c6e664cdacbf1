package utils

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SimulatedNodePrefix names the simulated nodes: sim-001, sim-002, ...
const SimulatedNodePrefix = "sim"

// StartSimulatedCluster starts a control plane, the manager, and one agent process that
// simulates nodes compute nodes (the agent's --driver=fake --simulate-nodes): kubenova as a
// large cloud's control plane sees it, on one machine, with no guests.
func StartSimulatedCluster(ctx context.Context, workDir string, nodes int, opts ...EnvOption) (c *Cluster, err error) {
	if err := os.MkdirAll(filepath.Join(workDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	env, err := StartEnv(opts...)
	if err != nil {
		return nil, err
	}
	c = &Cluster{Env: env, WorkDir: workDir}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := c.writeKubeconfig(); err != nil {
		return c, err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubenova-system"}}
	if err := c.Client.Create(ctx, ns); err != nil {
		return c, fmt.Errorf("create namespace kubenova-system: %w", err)
	}
	simRoot := filepath.Join(workDir, "simulated")
	if err := os.RemoveAll(simRoot); err != nil {
		return c, err
	}
	if err := c.start("agent-simulated", filepath.Join(BinDir(), "agent"),
		"--driver=fake", fmt.Sprintf("--simulate-nodes=%d", nodes), "--node-name="+SimulatedNodePrefix,
		"--storage-root="+simRoot, "--lease-duration=40s"); err != nil {
		return c, err
	}
	if err := c.StartManager(); err != nil {
		return c, err
	}
	return c, nil
}
