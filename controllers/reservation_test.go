package controllers

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// Reservation pods carry the instances' vCPUs and memory for Kubernetes: one per namespace and
// node, resized in place, deleted when it carries nothing; a launch on a node with a kubelet goes
// on once the kubelet admitted it; a namespace's ResourceQuota holds a launch that would take it
// past its hard limit, and the reservation pod is what the quota counts.
var _ = Describe("Reservation pods", Ordered, func() {
	// small: 1 vCPU and 256 MiB, plus QEMU's overhead (160 + 8 + 4 MiB); node-a's CPU
	// allocation ratio is 1.0, so a vCPU is a whole CPU's share.
	smallMiB := scheduler.ReservedFor(v1.Resources{VCPUs: 1, MemoryMiB: 256}).MemoryMiB
	mib := func(n int64) resource.Quantity { return *resource.NewQuantity(n<<20, resource.BinarySI) }
	reservationOf := func(ctx SpecContext, ns, node string) func() (*corev1.Pod, error) {
		return func() (*corev1.Pod, error) {
			pod := &corev1.Pod{}
			err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "kubenova-guests-" + node}, pod)
			return pod, err
		}
	}
	expectCarries := func(g Gomega, pod *corev1.Pod, vcpus, memMiB int64) {
		c := pod.Spec.Containers[0]
		g.Expect(c.Resources.Requests.Memory().Cmp(mib(memMiB))).To(BeZero(), "memory %s, want %d MiB", c.Resources.Requests.Memory(), memMiB)
		g.Expect(c.Resources.Requests.Cpu().Cmp(*resource.NewQuantity(vcpus, resource.DecimalSI))).To(BeZero(), "cpu %s", c.Resources.Requests.Cpu())
		g.Expect(c.Resources.Limits).To(Equal(c.Resources.Requests))
	}

	It("carries a namespace's instances on a node in one pod, resized as they come and go, deleted when none is left", func(ctx SpecContext) {
		ensureNodeA(ctx)
		ns := makeNamespace(ctx, "reserve")
		makeImage(ctx, ns, "img")
		var insts []*v1.Instance
		for _, name := range []string{"a", "b"} {
			inst := newInstance(ns, name, "small", "img")
			inst.Spec.NodeSelector = onNodeA
			Expect(k8s.Create(ctx, inst)).To(Succeed())
			insts = append(insts, inst)
		}
		waitForVMState(ctx, insts[0], v1.VMStateActive)
		waitForVMState(ctx, insts[1], v1.VMStateActive)
		Eventually(func(g Gomega) {
			pod, err := reservationOf(ctx, ns, "node-a")()
			g.Expect(err).NotTo(HaveOccurred())
			expectCarries(g, pod, 2, 2*smallMiB)
			g.Expect(pod.Spec.NodeName).To(Equal("node-a"))
			g.Expect(pod.Labels).To(HaveKeyWithValue(ReservationLabel, "home"))
			g.Expect(pod.Spec.PriorityClassName).To(Equal(DefaultReservationPriorityClass))
			// The API server's priority admission copied the class's policy: nothing preempted.
			g.Expect(pod.Spec.PreemptionPolicy).To(HaveValue(Equal(corev1.PreemptNever)))
		}).WithContext(ctx).Should(Succeed())

		By("one instance goes: the pod is resized to the other")
		Expect(k8s.Delete(ctx, insts[0])).To(Succeed())
		Eventually(func(g Gomega) {
			pod, err := reservationOf(ctx, ns, "node-a")()
			g.Expect(err).NotTo(HaveOccurred())
			expectCarries(g, pod, 1, smallMiB)
		}).WithContext(ctx).Should(Succeed())

		By("the last goes: so does the pod")
		Expect(k8s.Delete(ctx, insts[1])).To(Succeed())
		Eventually(func() bool {
			_, err := reservationOf(ctx, ns, "node-a")()
			return apierrors.IsNotFound(err)
		}).WithContext(ctx).Should(BeTrue())
	})

	It("hands a launch to a node with a kubelet only once the kubelet admitted its reservation", func(ctx SpecContext) {
		ensureNodeA(ctx)
		setKubelet(ctx, "node-a", "v1.37.2")
		DeferCleanup(func(ctx SpecContext) { setKubelet(ctx, "node-a", "") })
		inst := createOnNodeA(ctx, "admit")
		Eventually(func(g Gomega) {
			got := current(ctx, inst)
			g.Expect(got.Status.NodeName).To(BeEmpty())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonAwaitingReservation, "node-a", "kubenova-guests-node-a")
		}).WithContext(ctx).Should(Succeed())
		pod, err := reservationOf(ctx, inst.Namespace, "node-a")()
		Expect(err).NotTo(HaveOccurred())
		Consistently(func() string { return current(ctx, inst).Status.NodeName }).WithContext(ctx).Should(BeEmpty())

		By("the kubelet admits the pod (written here as a kubelet writes it)")
		pod.Status.Phase = corev1.PodRunning
		pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: ReservationContainer, Image: "pause", Ready: true,
			State:              corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
			AllocatedResources: pod.Spec.Containers[0].Resources.Requests}}
		Expect(k8s.Status().Update(ctx, pod)).To(Succeed())
		Eventually(func() string { return current(ctx, inst).Status.NodeName }).WithContext(ctx).Should(Equal("node-a"))
		waitForVMState(ctx, inst, v1.VMStateActive)
	})

	It("holds a launch that its namespace's quota has no room for, and goes on when the quota grows", func(ctx SpecContext) {
		ensureNodeA(ctx)
		makeFlavor(ctx, "reserve-2g", 1, 2048, 1)
		ns := makeNamespace(ctx, "quota")
		makeImage(ctx, ns, "img")
		// No kube-controller-manager runs here: the quota's status is written as its quota
		// controller would; the API server's admission then counts each pod's requests in it.
		quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "compute"},
			Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourceRequestsMemory: resource.MustParse("1Gi")}}}
		Expect(k8s.Create(ctx, quota)).To(Succeed())
		quota.Status = corev1.ResourceQuotaStatus{Hard: quota.Spec.Hard,
			Used: corev1.ResourceList{corev1.ResourceRequestsMemory: resource.MustParse("0")}}
		Expect(k8s.Status().Update(ctx, quota)).To(Succeed())

		inst := newInstance(ns, "big", "reserve-2g", "img")
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		wantMiB := scheduler.ReservedFor(v1.Resources{VCPUs: 1, MemoryMiB: 2048}).MemoryMiB
		Eventually(func(g Gomega) {
			got := current(ctx, inst)
			g.Expect(got.Status.NodeName).To(BeEmpty())
			sched := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionScheduled)
			g.Expect(sched).NotTo(BeNil())
			g.Expect(sched.Reason).To(Equal(v1.ReasonQuotaExceeded))
			g.Expect(sched.Message).To(ContainSubstring("exceeded quota compute: requests.memory"))
			want := mib(wantMiB)
			g.Expect(sched.Message).To(ContainSubstring(want.String()))
		}).WithContext(ctx).Should(Succeed())
		_, err := reservationOf(ctx, ns, "node-a")()
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a reservation pod over quota: %v", err)

		By("the quota grows: the launch goes on, and the quota counts its reservation")
		setQuotaMemory(ctx, quota, "4Gi")
		waitForVMState(ctx, inst, v1.VMStateActive)
		Eventually(func(g Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(quota), quota)).To(Succeed())
			used := quota.Status.Used[corev1.ResourceRequestsMemory]
			g.Expect(used.Cmp(mib(wantMiB))).To(BeZero(), "used %s", used.String())
		}).WithContext(ctx).Should(Succeed())

		By("a resize to 4 GiB would take the quota past 4 GiB: it waits, and goes on when the quota grows")
		makeFlavor(ctx, "reserve-4g", 1, 4096, 1)
		patchInstance(ctx, inst, `{"spec":{"flavor":"reserve-4g"}}`)
		Eventually(func(g Gomega) {
			got := current(ctx, inst)
			g.Expect(got.Status.Resize).To(BeNil())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonQuotaExceeded, "exceeded quota compute: requests.memory", "the resize")
		}).WithContext(ctx).Should(Succeed())
		Consistently(func() *v1.ResizeStatus { return current(ctx, inst).Status.Resize }).WithContext(ctx).Should(BeNil())
		setQuotaMemory(ctx, quota, "8Gi")
		waitForVMState(ctx, inst, v1.VMStateResized)
	})
})

