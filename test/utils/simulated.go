package utils

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// SimulatedNodePrefix names the simulated nodes: sim-001, sim-002, ...
const SimulatedNodePrefix = "sim"

// StartSimulatedCluster starts a control plane, the manager, and one agent process that
// simulates nodes compute nodes (the agent's --driver=fake --simulate-nodes): kubenova as a
// large cloud's control plane sees it, on one machine, with no guests.
func StartSimulatedCluster(ctx context.Context, workDir string, nodes int, opts ...EnvOption) (c *Cluster, err error) {
	c, err = startControlPlane(ctx, workDir, opts...)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
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
