package e2e

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("Lock", Ordered, func() {
	inNamespace("lock")
	const name = "vault"

	BeforeAll(func(ctx SpecContext) {
		instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	// kubectl as an ordinary user (edit in the namespace), and as the cloud's administrator
	// (a member of kubenova:admins).
	asAlice, asOps := false, true
	kubectlAs := func(ctx SpecContext, admin bool, args ...string) (string, error) {
		if admin {
			return kubectlAsCloudAdmin(ctx, args...)
		}
		return kubectl(ctx, args...)
	}

	It("refuses an ordinary user's changes and delete, naming the lock and its reason", func(ctx SpecContext) {
		out, err := kubectlAs(ctx, asAlice, "patch", "instance", name, "--type=merge",
			"-p", `{"spec":{"locked":true,"lockedReason":"under investigation"}}`)
		Expect(err).NotTo(HaveOccurred(), out)
		expectInstance(ctx, name, settled(v1.VMStateActive))

		// The refusal is kubectl's error output. The probe is a change that would do no harm if
		// the policy were not in force yet: the zone the instance is in already.
		Eventually(func() string {
			out, _ := kubectlAs(ctx, asAlice, "patch", "instance", name, "--type=merge", "-p", `{"spec":{"availabilityZone":"zone-1"}}`)
			return out
		}).WithContext(ctx).Should(ContainSubstring("instance vault is locked (under investigation)"))
		out, err = kubectlAs(ctx, asAlice, "patch", "instance", name, "--type=merge", "-p", `{"spec":{"powerState":"Stopped"}}`)
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("instance vault is locked (under investigation): the only change allowed is unlocking it"))
		out, err = kubectlAs(ctx, asAlice, "delete", "instance", name, "--wait=false")
		Expect(err).To(HaveOccurred())
		Expect(out).To(ContainSubstring("instance vault is locked (under investigation): unlock it before deleting it"))
		Consistently(func() (v1.VMState, error) {
			i, err := instance(ctx, name)()
			return i.Status.VMState, err
		}).WithContext(ctx).WithTimeout(3 * time.Second).Should(Equal(v1.VMStateActive))
	}, NodeTimeout(2*time.Minute))

	It("carries out an administrator's change, and lets an administrator delete it", func(ctx SpecContext) {
		out, err := kubectlAs(ctx, asOps, "patch", "instance", name, "--type=merge", "-p", `{"spec":{"powerState":"Stopped"}}`)
		Expect(err).NotTo(HaveOccurred(), out)
		expectInstance(ctx, name, settled(v1.VMStateStopped))
		out, err = kubectlAs(ctx, asOps, "delete", "instance", name, "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(2*time.Minute))
})
