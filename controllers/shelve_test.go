package controllers

import (
	"os"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/gitops"
)

var _ = Describe("Shelve", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	It("shelves into an image, offloads (freeing the node), and unshelves from the image, which then goes", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "shelve")
		waitForVMState(ctx, inst, v1.VMStateActive)
		before := current(ctx, inst)
		dir, err := agentStore.InstanceDir(string(before.UID))
		Expect(err).NotTo(HaveOccurred())
		Expect(dir).To(BeADirectory(), "the instance's disks are on the node before the shelve")
		Eventually(func() int32 { return hypervisor(ctx, "node-a").Status.Instances }).WithContext(ctx).Should(BeNumerically(">=", 1))
		instancesBefore := hypervisor(ctx, "node-a").Status.Instances

		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredShelved })
		waitForVMState(ctx, inst, v1.VMStateShelvedOffloaded)
		got := current(ctx, inst)
		Expect(got.Status.NodeName).To(BeEmpty(), "an offloaded instance has no node")
		Expect(got.Status.ShelvedImage.Name).To(Equal("web-shelved"))
		Expect(got.Status.ShelvedAt).NotTo(BeNil())
		expectGitOpsHealth(got, gitops.Suspended, status.CurrentStatus)
		Expect(got.Status.Image.Name).To(Equal("img"))
		Expect(fakeDriver.Has(string(got.UID))).To(BeFalse(), "the domain is gone from the node")
		_, err = os.Stat(dir)
		Expect(os.IsNotExist(err)).To(BeTrue(), "the disks are gone from the node")
		shelved := expectImage(ctx, inst.Namespace, "web-shelved", func(g Gomega, img *v1.Image) {
			g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable))
		})
		Expect(shelved.Spec.Source.ShelvedInstance).To(Equal("web"))
		Expect(shelved.OwnerReferences).To(HaveLen(1))
		Expect(shelved.OwnerReferences[0].UID).To(Equal(got.UID))
		Eventually(func() int32 { return hypervisor(ctx, "node-a").Status.Instances }).WithContext(ctx).
			Should(Equal(instancesBefore-1), "the node's resources are freed")

		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredRunning })
		waitForVMState(ctx, inst, v1.VMStateActive)
		got = current(ctx, inst)
		Expect(got.UID).To(Equal(before.UID))
		Expect(got.Status.NodeName).To(Equal("node-a"))
		Expect(got.Status.Image.Name).To(Equal("img"), "status.image keeps naming the image the instance was built from")
		Expect(got.Status.ShelvedImage).To(BeNil())
		Expect(fakeDriver.Has(string(got.UID))).To(BeTrue())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: "web-shelved"}, &v1.Image{}))
		}).WithContext(ctx).Should(BeTrue(), "the shelved image goes once the instance is Active")
	})

	It("deletes an offloaded instance at once, with its shelved image", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "shelve-delete")
		waitForVMState(ctx, inst, v1.VMStateActive)
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredShelved })
		waitForVMState(ctx, inst, v1.VMStateShelvedOffloaded)
		expectImage(ctx, inst.Namespace, "web-shelved", func(g Gomega, img *v1.Image) {
			g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable))
		})
		Expect(k8s.Delete(ctx, inst)).To(Succeed())
		Eventually(func() bool { _, err := get(ctx, inst)(); return apierrors.IsNotFound(err) }).WithContext(ctx).Should(BeTrue())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, types.NamespacedName{Namespace: inst.Namespace, Name: "web-shelved"}, &v1.Image{}))
		}).WithContext(ctx).Should(BeTrue())
	})
})
