package controllers

import (
	"os"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("User data", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	It("boots with a config drive made from the Secret, and waits, unplaced, for a missing Secret", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "userdata")
		makeImage(ctx, ns, "img")
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "boot"},
			Data: map[string][]byte{"script": []byte("#!/bin/sh\necho hi\n")}})).To(Succeed())
		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		inst.Spec.UserData = &v1.UserDataSource{SecretName: "boot", Key: "script"}
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		waitForVMState(ctx, inst, v1.VMStateActive)
		got := current(ctx, inst)
		m, ok := fakeDriver.Machine(string(got.UID))
		Expect(ok).To(BeTrue())
		Expect(m.ConfigDrive).To(HaveSuffix("/config-drive.img"))
		_, err := os.Stat(m.ConfigDrive)
		Expect(err).NotTo(HaveOccurred())
		// The agent read the manager's copy in kubenova's namespace, not the user's Secret.
		copied := &corev1.Secret{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: leaseNamespace, Name: v1.UserDataCopyName(got.UID)}, copied)).To(Succeed())
		Expect(copied.Data).To(Equal(map[string][]byte{v1.UserDataCopyKey: []byte("#!/bin/sh\necho hi\n")}))
		Expect(k8s.Delete(ctx, got)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKeyFromObject(copied), &corev1.Secret{}))
		}).WithContext(ctx).Should(BeTrue(), "the copy goes with its instance")

		orphan := newInstance(ns, "orphan", "small", "img")
		orphan.Spec.NodeSelector = onNodeA
		orphan.Spec.UserData = &v1.UserDataSource{SecretName: "missing"}
		Expect(k8s.Create(ctx, orphan)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, orphan)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := expectReadyReason(g, got.Status.Conditions, v1.ReasonUserDataNotFound)
			g.Expect(ready.Message).To(Equal("user data: secret missing does not exist in namespace " + ns))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReconciling)).To(BeTrue())
			g.Expect(got.Status.NodeName).To(BeEmpty(), "not placed only to fail on the node")
		}).WithContext(ctx).Should(Succeed())
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "missing"},
			Data: map[string][]byte{"userdata": []byte("#cloud-config\n")}})).To(Succeed())
		Eventually(func() (v1.VMState, error) {
			got, err := get(ctx, orphan)()
			return got.Status.VMState, err
		}).WithContext(ctx).WithTimeout(30*time.Second).Should(Equal(v1.VMStateActive), "launched once the Secret is there")
	})
})
