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

// ns is the namespace of the container whose specs this process runs now, and
// tenantKubeconfig and cloudAdminKubeconfig the people's kubeconfigs with it as their
// namespace. Every container is Ordered and calls inNamespace first: Ginkgo runs an Ordered
// container's specs one after another on one process, so one variable per process suffices.
// Containers on other processes, in namespaces of their own, never see each other's objects.
var ns, tenantKubeconfig, cloudAdminKubeconfig string

// disruptive decorates a container whose specs stop, kill or restart kubenova's processes, change
// the manager's flags or read cluster-wide totals. Serial: in a run of the whole suite on one
// cluster, Ginkgo runs it on the first process, alone, after the others. Labelled: `make
// test-e2e` (hack/e2e.sh) runs the disruptive containers on clusters of their own, one per
// process (clusterPerProcess, where they need not be Serial), beside the others.
var disruptive = disruptiveDecorators()

func disruptiveDecorators() []any {
	if clusterPerProcess {
		return []any{Label("disruptive")}
	}
	return []any{Serial, Label("disruptive")}
}

// inNamespace gives the container a namespace of its own, named base (unique in the suite), in
// which the tenant has edit, and makes it ns for the container's nodes.
func inNamespace(base string) {
	var tenant, admin string
	use := func() { ns, tenantKubeconfig, cloudAdminKubeconfig = base, tenant, admin }
	BeforeAll(func(ctx SpecContext) {
		var err error
		tenant, admin, err = cluster.Namespace(ctx, base)
		Expect(err).NotTo(HaveOccurred())
		use()
	})
	BeforeEach(use)
}

// kubectl runs kubectl as the tenant, in ns.
func kubectl(ctx context.Context, args ...string) (string, error) {
	Expect(tenantKubeconfig).NotTo(BeEmpty(), "the container did not call inNamespace")
	return cluster.KubectlWith(ctx, tenantKubeconfig, args...)
}

// kubectlAsCloudAdmin runs kubectl as the cloud's administrator, in ns.
func kubectlAsCloudAdmin(ctx context.Context, args ...string) (string, error) {
	Expect(cloudAdminKubeconfig).NotTo(BeEmpty(), "the container did not call inNamespace")
	return cluster.KubectlWith(ctx, cloudAdminKubeconfig, args...)
}

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
	path := writeManifest(name+".yaml", manifest)
	out, err := kubectl(ctx, "apply", "-f", path)
	Expect(err).NotTo(HaveOccurred(), out)
	return expectInstance(ctx, name, func(g Gomega, inst *v1.Instance) {
		g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
	})
}

// instanceForSpecs is the BeforeAll of a container whose specs share one instance: the image
// (test-guest, or test-guest-noacpi), and the instance Active and booted; it is deleted once the
// container is done.
func instanceForSpecs(ctx context.Context, name, image string) *v1.Instance {
	expectHypervisorsUp(ctx)
	if image == "test-guest-noacpi" {
		applyGuestImage(ctx, image, utils.GuestImageNoACPI)
	} else {
		applySample(ctx, "image.yaml")
	}
	inst := createInstance(ctx, name, image)
	DeferCleanup(func(ctx SpecContext) {
		out, err := kubectl(ctx, "delete", "instance", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(2*time.Minute))
	return inst
}

// launchPinned launches the sample instance as name on node, waits for its first boot and its
// first alive line, and unpins it, so that later moves go where they are told; it is deleted
// once the container is done.
func launchPinned(ctx context.Context, name, node string) *v1.Instance {
	manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: "+name, 1)
	manifest = strings.Replace(manifest, "spec:\n", "spec:\n  nodeSelector:\n    kubernetes.io/hostname: "+node+"\n", 1)
	path := writeManifest(name+".yaml", manifest)
	out, err := kubectl(ctx, "apply", "-f", path)
	Expect(err).NotTo(HaveOccurred(), out)
	DeferCleanup(func(ctx SpecContext) {
		out, err := kubectl(ctx, "delete", "instance", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(2*time.Minute))
	inst := expectInstance(ctx, name, settled(v1.VMStateActive))
	Expect(inst.Status.NodeName).To(Equal(node))
	expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 && c.Last(aliveSeq) >= 1 }, "first boot")
	patchSpec(ctx, name, `{"spec":{"nodeSelector":null}}`)
	return inst
}

// writeManifest writes a manifest for ns into the work dir and returns its path.
func writeManifest(file, manifest string) string {
	path := filepath.Join(cluster.WorkDir, "rendered", ns, file)
	Expect(os.MkdirAll(filepath.Dir(path), 0o755)).To(Succeed())
	Expect(os.WriteFile(path, []byte(manifest), 0o644)).To(Succeed())
	return path
}

// applyGuestImage creates an Image of one of the test guest's variants.
func applyGuestImage(ctx context.Context, name string, variant func() (string, string, error)) {
	path, sum, err := variant()
	Expect(err).NotTo(HaveOccurred())
	img := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
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
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
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

// readConsole reads the guest's serial console log on its node. A log that cannot be read fails
// the spec: an empty console would make "nothing printed" checks pass for nothing.
func readConsole(inst *v1.Instance) console {
	GinkgoHelper()
	Expect(inst.Status.AgentReport).NotTo(BeNil(), "no agent has reported the instance")
	// utils.ReadConsole takes a missing log for an empty one; here that is a failure.
	Expect(inst.Status.AgentReport.ConsoleLogPath).To(BeAnExistingFile())
	c, err := utils.ReadConsole(inst.Status.AgentReport.ConsoleLogPath)
	Expect(err).NotTo(HaveOccurred())
	return c
}

// expectConsole waits until the guest's console log satisfies cond; a log not written yet is
// waited for too.
func expectConsole(ctx context.Context, inst *v1.Instance, cond func(console) bool, what string) {
	GinkgoHelper()
	Eventually(func(g Gomega) {
		g.Expect(inst.Status.AgentReport).NotTo(BeNil(), "no agent has reported the instance")
		c, err := utils.ReadConsole(inst.Status.AgentReport.ConsoleLogPath)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(cond(c)).To(BeTrue(), what)
	}).WithContext(ctx).WithTimeout(120*time.Second).WithPolling(100*time.Millisecond).Should(Succeed(), what)
}

// events returns the notes of the Events about an instance with the given reason.
func events(ctx context.Context, name, reason string) []string {
	var list eventsv1.EventList
	Expect(cluster.Client.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
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
	w, err := wc.Watch(ctx, &v1.InstanceList{}, client.InNamespace(ns),
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

// cutShortAt runs act and, as soon as a watch sees the instance in task state task, kill. The
// status read after the kill must still show that task: one that had already ended means the
// kill came too late and cut nothing short, and the spec fails rather than pass for nothing.
// (Polling could miss a state that lasts less than its interval; a watch sees every write.)
func cutShortAt(ctx context.Context, name string, task v1.TaskState, act, kill func()) {
	GinkgoHelper()
	measure(ctx, name, act, func(i *v1.Instance) bool { return i.Status.TaskState == task })
	kill()
	cur, err := instance(ctx, name)()
	Expect(err).NotTo(HaveOccurred())
	Expect(cur.Status.TaskState).To(Equal(task), "the task had ended before the kill: nothing was cut short")
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