// setQuotaMemory sets a quota's hard requests.memory, in its spec and, as its quota controller
// would, in its status.
func setQuotaMemory(ctx SpecContext, quota *corev1.ResourceQuota, hard string) {
	GinkgoHelper()
	Expect(k8s.Get(ctx, client.ObjectKeyFromObject(quota), quota)).To(Succeed())
	quota.Spec.Hard[corev1.ResourceRequestsMemory] = resource.MustParse(hard)
	Expect(k8s.Update(ctx, quota)).To(Succeed())
	quota.Status.Hard = quota.Spec.Hard
	Expect(k8s.Status().Update(ctx, quota)).To(Succeed())
}

// setKubelet makes a Node look run by a kubelet of version (allocatable, and the version it
// reports), or by none when version is "".
func setKubelet(ctx SpecContext, name, version string) {
	GinkgoHelper()
	Eventually(func() error {
		node := &corev1.Node{}
		if err := k8s.Get(ctx, client.ObjectKey{Name: name}, node); err != nil {
			return err
		}
		node.Status.NodeInfo.KubeletVersion = version
		node.Status.Allocatable = nil
		if version != "" {
			node.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"),
				corev1.ResourceMemory: resource.MustParse("64Gi"), corev1.ResourcePods: resource.MustParse("110")}
		}
		return k8s.Status().Update(ctx, node)
	}).WithContext(ctx).Should(Succeed())
}
