package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

var _ = Describe("Power operations", Ordered, func() {
	inNamespace("power")
	const name = "power"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest")
	}, NodeTimeout(3*time.Minute))

	It("shuts off through ACPI and starts again from the same disk", func(ctx SpecContext) {
		// A guest still early in its boot does not hear the power button yet.
		expectConsole(ctx, inst, func(c console) bool { return c.SinceLastBoot().Last(aliveSeq) >= 1 }, "the guest listening to its power button")
		m := measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Stopped"}}`) }, restsIn(v1.VMStateStopped))
		report("shut off (apply to Stopped)", m)
		inst = expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.PowerState).To(Equal(v1.PowerStateShutdown))
			g.Expect(i.Status.AgentReport.PowerReason).To(Equal("Shutdown"), "the guest shut down by itself, after the ACPI button")
		})
		Expect(string(readConsole(inst))).To(ContainSubstring("powering off"))
		// Events are written asynchronously: a ShutdownTimedOut would show within moments.
		Consistently(func() []string { return events(ctx, name, v1.ReasonShutdownTimedOut) }).WithContext(ctx).Should(BeEmpty())
		domstate, err := host(inst.Status.NodeName).Virsh(ctx, "domstate", inst.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), domstate)
		Expect(domstate).To(ContainSubstring("shut off"))

		m = measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`) }, restsIn(v1.VMStateActive))
		report("start (apply to Active)", m)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 2 }, "the second boot, from the same disk")
	}, NodeTimeout(4*time.Minute))

	It("reboots soft and hard, each request served exactly once", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount)
		at := stamp()
		m := measure(ctx, name, func() {
			patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Soft","requestedAt":%q}}}`, at))
		}, rebootServed(at, v1.RequestSucceeded))
		report("soft reboot (request to Succeeded)", m)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots+1 }, "the soft reboot's boot")
		Expect(string(readConsole(inst).BetweenLastTwoBoots())).To(ContainSubstring("powering off"), "a soft reboot goes through the guest's own shutdown")

		at = stamp()
		m = measure(ctx, name, func() {
			patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":%q}}}`, at))
		}, rebootServed(at, v1.RequestSucceeded))
		report("hard reboot (request to Succeeded)", m)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots+2 }, "the hard reboot's boot")
		Consistently(func() int { return readConsole(inst).Last(bootCount) }).WithContext(ctx).
			WithTimeout(5*time.Second).WithPolling(250*time.Millisecond).Should(Equal(boots+2), "each request is served once")
		cur := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.Status.RebootRequest.TaskID).To(BeNumerically(">", 0))
	}, NodeTimeout(4*time.Minute))

	It("pauses the guest, which makes no progress, and unpauses it without a reboot", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) >= 1 }, "an alive line")
		m := measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Paused"}}`) }, restsIn(v1.VMStatePaused))
		report("pause (apply to Paused)", m)
		paused := expectInstance(ctx, name, settled(v1.VMStatePaused))
		Expect(paused.Status.PowerState).To(Equal(v1.PowerStatePaused))
		domstate, err := host(paused.Status.NodeName).Virsh(ctx, "domstate", paused.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), domstate)
		Expect(strings.TrimSpace(domstate)).To(Equal("paused"))
		Expect(qemuCount(paused)).To(Equal(1), "a paused guest's QEMU stays, its vCPUs stopped")
		seq := readConsole(inst).Last(aliveSeq)
		Consistently(func() int { return readConsole(inst).Last(aliveSeq) }).WithContext(ctx).
			WithTimeout(7*time.Second).WithPolling(250*time.Millisecond).Should(Equal(seq), "a paused guest prints nothing")

		m = measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`) }, restsIn(v1.VMStateActive))
		report("unpause (apply to Active)", m)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) > seq }, "the counter going on")
		Expect(readConsole(inst).Last(bootCount)).To(Equal(boots), "unpause does not reboot")
	}, NodeTimeout(3*time.Minute))

	It("suspends to disk, QEMU gone and the memory in libvirt's managed save, and resumes the same guest", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount)
		m := measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Suspended"}}`) }, restsIn(v1.VMStateSuspended))
		report("suspend (apply to Suspended)", m)
		cur := expectInstance(ctx, name, settled(v1.VMStateSuspended))
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStateSuspended))
		expectSuspendedOnNode(ctx, cur)
		seq := readConsole(inst).Last(aliveSeq)

		m = measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`) }, restsIn(v1.VMStateActive))
		report("resume (apply to Active)", m)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) > seq }, "the counter going on from where it was")
		Expect(readConsole(inst).Last(bootCount)).To(Equal(boots), "resume does not reboot")
		Expect(qemuCount(inst)).To(Equal(1))
	}, NodeTimeout(4*time.Minute))

	It("refuses a transition the state machine forbids, once, and changes nothing", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount)
		patchSpec(ctx, name, `{"spec":{"powerState":"Stopped"}}`)
		expectInstance(ctx, name, settled(v1.VMStateStopped))
		patchSpec(ctx, name, `{"spec":{"powerState":"Paused"}}`)
		cur := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			ready := findCondition(i, v1.ConditionReady)
			g.Expect(ready.Reason).To(Equal(v1.ReasonInvalidState))
			g.Expect(ready.Message).To(ContainSubstring("pause is allowed from Active"))
			g.Expect(ready.ObservedGeneration).To(Equal(i.Generation))
			g.Expect(findCondition(i, v1.ConditionStalled).Status).To(Equal(metav1.ConditionTrue))
		})
		Expect(cur.Status.VMState).To(Equal(v1.VMStateStopped))
		Expect(cur.Status.Task).To(BeNil())
		Eventually(func() []string { return events(ctx, name, v1.ReasonInvalidState) }).WithContext(ctx).Should(HaveLen(1))
		Consistently(func() []string { return events(ctx, name, v1.ReasonInvalidState) }).WithContext(ctx).
			WithTimeout(3 * time.Second).Should(HaveLen(1))

		By("a soft reboot of the stopped instance is refused in status and hides no later request")
		at := stamp()
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"powerState":"Running","rebootRequest":{"type":"Soft","requestedAt":%q}}}`, at))
		cur = expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.Status.RebootRequest.Result).To(Equal(v1.RequestRefused))
		Expect(cur.Status.RebootRequest.Reason).To(Equal(v1.ReasonInvalidState))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots+1 }, "started once, not rebooted")
	}, NodeTimeout(4*time.Minute))

	It("believes the hypervisor when the guest powers off or QEMU dies, and does not restart it", func(ctx SpecContext) {
		cur := expectInstance(ctx, name, settled(v1.VMStateActive))
		h := host(cur.Status.NodeName)
		expectConsole(ctx, inst, func(c console) bool { return c.SinceLastBoot().Last(aliveSeq) >= 1 }, "the guest listens to its power button")

		By("the guest powering itself off")
		m := measure(ctx, name, func() {
			out, err := h.Virsh(ctx, "shutdown", "--mode", "acpi", cur.Status.AgentReport.DomainName)
			Expect(err).NotTo(HaveOccurred(), out)
		}, func(i *v1.Instance) bool { return i.Status.VMState == v1.VMStateStopped })
		report("guest power-off seen (to vm state Stopped)", m)
		cur = expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.PowerState).To(Equal(v1.PowerStateShutdown))
			g.Expect(i.Status.PowerChange).NotTo(BeNil())
			g.Expect(i.Status.PowerChange.Reason).To(Equal("Shutdown"))
			ready := findCondition(i, v1.ConditionReady)
			g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(ready.Reason).To(Equal(v1.ReasonPowerStateChanged))
		})
		Consistently(func() (v1.VMState, error) {
			i, err := instance(ctx, name)()
			return i.Status.VMState, err
		}).WithContext(ctx).WithTimeout(5*time.Second).Should(Equal(v1.VMStateStopped), "Nova's policy: not restarted")

		By("a start request starts it again")
		boots := readConsole(inst).Last(bootCount)
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"startRequest":{"requestedAt":%q}}}`, stamp()))
		cur = expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.Status.StartRequest.Result).To(Equal(v1.RequestAccepted))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == boots+1 }, "booted again")

		By("QEMU killed with SIGKILL")
		m = measure(ctx, name, func() {
			out, err := exec.Command("pkill", "-KILL", "-f", "guest="+cur.Status.AgentReport.DomainName+",").CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(out))
		}, func(i *v1.Instance) bool { return i.Status.VMState == v1.VMStateStopped })
		report("QEMU killed seen (to vm state Stopped)", m)
		cur = expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.PowerState).To(Equal(v1.PowerStateCrashed))
			g.Expect(i.Status.AgentReport.PowerReason).To(Equal("Crashed"))
			g.Expect(findCondition(i, v1.ConditionReady).Status).To(Equal(metav1.ConditionFalse))
		})
		Eventually(func() []string { return events(ctx, name, v1.ReasonPowerStateChanged) }).WithContext(ctx).Should(HaveLen(2))
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"startRequest":{"requestedAt":%q}}}`, stamp()))
		expectInstance(ctx, name, settled(v1.VMStateActive))
	}, NodeTimeout(4*time.Minute))
})

