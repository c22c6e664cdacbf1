package controllers

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/gitops"
)

func metaName(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name} }

// makeNode creates a Node and its Hypervisor with the given capacity (allocation ratios 1.0,
// so the capacity is exact) and a lease that keeps it up for leaseFor.
func makeNode(ctx context.Context, name string, capacity v1.Resources, labels map[string]string, leaseFor time.Duration) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	Expect(k8s.Create(ctx, node)).To(Succeed())
	hv := &v1.Hypervisor{ObjectMeta: metaName(name), Spec: v1.HypervisorSpec{
		CPUAllocationRatio: "1.0", MemoryAllocationRatio: "1.0", DiskAllocationRatio: "1.0"}}
	Expect(k8s.Create(ctx, hv)).To(Succeed())
	// The manager writes this status too, so a write may conflict; retry on fresh data.
	Eventually(func() error {
		cur := hypervisor(ctx, name)
		cur.Status.Capacity = capacity
		cur.Status.VirtType = v1.VirtTypeQEMU
		return k8s.Status().Update(ctx, cur)
	}).WithContext(ctx).Should(Succeed())
	renewLease(ctx, name, leaseFor)
	Eventually(func() v1.HypervisorState { return hypervisor(ctx, name).Status.State }).Should(Equal(v1.HypervisorUp))
}

// ensureNodeA makes, once for the whole suite, node-a (the node of the in-process agent) and the
// flavor "small" that the instances created on it use.
func ensureNodeA(ctx context.Context) {
	nodeAOnce.Do(func() {
		makeNode(ctx, "node-a", v1.Resources{VCPUs: 8, MemoryMiB: 16384, DiskGiB: 100}, onNodeA, time.Hour)
		// What node-a's agent would report of its networks (the in-process agent has no reporter).
		Eventually(func() error {
			cur := hypervisor(ctx, "node-a")
			cur.Status.Networks = nodeANetworks
			return k8s.Status().Update(ctx, cur)
		}).WithContext(ctx).Should(Succeed())
		makeFlavor(ctx, "small", 1, 256, 1)
	})
}

var nodeAOnce sync.Once

// nodeANetworks are the networks of node-a: its agent plugs NICs into them.
var nodeANetworks = []v1.HypervisorNetwork{{Name: "provider", Type: v1.NetworkBridge, Source: "br-provider"}}

func renewLease(ctx context.Context, node string, d time.Duration) {
	setLease(ctx, node, d, time.Now())
}

func setLease(ctx context.Context, node string, d time.Duration, renewed time.Time) {
	now := metav1.NewMicroTime(renewed)
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: leaseNamespace, Name: v1.AgentLeaseName(node),
		Labels: map[string]string{v1.LabelHypervisor: node}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(node), LeaseDurationSeconds: ptr.To(int32(d / time.Second)), RenewTime: &now}}
	err := k8s.Create(ctx, lease)
	if apierrors.IsAlreadyExists(err) {
		existing := &coordinationv1.Lease{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: leaseNamespace, Name: v1.AgentLeaseName(node)}, existing)).To(Succeed())
		existing.Spec = lease.Spec
		err = k8s.Update(ctx, existing)
	}
	Expect(err).NotTo(HaveOccurred())
}

func hypervisor(ctx context.Context, name string) *v1.Hypervisor {
	hv := &v1.Hypervisor{}
	Expect(k8s.Get(ctx, types.NamespacedName{Name: name}, hv)).To(Succeed())
	return hv
}

func makeFlavor(ctx context.Context, name string, vcpus, memMiB, diskGiB int32) {
	Expect(k8s.Create(ctx, &v1.Flavor{ObjectMeta: metaName(name),
		Spec: v1.FlavorSpec{VCPUs: vcpus, MemoryMiB: memMiB, DiskGiB: diskGiB}})).To(Succeed())
}

func makeImage(ctx context.Context, namespace, name string) {
	Expect(k8s.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ImageSpec{Source: v1.ImageSource{File: imageFile}, SHA256: imageSum, DiskFormat: v1.DiskFormatQCOW2}})).To(Succeed())
}

