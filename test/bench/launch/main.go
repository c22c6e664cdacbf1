// Command launch measures how long kubenova takes to launch an instance, beside a baseline run
// side by side on the same libvirt host: the same guest, the same domain XML, started with
// virsh directly. It prints each run and the median ratio kubenova/baseline.
//
//	go run ./test/bench/launch --runs 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/bench/benchutil"
	"github.com/kubenova/kubenova/test/utils"
)

func main() {
	runs := flag.Int("runs", 5, "launches of each kind")
	workDir := flag.String("work-dir", "/var/lib/kubenova-dev/bench", "where the cluster keeps its state")
	flag.Parse()
	if err := run(*runs, *workDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sample is one kubenova launch: the time to Active and to the guest's boot line.
type sample struct{ active, boot time.Duration }

func run(runs int, workDir string) error {
	ctx := context.Background()
	cluster, err := benchutil.StartOneHost(ctx, workDir)
	if err != nil {
		return err
	}
	defer cluster.Stop()
	h := cluster.Hosts[0]

	// The first launch also fills the node's image cache; report it apart.
	first, err := launch(ctx, cluster, "warmup")
	if err != nil {
		return err
	}
	fmt.Printf("launches of the test guest (1 vCPU, 256 MiB, TCG) on %s\n\n", benchutil.Machine())
	fmt.Printf("first launch (image copied into the node's cache): Active %s, boot line %s\n\n", benchutil.Ms(first.active), benchutil.Ms(first.boot))

	var base, active, boot []time.Duration
	fmt.Printf("%-4s %-9s %18s %18s %18s\n", "run", "first", "baseline boot", "kubenova Active", "kubenova boot")
	for i := 0; i < runs; i++ {
		// Take turns at going first, so that neither side always meets a warmer host.
		var b time.Duration
		var k sample
		baselineSide := func() (err error) { b, err = baseline(ctx, h); return err }
		kubenovaSide := func() (err error) { k, err = launch(ctx, cluster, fmt.Sprintf("bench-%d", i)); return err }
		sides, first := []func() error{baselineSide, kubenovaSide}, "virsh"
		if i%2 == 1 {
			sides, first = []func() error{kubenovaSide, baselineSide}, "kubenova"
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return err
			}
		}
		base, active, boot = append(base, b), append(active, k.active), append(boot, k.boot)
		fmt.Printf("%-4d %-9s %18s %18s %18s\n", i+1, first, benchutil.Ms(b), benchutil.Ms(k.active), benchutil.Ms(k.boot))
	}
	b, a, k := benchutil.Median(base), benchutil.Median(active), benchutil.Median(boot)
	fmt.Printf("\nmedian: baseline (qemu-img create, virsh define+start) to boot line %s; kubenova apply to Active %s, to boot line %s\n",
		benchutil.Ms(b), benchutil.Ms(a), benchutil.Ms(k))
	fmt.Printf("kubenova/baseline, time to the guest's boot line: ratio %.2f, difference %s\n", float64(k)/float64(b), benchutil.Ms(k-b))
	return nil
}

// baseline boots the test guest with virsh on the host and returns the time from the start
// (the clock starts where kubenova's does, before the root disk is made) to the boot line.
func baseline(ctx context.Context, h utils.Host) (time.Duration, error) {
	start := time.Now()
	g, err := benchutil.VirshLaunch(ctx, h)
	if g != nil {
		defer g.Remove(ctx)
	}
	if err != nil {
		return 0, err
	}
	if err := benchutil.Poll(120*time.Second, func() (bool, error) { return benchutil.Booted(g.ConsoleLog) }); err != nil {
		return 0, fmt.Errorf("baseline boot: %w", err)
	}
	return time.Since(start), nil
}

// launch creates an Instance and returns the times to Active and to the boot line, then
// deletes it and waits until it is gone.
func launch(ctx context.Context, cluster *utils.Cluster, name string) (sample, error) {
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}}}
	key := types.NamespacedName{Namespace: "default", Name: name}
	start := time.Now()
	if err := cluster.Client.Create(ctx, inst); err != nil {
		return sample{}, err
	}
	var s sample
	if err := benchutil.Poll(120*time.Second, func() (bool, error) {
		err := cluster.Client.Get(ctx, key, inst)
		return err == nil && inst.Status.VMState == v1.VMStateActive, err
	}); err != nil {
		return s, fmt.Errorf("%s to Active: %w (status %+v)", name, err, inst.Status)
	}
	s.active = time.Since(start)
	if err := benchutil.Poll(120*time.Second, func() (bool, error) { return benchutil.Booted(inst.Status.AgentReport.ConsoleLogPath) }); err != nil {
		return s, fmt.Errorf("%s boot: %w", name, err)
	}
	s.boot = time.Since(start)
	if err := cluster.Client.Delete(ctx, inst); err != nil {
		return s, err
	}
	return s, benchutil.Poll(60*time.Second, func() (bool, error) {
		err := cluster.Client.Get(ctx, key, inst)
		return apierrors.IsNotFound(err), client404(err)
	})
}

func client404(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