var _ = Describe("A guest that ignores ACPI", Ordered, func() {
	inNamespace("noacpi")
	const name = "stubborn"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest-noacpi")
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) >= 1 }, "an alive line")
		Expect(string(readConsole(inst))).To(ContainSubstring("ignoring the ACPI power button"))
	}, NodeTimeout(3*time.Minute))

	It("is rebooted hard when a soft reboot times out, and says so", func(ctx SpecContext) {
		at := stamp()
		m := measure(ctx, name, func() {
			patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Soft","requestedAt":%q}}}`, at))
		}, rebootServed(at, v1.RequestSucceeded))
		report("soft reboot of a guest ignoring ACPI (request to Succeeded)", m)
		Expect(m.elapsed).To(BeNumerically(">=", utils.AgentRebootTimeout), "the agent waited for the guest first")
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 2 }, "the hard reboot's boot")
		Eventually(func() []string { return events(ctx, name, v1.ReasonRebootFellBackToHard) }).WithContext(ctx).Should(HaveLen(1))
	}, NodeTimeout(3*time.Minute))

	It("lets a hard reboot interrupt a soft reboot that hangs", func(ctx SpecContext) {
		soft := stamp()
		patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Soft","requestedAt":%q}}}`, soft))
		expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.TaskState).To(Equal(v1.TaskStateRebooting))
		})
		hard := stamp()
		m := measure(ctx, name, func() {
			patchSpec(ctx, name, fmt.Sprintf(`{"spec":{"rebootRequest":{"type":"Hard","requestedAt":%q}}}`, hard))
		}, rebootServed(hard, v1.RequestSucceeded))
		report("hard reboot interrupting a soft one (request to Succeeded)", m)
		Expect(m.elapsed).To(BeNumerically("<", utils.AgentRebootTimeout), "the hard reboot did not wait for the soft one")
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 3 }, "one boot for both requests")
		Consistently(func() int { return readConsole(inst).Last(bootCount) }).WithContext(ctx).
			WithTimeout(utils.AgentRebootTimeout).WithPolling(500*time.Millisecond).Should(Equal(3), "the abandoned soft reboot does not strike later")
		Consistently(func() []string { return events(ctx, name, v1.ReasonRebootFellBackToHard) }).WithContext(ctx).Should(HaveLen(1))
	}, NodeTimeout(3*time.Minute))

	It("is powered off when it ignores the power button for the shutdown timeout", func(ctx SpecContext) {
		m := measure(ctx, name, func() { patchSpec(ctx, name, `{"spec":{"powerState":"Stopped"}}`) }, restsIn(v1.VMStateStopped))
		report("shut off of a guest ignoring ACPI (apply to Stopped)", m)
		Expect(m.elapsed).To(BeNumerically(">=", utils.AgentShutdownTimeout))
		Expect(expectInstance(ctx, name, settled(v1.VMStateStopped)).Status.AgentReport.PowerReason).To(Equal("Destroyed"))
		Eventually(func() []string { return events(ctx, name, v1.ReasonShutdownTimedOut) }).WithContext(ctx).Should(HaveLen(1))
	}, NodeTimeout(3*time.Minute))
})