// makeNamespace creates a namespace whose instances are deleted, and gone, when the spec (or
// the Ordered container) that made it ends: a later spec counts node-a's allocations.
func makeNamespace(ctx context.Context, prefix string) string {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	Expect(k8s.Create(ctx, ns)).To(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		Expect(k8s.DeleteAllOf(ctx, &v1.Instance{}, client.InNamespace(ns.Name))).To(Succeed())
		Eventually(func() ([]v1.Instance, error) {
			var list v1.InstanceList
			err := k8s.List(ctx, &list, client.InNamespace(ns.Name))
			return list.Items, err
		}).WithContext(ctx).Should(BeEmpty())
	})
	return ns.Name
}

func newInstance(namespace, name, flavor, image string) *v1.Instance {
	return &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.InstanceSpec{Flavor: flavor, Image: v1.ImageReference{Name: image}}}
}

func get(ctx context.Context, inst *v1.Instance) func() (*v1.Instance, error) {
	return func() (*v1.Instance, error) {
		out := &v1.Instance{}
		err := k8s.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: inst.Name}, out)
		return out, err
	}
}

// current reads the instance as it is now; a failed read fails the spec rather than leave an
// empty instance for the checks that follow.
func current(ctx context.Context, inst *v1.Instance) *v1.Instance {
	GinkgoHelper()
	got, err := get(ctx, inst)()
	Expect(err).NotTo(HaveOccurred())
	return got
}

// mustStat is the file's information; a file that is not there fails the spec, where a nil
// FileInfo would make os.SameFile and size checks pass or fail for nothing.
func mustStat(path string) os.FileInfo {
	GinkgoHelper()
	st, err := os.Stat(path)
	Expect(err).NotTo(HaveOccurred())
	return st
}

func unique(prefix string) string { return fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()) }

// createOnNodeA creates, in a new namespace, an image and a small instance that only node-a
// (the node with the in-process agent) can take.
func createOnNodeA(ctx context.Context, prefix string) *v1.Instance {
	ns := makeNamespace(ctx, prefix)
	makeImage(ctx, ns, "img")
	inst := newInstance(ns, "web", "small", "img")
	inst.Spec.NodeSelector = onNodeA
	Expect(k8s.Create(ctx, inst)).To(Succeed())
	return inst
}

func waitForVMState(ctx context.Context, inst *v1.Instance, want v1.VMState) {
	Eventually(func() (v1.VMState, error) {
		got, err := get(ctx, inst)()
		if err != nil {
			return "", err
		}
		return got.Status.VMState, nil
	}).WithContext(ctx).Should(Equal(want))
}

// patchInstance applies a JSON merge patch to the instance, as kubectl patch --type merge does.
func patchInstance(ctx context.Context, inst *v1.Instance, patch string) {
	target := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: inst.Namespace, Name: inst.Name}}
	Expect(k8s.Patch(ctx, target, client.RawPatch(types.MergePatchType, []byte(patch)))).To(Succeed())
}

// expectGitOpsHealth checks what Argo CD (through config/argocd's scripts) and kstatus (for
// Flux) make of a real object the controllers wrote.
func expectGitOpsHealth(obj client.Object, argo string, kstatus status.Status) {
	GinkgoHelper()
	healthScriptsOnce.Do(func() {
		var err error
		healthScripts, err = gitops.LoadHealthScripts()
		Expect(err).NotTo(HaveOccurred())
	})
	h, err := healthScripts.Of(obj)
	Expect(err).NotTo(HaveOccurred())
	Expect(h.Status).To(Equal(argo), "Argo CD's health of %s %s: %s", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), h.Message)
	res, err := gitops.Kstatus(obj)
	Expect(err).NotTo(HaveOccurred())
	Expect(res.Status).To(Equal(kstatus), "kstatus on %s: %s", obj.GetName(), res.Message)
}

var (
	healthScriptsOnce sync.Once
	healthScripts     gitops.HealthScripts
)

// expectReadyReason checks, inside an Eventually, that Ready says reason and that its message
// holds each of parts; it returns the condition for further checks.
func expectReadyReason(g Gomega, conditions []metav1.Condition, reason string, parts ...string) *metav1.Condition {
	ready := meta.FindStatusCondition(conditions, v1.ConditionReady)
	g.Expect(ready).NotTo(BeNil(), "no Ready condition yet")
	g.Expect(ready.Reason).To(Equal(reason), ready.Message)
	for _, part := range parts {
		g.Expect(ready.Message).To(ContainSubstring(part))
	}
	return ready
}
