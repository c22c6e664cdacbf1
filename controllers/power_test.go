package controllers

import (
	"context"
	"os"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/gitops"
)

// runID is the fake domain's current run: it changes when the guest boots anew.
func runID(inst *v1.Instance) int64 {
	st, err := fakeDriver.State(context.Background(), string(inst.UID))
	Expect(err).NotTo(HaveOccurred())
	return st.RunID
}

// microNow is now as the API stores a request stamp: to the microsecond.
func microNow() metav1.MicroTime { return metav1.NewMicroTime(time.Now().Truncate(time.Microsecond)) }

func update(ctx SpecContext, inst *v1.Instance, change func(*v1.Instance)) {
	Eventually(func() error {
		cur, err := get(ctx, inst)()
		if err != nil {
			return err
		}
		change(cur)
		return k8s.Update(ctx, cur)
	}).WithContext(ctx).Should(Succeed())
}

func rebootAck(ctx SpecContext, inst *v1.Instance) func() *v1.RequestStatus {
	return func() *v1.RequestStatus {
		cur, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		return cur.Status.RebootRequest
	}
}

var _ = Describe("Power requests", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
	})

	It("never serves a reboot request stamped before the instance was created", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "restored")
		makeImage(ctx, ns, "img")
		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		old := metav1.NewMicroTime(time.Now().Add(-time.Hour))
		inst.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: old}
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(k8s.Delete(ctx, inst)).To(Succeed()) })
		waitForVMState(ctx, inst, v1.VMStateActive)
		Eventually(rebootAck(ctx, inst)).WithContext(ctx).Should(And(
			HaveField("Result", v1.RequestIgnored), HaveField("Reason", v1.ReasonRequestPredatesInstance)))
		cur := current(ctx, inst)
		run := runID(cur)
		Consistently(func() int64 { return runID(cur) }).WithContext(ctx).Should(Equal(run), "no reboot")
	})

	It("serves two requests stamped within one second as two", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "twice")
		cur := current(ctx, inst)
		run := runID(cur)
		first := microNow()
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: first}
		})
		Eventually(rebootAck(ctx, inst)).WithContext(ctx).Should(HaveField("Result", v1.RequestSucceeded))
		second := metav1.NewMicroTime(first.Add(300 * time.Microsecond))
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: second}
		})
		Eventually(rebootAck(ctx, inst)).WithContext(ctx).Should(And(
			HaveField("Result", v1.RequestSucceeded), HaveField("RequestedAt.Time", BeTemporally("==", second.Time))))
		Expect(runID(cur)).To(BeNumerically(">=", run+2), "two reboots, two new runs")
	})

	It("lets a hard reboot interrupt a soft reboot the guest does not answer", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "interrupt")
		fakeDriver.SetIgnoreACPI(true)
		DeferCleanup(func() { fakeDriver.SetIgnoreACPI(false) })
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootSoft, RequestedAt: metav1.NowMicro()}
		})
		Eventually(func() (v1.TaskState, error) {
			cur, err := get(ctx, inst)()
			return cur.Status.TaskState, err
		}).WithContext(ctx).Should(Equal(v1.TaskStateRebooting))
		Consistently(func() (v1.TaskState, error) {
			cur, err := get(ctx, inst)()
			return cur.Status.TaskState, err
		}).WithContext(ctx).Should(Equal(v1.TaskStateRebooting), "the guest ignores the button; the agent waits")

		hard := microNow()
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: hard}
		})
		Eventually(rebootAck(ctx, inst)).WithContext(ctx).Should(And(
			HaveField("Result", v1.RequestSucceeded), HaveField("RequestedAt.Time", BeTemporally("==", hard.Time))))
		waitForVMState(ctx, inst, v1.VMStateActive)
	})

	It("follows the hypervisor when the guest powers off, keeps it off, and starts it on request", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "poweroff")
		cur := current(ctx, inst)
		fakeDriver.SetPowerState(string(cur.UID), v1.PowerStateShutdown, "Shutdown")
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateStopped))
			g.Expect(got.Status.PowerChange).NotTo(BeNil())
			g.Expect(got.Status.PowerChange.FromVMState).To(Equal(v1.VMStateActive))
			g.Expect(got.Status.PowerChange.Reason).To(Equal("Shutdown"))
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(ready.Reason).To(Equal(v1.ReasonPowerStateChanged))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionStalled)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())
		cur = current(ctx, inst)
		expectGitOpsHealth(cur, gitops.Degraded, status.FailedStatus) // off, though its spec says Running
		Consistently(func() (v1.VMState, error) {
			got, err := get(ctx, inst)()
			return got.Status.VMState, err
		}).WithContext(ctx).Should(Equal(v1.VMStateStopped))

		By("a change of the spec that does not ask for power, such as a lock, starts nothing")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Locked, i.Spec.LockedReason = true, "looking into it" })
		Consistently(func() (v1.VMState, error) {
			got, err := get(ctx, inst)()
			return got.Status.VMState, err
		}).WithContext(ctx).Should(Equal(v1.VMStateStopped))

		By("a start request starts it (the suite's client is an administrator)")
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.StartRequest = &v1.StartRequest{RequestedAt: metav1.NowMicro()}
		})
		waitForVMState(ctx, inst, v1.VMStateActive)
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.PowerChange).To(BeNil())
			g.Expect(got.Status.StartRequest.Result).To(Equal(v1.RequestAccepted))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())
	})

	It("stops again an instance someone started behind kubenova's back while its spec says Stopped", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "sneaky")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredStopped })
		waitForVMState(ctx, inst, v1.VMStateStopped)
		cur := current(ctx, inst)
		fakeDriver.SetPowerState(string(cur.UID), v1.PowerStateRunning, "Booted")
		Eventually(func(g Gomega) {
			var list eventsv1.EventList
			g.Expect(k8s.List(ctx, &list, client.InNamespace(cur.Namespace))).To(Succeed())
			var notes []string
			for _, e := range list.Items {
				if e.Regarding.Name == cur.Name && e.Reason == v1.ReasonPowerStateChanged {
					notes = append(notes, e.Note)
				}
			}
			g.Expect(notes).To(ContainElement(ContainSubstring("reports the domain Running")), "what happened is told")
		}).WithContext(ctx).Should(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateStopped))
			g.Expect(got.Status.PowerState).To(Equal(v1.PowerStateShutdown))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())
		cur = current(ctx, inst)
		expectGitOpsHealth(cur, gitops.Suspended, status.CurrentStatus) // off, as its spec says
	})

	It("refuses to start an instance whose disk is missing instead of booting a blank one", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "diskless")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredStopped })
		waitForVMState(ctx, inst, v1.VMStateStopped)
		cur := current(ctx, inst)
		disk, err := agentStore.RootDisk(string(cur.UID))
		Expect(err).NotTo(HaveOccurred())
		// As a storage root that is not mounted shows it: the disk is not there.
		Expect(os.Remove(disk)).To(Succeed())
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredRunning })
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.TaskState).To(BeEmpty())
			g.Expect(got.Status.Fault).NotTo(BeNil())
			g.Expect(got.Status.Fault.Action).To(Equal(v1.ActionStart))
			g.Expect(got.Status.Fault.Message).To(ContainSubstring("is missing on node node-a"))
		}).WithContext(ctx).Should(Succeed())
		Expect(disk).NotTo(BeAnExistingFile(), "no blank disk was made in its place")
		got := current(ctx, inst)
		Expect(got.Status.VMState).To(Equal(v1.VMStateStopped))
		Expect(got.Status.PowerState).NotTo(Equal(v1.PowerStateRunning))
		Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeFalse())
		Consistently(func(g Gomega) {
			now, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(now.Status.TaskState).To(BeEmpty(), "the failed start is not tried again and again")
			g.Expect(now.Status.Fault.Time).To(Equal(got.Status.Fault.Time))
		}).WithContext(ctx).Should(Succeed())
		Expect(disk).NotTo(BeAnExistingFile())
	})

	It("says Ready=Unknown (NodeDown) while the instance's node is down, and Ready again once it is back", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "nodedown")
		expireLease(ctx, "node-a")
		DeferCleanup(func(ctx SpecContext) {
			renewLease(ctx, "node-a", time.Hour)
			Eventually(func() v1.HypervisorState { return hypervisor(ctx, "node-a").Status.State }).WithContext(ctx).Should(Equal(v1.HypervisorUp))
		})
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Status).To(Equal(metav1.ConditionUnknown))
			g.Expect(ready.Reason).To(Equal(v1.ReasonNodeDown))
			g.Expect(ready.Message).To(ContainSubstring("node node-a is down"))
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateActive), "the last state known")
		}).WithContext(ctx).Should(Succeed())
		expectGitOpsHealth(current(ctx, inst), gitops.Degraded, status.InProgressStatus)

		renewLease(ctx, "node-a", time.Hour)
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())
		expectGitOpsHealth(current(ctx, inst), gitops.Healthy, status.CurrentStatus)
	})

	It("writes nothing when a domain event changes nothing", func(ctx SpecContext) {
		inst := createPowerInstance(ctx, "quiet")
		var settled *v1.Instance
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReady)).To(BeTrue())
			settled = got
		}).WithContext(ctx).Should(Succeed())
		Consistently(func() (string, error) {
			got, err := get(ctx, inst)()
			return got.ResourceVersion, err
		}).WithContext(ctx).Should(Equal(settled.ResourceVersion))
		looks := "State " + string(settled.UID)
		calls := fakeDriver.CallCount(looks)
		for range 5 {
			fakeDriver.SetPowerState(string(settled.UID), v1.PowerStateRunning, "Booted")
		}
		Eventually(func() int { return fakeDriver.CallCount(looks) }).WithContext(ctx).Should(BeNumerically(">", calls), "the agent looked")
		Consistently(func() (string, error) {
			got, err := get(ctx, inst)()
			return got.ResourceVersion, err
		}).WithContext(ctx).Should(Equal(settled.ResourceVersion), "and wrote nothing")
	})
})

// createPowerInstance is createOnNodeA for these specs: it waits for Active and deletes the
// instance when the spec ends, so that the node's allocations are as other specs expect.
func createPowerInstance(ctx SpecContext, prefix string) *v1.Instance {
	inst := createOnNodeA(ctx, prefix)
	DeferCleanup(func(ctx SpecContext) {
		Expect(client.IgnoreNotFound(k8s.Delete(ctx, inst))).To(Succeed())
		Eventually(func() error {
			_, err := get(ctx, inst)()
			return err
		}).WithContext(ctx).Should(Satisfy(apierrors.IsNotFound))
	})
	waitForVMState(ctx, inst, v1.VMStateActive)
	return inst
}
