package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Server groups on nodes without agents: what is checked is where the manager places each
// member (status.nodeName), and why one waits.
var _ = Describe("Server groups", Ordered, func() {
	var ns string
	sgNodes := map[string]string{"pool": "server-groups"}

	BeforeAll(func(ctx SpecContext) {
		ns = makeNamespace(ctx, "groups")
		makeImage(ctx, ns, "img")
		ensureNodeA(ctx) // the flavor "small"
		for _, node := range []string{"sg-1", "sg-2"} {
			makeNode(ctx, node, v1.Resources{VCPUs: 8, MemoryMiB: 16384, DiskGiB: 100}, sgNodes, time.Hour)
		}
		// Before the namespace's clean-up (LIFO): the nodes go down, so that the instances
		// placed on them, which no agent terminates, can go.
		DeferCleanup(func(ctx SpecContext) {
			for _, node := range []string{"sg-1", "sg-2", "sg-3"} {
				if err := k8s.Get(ctx, client.ObjectKey{Name: node}, &v1.Hypervisor{}); err == nil {
					expireLease(ctx, node)
				}
			}
		})
	})

	group := func(ctx context.Context, name string, policy v1.ServerGroupPolicy, maxPerHost *int32) {
		GinkgoHelper()
		Expect(k8s.Create(ctx, &v1.ServerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1.ServerGroupSpec{Policy: policy, MaxServerPerHost: maxPerHost}})).To(Succeed())
	}
	member := func(ctx context.Context, name, groupName string) *v1.Instance {
		GinkgoHelper()
		inst := newInstance(ns, name, "small", "img")
		inst.Spec.NodeSelector = sgNodes
		inst.Spec.ServerGroup = groupName
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		return inst
	}
	placedOn := func(ctx context.Context, inst *v1.Instance) string {
		GinkgoHelper()
		var node string
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			node = got.Status.NodeName
			g.Expect(node).NotTo(BeEmpty())
		}).WithContext(ctx).Should(Succeed())
		return node
	}
	waitsFor := func(ctx context.Context, inst *v1.Instance, reason, part string) {
		GinkgoHelper()
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.NodeName).To(BeEmpty())
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(reason))
			g.Expect(ready.Message).To(ContainSubstring(part))
		}).WithContext(ctx).Should(Succeed())
	}

	It("places an anti-affinity group's members on different nodes; one more waits until a node without a member appears", func(ctx SpecContext) {
		group(ctx, "ha", v1.ServerGroupAntiAffinity, nil)
		a, b := member(ctx, "ha-a", "ha"), member(ctx, "ha-b", "ha")
		nodeA, nodeB := placedOn(ctx, a), placedOn(ctx, b)
		Expect(nodeA).NotTo(Equal(nodeB))
		c := member(ctx, "ha-c", "ha")
		waitsFor(ctx, c, v1.ReasonNoValidHost, "ServerGroupAntiAffinityFilter rejected 2")
		Consistently(func() (string, error) {
			got, err := get(ctx, c)()
			return got.Status.NodeName, err
		}).WithContext(ctx).WithTimeout(2 * time.Second).Should(BeEmpty())

		makeNode(ctx, "sg-3", v1.Resources{VCPUs: 8, MemoryMiB: 16384, DiskGiB: 100}, sgNodes, time.Hour)
		Expect(placedOn(ctx, c)).To(Equal("sg-3"))

		Eventually(func(g Gomega) {
			sg := &v1.ServerGroup{}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ha"}, sg)).To(Succeed())
			g.Expect(sg.Status.Members).To(Equal([]v1.ServerGroupMember{
				{Name: "ha-a", NodeName: nodeA}, {Name: "ha-b", NodeName: nodeB}, {Name: "ha-c", NodeName: "sg-3"}}))
		}).WithContext(ctx).Should(Succeed())
	})

	It("puts up to maxServerPerHost members of an anti-affinity group on one node", func(ctx SpecContext) {
		group(ctx, "pairs", v1.ServerGroupAntiAffinity, ptr.To[int32](2))
		counts := map[string]int{}
		for _, name := range []string{"p-1", "p-2", "p-3", "p-4", "p-5", "p-6"} {
			counts[placedOn(ctx, member(ctx, name, "pairs"))]++
		}
		Expect(counts).To(Equal(map[string]int{"sg-1": 2, "sg-2": 2, "sg-3": 2}))
		waitsFor(ctx, member(ctx, "p-7", "pairs"), v1.ReasonNoValidHost, "ServerGroupAntiAffinityFilter rejected 3")
	})

	It("places an affinity group's members with the first", func(ctx SpecContext) {
		group(ctx, "together", v1.ServerGroupAffinity, nil)
		first := placedOn(ctx, member(ctx, "t-1", "together"))
		for _, name := range []string{"t-2", "t-3"} {
			Expect(placedOn(ctx, member(ctx, name, "together"))).To(Equal(first))
		}
	})

	It("has a launch wait for a group that does not exist yet, and go on once it does", func(ctx SpecContext) {
		early := member(ctx, "early", "later")
		waitsFor(ctx, early, v1.ReasonServerGroupNotFound, "server group later does not exist")
		group(ctx, "later", v1.ServerGroupAffinity, nil)
		placedOn(ctx, early)
	})

	It("refuses to change a member's group or a group's policy, and rules that are not anti-affinity's", func(ctx SpecContext) {
		inst := &v1.Instance{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "t-1"}, inst)).To(Succeed())
		inst.Spec.ServerGroup = "ha"
		err := k8s.Update(ctx, inst)
		Expect(err).To(MatchError(ContainSubstring("serverGroup is fixed at creation")))
		inst.Spec.ServerGroup = ""
		Expect(k8s.Update(ctx, inst)).To(MatchError(ContainSubstring("serverGroup is fixed at creation")))

		sg := &v1.ServerGroup{}
		Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "ha"}, sg)).To(Succeed())
		sg.Spec.Policy = v1.ServerGroupSoftAntiAffinity
		Expect(k8s.Update(ctx, sg)).To(MatchError(ContainSubstring("policy is immutable")))

		bad := &v1.ServerGroup{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad"},
			Spec: v1.ServerGroupSpec{Policy: v1.ServerGroupAffinity, MaxServerPerHost: ptr.To[int32](2)}}
		Expect(k8s.Create(ctx, bad)).To(MatchError(ContainSubstring("maxServerPerHost is a rule of the anti-affinity policy only")))
		bad.Spec = v1.ServerGroupSpec{Policy: "spread"}
		Expect(k8s.Create(ctx, bad)).To(MatchError(ContainSubstring("Unsupported value")))
	})
})
