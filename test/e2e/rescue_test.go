package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var vdbCount = regexp.MustCompile(`vdb count=(\d+)`)

var _ = Describe("Rescue", Ordered, func() {
	inNamespace("rescue")
	const name = "rescued"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	// The rescue system is the test guest booted from a fresh disk (its own count starts at 1):
	// it prints the boot count it finds on the second disk, the instance's, and writes a note
	// there, which the instance prints once it boots its own disk again.
	It("boots the rescue image with the instance's disk second, and unrescue boots that disk with what the rescue system wrote", func(ctx SpecContext) {
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":%q}}}`, stamp()))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 2 }, "boot 2")
		boots := readConsole(inst).Boots()

		start := time.Now()
		out, err := kubectlNova(ctx, "rescue", name, "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE rescue (kubectl nova rescue --wait): %s\n", time.Since(start).Round(10*time.Millisecond))
		cur := expectInstance(ctx, name, settled(v1.VMStateRescued))
		Expect(cur.Status.RescueImage.Name).To(Equal("test-guest"), "Nova's default: the instance's own image")
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStateRunning))
		expectConsole(ctx, inst, func(c console) bool {
			return c.Boots() == boots+1 && c.Last(bootCount) == 1 && c.Last(vdbCount) == 2
		}, "the rescue system, reading the instance's disk")

		start = time.Now()
		out, err = kubectlNova(ctx, "unrescue", name, "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("FIGURE unrescue (kubectl nova unrescue --wait): %s\n", time.Since(start).Round(10*time.Millisecond))
		cur = expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.Status.RescueImage).To(BeNil())
		expectConsole(ctx, inst, func(c console) bool {
			return c.Boots() == boots+2 && c.Last(bootCount) == 3 &&
				strings.Contains(string(c.BetweenLastTwoBoots()), "rescued=by a rescue system at its boot 1")
		}, "the instance's own disk again, with the rescue system's note")
		Expect(qemuCount(inst)).To(Equal(1))
	}, NodeTimeout(3*time.Minute))
})
