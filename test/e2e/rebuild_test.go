package e2e

import (
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

var _ = Describe("Rebuild", Ordered, func() {
	inNamespace("rebuild")
	const name = "rebuilt"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		applyGuestImage(ctx, "test-guest-noacpi", utils.GuestImageNoACPI)
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	hardReboot := func(ctx SpecContext, boots int) {
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":%q}}}`, stamp()))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots }, fmt.Sprintf("boot %d", boots))
	}

	// The test guest counts its boots on its root disk: a fresh disk starts again at 1.
	It("rebuilds onto its own image: same instance, node and UID, a fresh disk", func(ctx SpecContext) {
		hardReboot(ctx, 2)
		start := time.Now()
		out, err := kubectlNova(ctx, "rebuild", name, "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE rebuild onto the same image (kubectl nova rebuild --wait): %s\n", time.Since(start).Round(10*time.Millisecond))
		cur := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.UID).To(Equal(inst.UID))
		Expect(cur.Status.NodeName).To(Equal(inst.Status.NodeName))
		Expect(cur.Status.RebuildRequest.Result).To(Equal(v1.RequestSucceeded))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 }, "a boot from a fresh disk")
		Expect(qemuCount(inst)).To(Equal(1))
	}, NodeTimeout(3*time.Minute))

	It("rebuilds onto another image by a change of spec.image", func(ctx SpecContext) {
		boots := readConsole(inst).Boots()
		start := time.Now()
		patchSpec(ctx, name, `{"spec":{"image":{"name":"test-guest-noacpi"}}}`)
		cur := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			settled(v1.VMStateActive)(g, i)
			g.Expect(i.Status.Image.Name).To(Equal("test-guest-noacpi"))
		})
		GinkgoWriter.Printf("FIGURE rebuild onto another image (spec.image to Active): %s\n", time.Since(start).Round(10*time.Millisecond))
		Expect(cur.UID).To(Equal(inst.UID))
		expectConsole(ctx, inst, func(c console) bool {
			// The guest says so just before its boot line.
			return c.Boots() == boots+1 && c.Last(bootCount) == 1 && strings.Contains(string(c.BetweenLastTwoBoots()), "ignoring the ACPI power button")
		}, "the other image's guest")
	}, NodeTimeout(3*time.Minute))

	It("rebuilds from a snapshot, which restores what the snapshot holds", func(ctx SpecContext) {
		hardReboot(ctx, 2)
		hardReboot(ctx, 3)
		out, err := kubectlNova(ctx, "snapshot", name, "rebuilt-at-3", "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		hardReboot(ctx, 4)
		hardReboot(ctx, 5)
		boots := readConsole(inst).Boots()
		out, err = kubectlNova(ctx, "rebuild", name, "--image", "rebuilt-at-3", "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		cur := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.Status.Image.Name).To(Equal("rebuilt-at-3"))
		expectConsole(ctx, inst, func(c console) bool { return c.Boots() == boots+1 && c.Last(bootCount) == 4 },
			"the snapshot's 3 boots, and this one")
	}, NodeTimeout(3*time.Minute))
})
