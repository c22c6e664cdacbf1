package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// createInstance applies the sample instance under another name (and image) and waits until it
// is Active and its guest has printed its first boot line.
func createInstance(ctx context.Context, name, image string) *v1.Instance {
	inst := launchInstance(ctx, name, image)
	expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 }, "first boot")
	return inst
}

// launchInstance applies the sample instance under another name (and image) and waits until it
// is Active. An image saved from another guest carries that guest's boot count.
func launchInstance(ctx context.Context, name, image string) *v1.Instance {
	manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: "+name, 1)
	manifest = strings.Replace(manifest, "name: test-guest", "name: "+image, 1)
	path := filepath.Join(cluster.WorkDir, name+".yaml")
	Expect(os.WriteFile(path, []byte(manifest), 0o644)).To(Succeed())
	out, err := cluster.Kubectl(ctx, "apply", "-f", path)
	Expect(err).NotTo(HaveOccurred(), out)
	return expectInstance(ctx, name, func(g Gomega, inst *v1.Instance) {
		g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
	})
}

// instanceForSpecs is the BeforeAll of a container whose specs share one instance: the flavors,
// the image (test-guest, or test-guest-noacpi), and the instance Active and booted; it is
// deleted once the container is done.
func instanceForSpecs(ctx context.Context, name, image string) *v1.Instance {
	expectHypervisorsUp(ctx)
	applySample(ctx, "flavors.yaml")
	if image == "test-guest-noacpi" {
		applyGuestImage(ctx, image, utils.GuestImageNoACPI)
	} else {
		applySample(ctx, "image.yaml")
	}
	inst := createInstance(ctx, name, image)
	DeferCleanup(func(ctx SpecContext) {
		out, err := cluster.Kubectl(ctx, "delete", "instance", name, "-n", "default", "--ignore-not-found", "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(2*time.Minute))
	return inst
}

// applyGuestImage creates an Image of one of the test guest's variants.
func applyGuestImage(ctx context.Context, name string, variant func() (string, string, error)) {
	path, sum, err := variant()
	Expect(err).NotTo(HaveOccurred())
	img := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: sum, DiskFormat: v1.DiskFormatQCOW2}}
	Expect(client.IgnoreAlreadyExists(cluster.Client.Create(ctx, img))).To(Succeed())
}

// expectInstance waits until check passes on the instance and returns it.
func expectInstance(ctx context.Context, name string, check func(Gomega, *v1.Instance)) *v1.Instance {
	var inst *v1.Instance
	Eventually(func(g Gomega) {
		var err error
		inst, err = instance(ctx, name)()
		g.Expect(err).NotTo(HaveOccurred())
		check(g, inst)
	}).WithContext(ctx).WithTimeout(120 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	return inst
}

// settled checks that an instance rests in vm state want, as its spec asks (Ready).
func settled(want v1.VMState) func(Gomega, *v1.Instance) {
	return func(g Gomega, inst *v1.Instance) {
		g.Expect(inst.Status.VMState).To(Equal(want))
		g.Expect(inst.Status.TaskState).To(BeEmpty())
		g.Expect(inst.Status.ObservedGeneration).To(Equal(inst.Generation))
		ready := findCondition(inst, v1.ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue), ready.Message)
		g.Expect(ready.ObservedGeneration).To(Equal(inst.Generation))
	}
}

func findCondition(inst *v1.Instance, t string) *metav1.Condition {
	for i := range inst.Status.Conditions {
		if inst.Status.Conditions[i].Type == t {
			return &inst.Status.Conditions[i]
		}
	}
	return nil
}

// patchSpec applies a JSON merge patch to the instance, as kubectl patch --type merge would.
func patchSpec(ctx context.Context, name, patch string) {
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}}
	Expect(cluster.Client.Patch(ctx, inst, client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
}

// stamp is a one-shot request's requestedAt: now, with microseconds.
func stamp() string { return metav1.NowMicro().UTC().Format(metav1.RFC3339Micro) }

// console is what a guest printed on its serial console.
type console = utils.Console

// The test guest's numbered lines.
var (
	bootCount = utils.BootCount
	aliveSeq  = utils.AliveSeq
)

func readConsole(inst *v1.Instance) console {
	c, _ := utils.ReadConsole(inst.Status.AgentReport.ConsoleLogPath)
	return c
}

func expectConsole(ctx context.Context, inst *v1.Instance, cond func(console) bool, what string) {
	Eventually(func() bool { return cond(readConsole(inst)) }).WithContext(ctx).
		WithTimeout(120*time.Second).WithPolling(100*time.Millisecond).Should(BeTrue(), what)
}

// events returns the notes of the Events about an instance with the given reason.
func events(ctx context.Context, name, reason string) []string {
	var list eventsv1.EventList
	Expect(cluster.Client.List(ctx, &list, client.InNamespace("default"))).To(Succeed())
	var notes []string
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Reason == reason {
			notes = append(notes, e.Note)
		}
	}
	return notes
}

// measured is what one operation cost: its time and the writes to the instance.
type measured struct {
	elapsed time.Duration
	writes  int
}

func (m measured) String() string {
	return fmt.Sprintf("%s, %d writes", m.elapsed.Round(time.Millisecond), m.writes)
}

// measure runs act and watches the instance until done holds, counting the writes to it (every
// change of its resourceVersion, the user's own included) and the time from act to done.
func measure(ctx context.Context, name string, act func(), done func(*v1.Instance) bool) measured {
	wc, err := client.NewWithWatch(cluster.Config, client.Options{Scheme: cluster.Scheme})
	Expect(err).NotTo(HaveOccurred())
	w, err := wc.Watch(ctx, &v1.InstanceList{}, client.InNamespace("default"),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", name)})
	Expect(err).NotTo(HaveOccurred())
	defer w.Stop()
	// The watch starts with the object as it is now; writes are counted from there.
	var m measured
	select {
	case e := <-w.ResultChan():
		Expect(e.Type).To(Equal(watch.Added))
	case <-time.After(10 * time.Second):
		Fail("the watch did not start")
	}
	start := time.Now()
	act()
	timeout := time.After(150 * time.Second)
	for {
		select {
		case e, ok := <-w.ResultChan():
			Expect(ok).To(BeTrue(), "the watch ended")
			if e.Type != watch.Modified {
				continue
			}
			m.writes++
			if done(e.Object.(*v1.Instance)) {
				m.elapsed = time.Since(start)
				return m
			}
		case <-timeout:
			Fail(fmt.Sprintf("instance %s did not get there within 150 s (%d writes seen)", name, m.writes))
		}
	}
}

// restsIn says whether an instance rests in vm state want, Ready, for its current generation.
func restsIn(want v1.VMState) func(*v1.Instance) bool {
	return func(inst *v1.Instance) bool {
		ready := findCondition(inst, v1.ConditionReady)
		return inst.Status.VMState == want && inst.Status.TaskState == "" && ready != nil &&
			ready.Status == metav1.ConditionTrue && ready.ObservedGeneration == inst.Generation
	}
}

// rebootServed says whether the reboot request stamped at was served with result want.
func rebootServed(at string, want v1.RequestResult) func(*v1.Instance) bool {
	return func(inst *v1.Instance) bool {
		ack := inst.Status.RebootRequest
		return ack != nil && ack.RequestedAt.UTC().Format(metav1.RFC3339Micro) == at && ack.Result == want &&
			inst.Status.TaskState == ""
	}
}

// report prints a measured figure for the note and the README.
func report(what string, m measured) {
	GinkgoWriter.Printf("FIGURE %s: %s\n", what, m)
	AddReportEntry(what, m.String())
}