var _ = Describe("Crashes in the middle of a power task", Ordered, disruptive, func() {
	inNamespace("power-crashes")
	const name = "phoenix-power"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		inst = instanceForSpecs(ctx, name, "test-guest-noacpi")
	}, NodeTimeout(3*time.Minute))

	// crashBoth applies patch and kills the instance's agent and the manager with SIGKILL once
	// the instance is in task state task, then starts both again.
	crashBoth := func(ctx SpecContext, patch string, task v1.TaskState) {
		h := host(inst.Status.NodeName)
		cutShortAt(ctx, name, task, func() { patchSpec(ctx, name, patch) }, func() {
			Expect(cluster.KillAgent(h)).To(Succeed())
			Expect(cluster.KillManager()).To(Succeed())
		})
		Expect(qemuCount(inst)).To(BeNumerically("<=", 1))
		Expect(cluster.StartManager()).To(Succeed())
		Expect(cluster.StartAgent(h)).To(Succeed())
	}

	It("finishes a stop cut short by SIGKILL of the manager and the agent", func(ctx SpecContext) {
		crashBoth(ctx, `{"spec":{"powerState":"Stopped"}}`, v1.TaskStatePoweringOff)
		cur := expectInstance(ctx, name, settled(v1.VMStateStopped))
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStateShutdown))
		Expect(qemuCount(inst)).To(Equal(0))
	}, NodeTimeout(3*time.Minute))

	It("finishes a suspend cut short by SIGKILL of the manager and the agent, and resumes the same guest", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount) + 1
		patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`)
		expectInstance(ctx, name, settled(v1.VMStateActive))
		expectConsole(ctx, inst, func(c console) bool {
			return c.Last(bootCount) == boots && c.SinceLastBoot().Last(aliveSeq) >= 1
		}, "booted again, and an alive line")

		crashBoth(ctx, `{"spec":{"powerState":"Suspended"}}`, v1.TaskStateSuspending)
		cur := expectInstance(ctx, name, settled(v1.VMStateSuspended))
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStateSuspended))
		Expect(qemuCount(inst)).To(Equal(0))
		seq := readConsole(inst).Last(aliveSeq)

		patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`)
		expectInstance(ctx, name, settled(v1.VMStateActive))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) > seq }, "the counter going on")
		Expect(readConsole(inst).Last(bootCount)).To(Equal(boots), "resumed, not rebooted")
		Expect(qemuCount(inst)).To(Equal(1))
	}, NodeTimeout(3*time.Minute))

	It("keeps a suspended guest suspended through restarts of its agent and of libvirtd, and resumes the same guest", func(ctx SpecContext) {
		boots := readConsole(inst).Last(bootCount)
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) >= 1 }, "an alive line")
		patchSpec(ctx, name, `{"spec":{"powerState":"Suspended"}}`)
		cur := expectInstance(ctx, name, settled(v1.VMStateSuspended))
		expectSuspendedOnNode(ctx, cur)
		seq := readConsole(inst).Last(aliveSeq)

		By("restarting the node's agent and its libvirtd")
		h := host(cur.Status.NodeName)
		Expect(cluster.StopAgent(h)).To(Succeed())
		Expect(cluster.RestartLibvirtd(ctx, h)).To(Succeed())
		Expect(cluster.StartAgent(h)).To(Succeed())
		expectHypervisorsUp(ctx)
		cur = expectInstance(ctx, name, settled(v1.VMStateSuspended))
		Expect(cur.Status.PowerState).To(Equal(v1.PowerStateSuspended))
		expectSuspendedOnNode(ctx, cur)

		patchSpec(ctx, name, `{"spec":{"powerState":"Running"}}`)
		expectInstance(ctx, name, settled(v1.VMStateActive))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(aliveSeq) > seq }, "the counter going on from where it was")
		Expect(readConsole(inst).Last(bootCount)).To(Equal(boots), "resume does not reboot")
	}, NodeTimeout(4*time.Minute))
})

