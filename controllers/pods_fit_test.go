package controllers

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// kubenova's placement counts what pods request of a node: an instance that needs memory the
// node's pods hold waits with NoValidHost (PodsFitFilter), and is placed once the pod goes.
var _ = Describe("Pods beside instances", Ordered, func() {
	It("keeps an instance off memory that pods request, and places it once they leave", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "beside-pods")
		makeImage(ctx, ns, "img")
		ensureNodeA(ctx)
		makeFlavor(ctx, "pods-fit-1g", 1, 1024, 1)
		labels := map[string]string{"pool": "beside-pods"}
		makeNode(ctx, "kubelet-node", v1.Resources{VCPUs: 16, MemoryMiB: 65536, DiskGiB: 100}, labels, time.Hour)
		DeferCleanup(func(ctx SpecContext) { expireLease(ctx, "kubelet-node") })
		// What a kubelet reports: 4 CPUs and 4 GiB for pods and guests, whatever libvirt says.
		node := &corev1.Node{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: "kubelet-node"}, node)).To(Succeed())
		node.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("4Gi")}
		Expect(k8s.Status().Update(ctx, node)).To(Succeed())

		// A pod bound there (as kube-scheduler binds one) asks for 3.5 GiB.
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "memory-hog"},
			Spec: corev1.PodSpec{NodeName: "kubelet-node", Containers: []corev1.Container{{Name: "app", Image: "app",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("3584Mi")}}}}}}
		Expect(k8s.Create(ctx, pod)).To(Succeed())

		inst := newInstance(ns, "guest", "pods-fit-1g", "img")
		inst.Spec.NodeSelector = labels
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.NodeName).To(BeEmpty())
			sched := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionScheduled)
			g.Expect(sched).NotTo(BeNil())
			g.Expect(sched.Reason).To(Equal(v1.ReasonNoValidHost))
			g.Expect(sched.Message).To(ContainSubstring("PodsFitFilter rejected 1"))
		}).WithContext(ctx).Should(Succeed())
		Consistently(func() (string, error) {
			got, err := get(ctx, inst)()
			return got.Status.NodeName, err
		}).WithContext(ctx).WithTimeout(2 * time.Second).Should(BeEmpty())

		By("the pod goes: the instance is placed there")
		Expect(k8s.Delete(ctx, pod, client.GracePeriodSeconds(0))).To(Succeed())
		Eventually(func() (string, error) {
			got, err := get(ctx, inst)()
			return got.Status.NodeName, err
		}).WithContext(ctx).Should(Equal("kubelet-node"))
	})
})
