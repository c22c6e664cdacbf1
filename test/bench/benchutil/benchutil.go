// Package benchutil holds what kubenova's bench commands share: polling, medians and the way
// figures are printed.
package benchutil

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
	if err := Prepare(ctx, cluster, workDir); err != nil {
		cluster.Stop()
		return nil, err
	}
	return cluster, nil
}

// Prepare applies the sample flavors and test-guest image to a cluster and waits until every
// host's Hypervisor is up.
func Prepare(ctx context.Context, cluster *utils.Cluster, workDir string) error {
	for _, name := range []string{"flavors.yaml", "image.yaml"} {
		b, err := utils.RenderSample(name)
		if err != nil {
			return err
		}
		path := filepath.Join(workDir, name)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
		if out, err := cluster.KubectlAsCloudAdmin(ctx, "apply", "-f", path); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
	}
	if err := Poll(90*time.Second, func() (bool, error) {
		for _, h := range cluster.Hosts {
			hv := &v1.Hypervisor{}
			if err := cluster.Client.Get(ctx, types.NamespacedName{Name: h.Name}, hv); err != nil || hv.Status.State != v1.HypervisorUp {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return fmt.Errorf("hypervisor up: %w", err)
	}
	return nil
}

// ProcessUsage is what a process has used so far: CPU time (user and system) and its peak
// resident memory.
type ProcessUsage struct {
	CPU     time.Duration
	PeakRSS int64 // bytes
}

// Usage reads a process's CPU time from /proc/<pid>/stat and its peak RSS (VmHWM) from
// /proc/<pid>/status.
func Usage(pid int) (ProcessUsage, error) {
	var u ProcessUsage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The command name may hold spaces; the fields that follow it are fixed.
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+2:])
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	// The kernel counts in clock ticks, 100 a second on Linux.
	u.CPU = time.Duration(utime+stime) * 10 * time.Millisecond
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if kb, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
			if err != nil {
				return u, fmt.Errorf("/proc/%d/status VmHWM: %w", pid, err)
			}
			u.PeakRSS = n << 10
		}
	}
	return u, nil
}

// Percentile is the p-th percentile (0 < p <= 100) of d, by the nearest-rank method.
func Percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1]
}

// Machine describes the machine the bench runs on, for the figures' caption.
func Machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)", runtime.NumCPU(), model)
}

// RestsIn says whether an instance rests in vm state want, Ready, for its current generation.
func RestsIn(i *v1.Instance, want v1.VMState) bool {
	if i.Status.VMState != want || i.Status.TaskState != "" || i.Status.ObservedGeneration != i.Generation {
		return false
	}
	for _, c := range i.Status.Conditions {
		if c.Type == v1.ConditionReady {
			return c.Status == metav1.ConditionTrue && c.ObservedGeneration == i.Generation
		}
	}
	return false
}

// LaunchOn launches an instance of the test guest with flavor on host, waits until it is
// Active, then drops the node selector that pinned it there, so that moves may name any
// target. It returns the instance as last read.
func LaunchOn(ctx context.Context, c client.Client, name, flavor, host string) (*v1.Instance, error) {
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.InstanceSpec{Flavor: flavor, Image: v1.ImageReference{Name: "test-guest"},
			NodeSelector: map[string]string{"kubernetes.io/hostname": host}}}
	if err := c.Create(ctx, inst); err != nil {
		return nil, err
	}
	if err := Poll(180*time.Second, func() (bool, error) {
		err := c.Get(ctx, client.ObjectKeyFromObject(inst), inst)
		return err == nil && RestsIn(inst, v1.VMStateActive), err
	}); err != nil {
		return nil, err
	}
	patch := client.MergeFrom(inst.DeepCopy())
	inst.Spec.NodeSelector = nil
	return inst, c.Patch(ctx, inst, patch)
}
