// Package benchutil holds what kubenova's bench commands share: polling, medians and the way
// figures are printed.
package benchutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// Poll checks cond every 20 ms until it holds, fails or the timeout passes.
func Poll(timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Median is the middle one of d (the upper middle for an even count).
func Median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// Ms renders a duration to the millisecond.
func Ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// Run runs a command and returns its combined output.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// StartOneHost starts kubenova with one libvirt host in workDir (anew), applies the sample
// flavors and test-guest image, and waits until the host's Hypervisor is up.
func StartOneHost(ctx context.Context, workDir string) (*utils.Cluster, error) {
	_ = os.RemoveAll(filepath.Join(workDir, "hosts"))
	cluster, err := utils.StartCluster(ctx, workDir, 1)
	if err != nil {
		return nil, err
	}
	if err := prepare(ctx, cluster, workDir); err != nil {
		cluster.Stop()
		return nil, err
	}
	return cluster, nil
}

func prepare(ctx context.Context, cluster *utils.Cluster, workDir string) error {
	for _, name := range []string{"flavors.yaml", "image.yaml"} {
		b, err := utils.RenderSample(name)
		if err != nil {
			return err
		}
		path := filepath.Join(workDir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		if out, err := cluster.Kubectl(ctx, "apply", "-f", path); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
	}
	if err := Poll(90*time.Second, func() (bool, error) {
		hv := &v1.Hypervisor{}
		err := cluster.Client.Get(ctx, types.NamespacedName{Name: cluster.Hosts[0].Name}, hv)
		return err == nil && hv.Status.State == v1.HypervisorUp, nil
	}); err != nil {
		return fmt.Errorf("hypervisor up: %w", err)
	}
	return nil
}
