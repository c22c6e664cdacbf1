package controllers

import (
	"encoding/json"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// A drain asks for a cordoned node to be emptied through the eviction of a reservation pod:
// the instances that may move live get Migrations of the drain, one at a time here
// (MaxPerNode 1), those with evictionStrategy None none, and the refusal names them; the
// uncordon ends the drain.
var _ = Describe("Drain", Ordered, func() {
	It("moves a cordoned node's instances by their eviction strategy, within the limit, once an eviction asks", func(ctx SpecContext) {
		ensureNodeA(ctx)
		ns := makeNamespace(ctx, "drain")
		makeImage(ctx, ns, "img")
		for _, name := range []string{"a", "b", "c"} {
			inst := newInstance(ns, name, "small", "img")
			inst.Spec.NodeSelector = onNodeA
			if name == "c" {
				inst.Spec.EvictionStrategy = v1.EvictionNone
			}
			Expect(k8s.Create(ctx, inst)).To(Succeed())
			waitForVMState(ctx, inst, v1.VMStateActive)
		}
		pod := &corev1.Pod{}
		Eventually(func() error {
			return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "kubenova-guests-node-a"}, pod)
		}).WithContext(ctx).Should(Succeed())
		Expect(pod.OwnerReferences).To(HaveLen(1))
		Expect(pod.OwnerReferences[0].Kind).To(Equal("Node"))
		Expect(*pod.OwnerReferences[0].Controller).To(BeTrue(), "kubectl drain evicts only pods with a controller")

		drainMigrations := func() ([]v1.Migration, error) {
			var list v1.MigrationList
			err := k8s.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{DrainLabel: "node-a"})
			return list.Items, err
		}
		By("an eviction of an uncordoned node's reservation pod moves nothing, and says why")
		msg, err := drainer.AdmitReservationEviction(ctx, pod, false)
		Expect(err).NotTo(HaveOccurred())
		Expect(msg).To(ContainSubstring("only off a cordoned node"))
		Consistently(drainMigrations).WithContext(ctx).Should(BeEmpty())

		By("cordoned: one move at a time, none for the instance whose strategy is None")
		setUnschedulable(ctx, "node-a", true)
		DeferCleanup(func(ctx SpecContext) { setUnschedulable(ctx, "node-a", false) })
		msg, err = drainer.AdmitReservationEviction(ctx, pod, false)
		Expect(err).NotTo(HaveOccurred())
		Expect(msg).To(ContainSubstring("3 left"))
		Expect(msg).To(ContainSubstring("1 with evictionStrategy None"))
		for _, name := range []string{"a", "b", "c"} {
			Expect(msg).NotTo(ContainSubstring(ns+"/"+name), "the refusal, which anyone reaching the webhook may ask for, names no instance")
		}
		Eventually(func(g Gomega) {
			var list eventsv1.EventList
			g.Expect(k8s.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			var notes []string
			for _, e := range list.Items {
				if e.Regarding.Name == "c" && e.Reason == ReasonDrainWaiting {
					notes = append(notes, e.Note)
				}
			}
			g.Expect(notes).To(ContainElement(ContainSubstring("evictionStrategy None")))
		}).WithContext(ctx).Should(Succeed())
		Eventually(drainMigrations).WithContext(ctx).ShouldNot(BeEmpty())
		Consistently(func(g Gomega) {
			migs, err := drainMigrations()
			g.Expect(err).NotTo(HaveOccurred())
			inFlight := 0
			for _, m := range migs {
				g.Expect(m.Spec.InstanceName).NotTo(Equal("c"))
				g.Expect(m.Spec.Type).To(Equal(v1.MigrationLive))
				if !migrationFinal(&m) {
					inFlight++
				}
			}
			g.Expect(inFlight).To(BeNumerically("<=", 1))
		}).WithContext(ctx).Should(Succeed())

		By("uncordoned: the drain is over")
		setUnschedulable(ctx, "node-a", false)
		Eventually(func() (map[string]string, error) {
			node := &corev1.Node{}
			err := k8s.Get(ctx, types.NamespacedName{Name: "node-a"}, node)
			return node.Annotations, err
		}).WithContext(ctx).ShouldNot(HaveKey(DrainAnnotation))
	})
})

// setUnschedulable cordons or uncordons a Node, as kubectl cordon does.
func setUnschedulable(ctx SpecContext, name string, cordoned bool) {
	GinkgoHelper()
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"unschedulable": cordoned}})
	Expect(err).NotTo(HaveOccurred())
	Expect(k8s.Patch(ctx, &corev1.Node{ObjectMeta: metaName(name)}, client.RawPatch(types.MergePatchType, patch))).To(Succeed())
}
