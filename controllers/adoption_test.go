package controllers

import (
	"os"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/storage"
)

var _ = Describe("Adoption of a quarantined disk", func() {
	It("waits for the quarantined disk, places the instance where it is and boots it instead of a new one", func(ctx SpecContext) {
		ensureNodeA(ctx)
		ns := makeNamespace(ctx, "adopt")
		makeImage(ctx, ns, "img")
		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		inst.Spec.AdoptQuarantinedDisk = true
		Expect(k8s.Create(ctx, inst)).To(Succeed())

		By("waiting while no node reports a quarantined disk of ns/web")
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(v1.ReasonQuarantinedDiskNotFound))
		}).WithContext(ctx).Should(Succeed())
		Consistently(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.NodeName).To(BeEmpty(), "not launched from the image meanwhile")
		}).WithContext(ctx).WithTimeout(time.Second).Should(Succeed())

		By("node-a's quarantine getting the disk of a vanished ns/web")
		const oldUID = "0a0a0a0a-0000-4000-8000-00000000beef"
		dir, err := agentStore.InstanceDir(oldUID)
		Expect(err).NotTo(HaveOccurred())
		Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
		Expect(os.WriteFile(filepath.Join(dir, "disk"), []byte("the old guest's data"), 0o644)).To(Succeed())
		since := time.Now().UTC().Truncate(time.Second)
		Expect(agentStore.QuarantineInstanceFiles(oldUID, storage.QuarantineRecord{
			Namespace: ns, Name: "web", Node: "node-a", Reason: "test", Since: since})).To(Succeed())
		setQuarantined(ctx, []v1.QuarantinedInstance{{UID: oldUID, Namespace: ns, Name: "web", Reason: "test",
			Since: metav1.NewTime(since), Bytes: 20}})
		DeferCleanup(func(ctx SpecContext) { setQuarantined(ctx, nil) })

		waitForVMState(ctx, inst, v1.VMStateActive)
		got := current(ctx, inst)
		Expect(got.Status.AdoptedDisk).NotTo(BeNil())
		Expect(got.Status.AdoptedDisk.UID).To(Equal(oldUID))
		disk, err := agentStore.RootDisk(string(got.UID))
		Expect(err).NotTo(HaveOccurred())
		Expect(os.ReadFile(disk)).To(Equal([]byte("the old guest's data")), "it boots the old disk, not a new one")
		m, ok := fakeDriver.Machine(string(got.UID))
		Expect(ok).To(BeTrue())
		Expect(m.RootDisk).To(Equal(disk))
		Expect(filepath.Join(filepath.Dir(disk), "adopted.json")).To(BeARegularFile())
		held, err := agentStore.QuarantinedInstances()
		Expect(err).NotTo(HaveOccurred())
		Expect(held).NotTo(ContainElement(HaveField("QuarantineRecord.UID", oldUID)), "the disk left the quarantine")
	})
})

// setQuarantined writes what node-a's agent would report of its quarantine.
func setQuarantined(ctx SpecContext, q []v1.QuarantinedInstance) {
	Eventually(func() error {
		cur := hypervisor(ctx, "node-a")
		cur.Status.Quarantined = q
		cur.Status.QuarantinedCount = int32(len(q))
		return k8s.Status().Update(ctx, cur)
	}).WithContext(ctx).Should(Succeed())
}
