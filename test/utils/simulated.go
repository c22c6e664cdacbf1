package utils

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
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
	if err := c.start("agent-simulated", c.AdminKubeconfig, filepath.Join(BinDir(), "agent"),
		"--driver=fake", fmt.Sprintf("--simulate-nodes=%d", nodes), "--node-name="+SimulatedNodePrefix,
		"--storage-root="+simRoot, "--lease-duration=40s"); err != nil {
		return c, err
	}
	if err := c.StartManager(); err != nil {
		return c, err
	}
	return c, nil
}

// CreateTinyImage makes a small empty qcow2 in the cluster's image sources, creates an Image
// of it, and waits until the image service has made it Available. Simulated nodes fetch
// nothing, but the manager launches only from an Available image.
func (c *Cluster) CreateTinyImage(ctx context.Context, namespace, name string) error {
	path := filepath.Join(c.ImageSources, name+".qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", path, "1M").CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img create: %w: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	img := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: hex.EncodeToString(sum[:]), DiskFormat: v1.DiskFormatQCOW2}}
	if err := c.Client.Create(ctx, img); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(img), img); err != nil {
			return err
		}
		switch img.Status.Phase {
		case v1.ImageAvailable:
			return nil
		case v1.ImageError:
			return fmt.Errorf("image %s failed its import: %+v", name, img.Status.Conditions)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("image %s is still %q after a minute", name, img.Status.Phase)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