// expectSuspendedOnNode checks the hypervisor's side of a suspended instance: no QEMU runs it,
// and libvirt holds its memory in a managed-save image.
func expectSuspendedOnNode(ctx context.Context, inst *v1.Instance) {
	GinkgoHelper()
	Expect(qemuCount(inst)).To(Equal(0), "no QEMU runs while suspended")
	info, err := host(inst.Status.NodeName).Virsh(ctx, "dominfo", inst.Status.AgentReport.DomainName)
	Expect(err).NotTo(HaveOccurred(), info)
	Expect(info).To(MatchRegexp(`(?m)^State:\s+shut off$`))
	Expect(info).To(MatchRegexp(`(?m)^Managed save:\s+yes$`))
}

// qemuCount is how many QEMU processes run the instance's domain on this machine, all hosts
// together: never more than one. pgrep's "none" (exit 1) is 0; any other failure fails the
// spec rather than pass for "gone".
func qemuCount(inst *v1.Instance) int {
	GinkgoHelper()
	Expect(inst.Status.AgentReport).NotTo(BeNil())
	Expect(inst.Status.AgentReport.DomainName).NotTo(BeEmpty())
	out, err := exec.Command("pgrep", "-c", "-f", "guest="+inst.Status.AgentReport.DomainName+",").Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		return 0
	}
	Expect(err).NotTo(HaveOccurred(), "pgrep")
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	Expect(err).NotTo(HaveOccurred(), "pgrep -c printed %q", out)
	return n
}
