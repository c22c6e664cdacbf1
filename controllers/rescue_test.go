package controllers

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("Rescue", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	It("boots a rescue image with the root disk second, and unrescue boots the root disk again", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "rescue")
		waitForVMState(ctx, inst, v1.VMStateActive)
		makeImage(ctx, inst.Namespace, "rescue-kit")
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.Rescue = &v1.RescueSpec{Image: &v1.ImageReference{Name: "rescue-kit"}}
		})
		waitForVMState(ctx, inst, v1.VMStateRescued)
		got := current(ctx, inst)
		Expect(got.Status.RescueImage.Name).To(Equal("rescue-kit"))
		Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		m, ok := fakeDriver.Machine(string(got.UID))
		Expect(ok).To(BeTrue())
		root, err := agentStore.RootDisk(string(got.UID))
		Expect(err).NotTo(HaveOccurred())
		Expect(m.RootDisk).To(Equal(root))
		Expect(m.RescueDisk).To(HaveSuffix("/disk.rescue"), "the rescue disk boots, the root disk second")
		rescueDisk := m.RescueDisk
		mustStat(rescueDisk)

		update(ctx, inst, func(i *v1.Instance) { i.Spec.Rescue = nil })
		waitForVMState(ctx, inst, v1.VMStateActive)
		got = current(ctx, inst)
		Expect(got.Status.RescueImage).To(BeNil())
		m, _ = fakeDriver.Machine(string(got.UID))
		Expect(m.RescueDisk).To(BeEmpty())
		Expect(m.RootDisk).To(Equal(root))
		Expect(rescueDisk).NotTo(BeAnExistingFile(), "the rescue disk is gone")
	})

	It("rescues with the instance's own image when spec.rescue names none, and waits for a missing rescue image", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "rescue-default")
		waitForVMState(ctx, inst, v1.VMStateActive)
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.Rescue = &v1.RescueSpec{Image: &v1.ImageReference{Name: "not-yet"}}
		})
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := expectReadyReason(g, got.Status.Conditions, v1.ReasonImageNotFound)
			g.Expect(ready.Message).To(Equal("rescue image: image not-yet does not exist in namespace " + inst.Namespace))
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
		}).WithContext(ctx).Should(Succeed())

		update(ctx, inst, func(i *v1.Instance) { i.Spec.Rescue = &v1.RescueSpec{} })
		waitForVMState(ctx, inst, v1.VMStateRescued)
		got := current(ctx, inst)
		Expect(got.Status.RescueImage.Name).To(Equal("img"), "Nova's default: the instance's own image")
	})
})
