package controllers

import (
	"errors"
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

// onNodeA keeps an instance on the node that has the (fake) agent.
var onNodeA = map[string]string{"agent": "fake"}

var _ = Describe("Instance controller", Ordered, func() {
	BeforeAll(func(ctx SpecContext) {
		ensureNodeA(ctx)
		makeFlavor(ctx, "huge", 64, 1<<20, 1)
	})

	It("launches: Building/Scheduling, then Spawning on the node, then Active and Ready", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "launch")

		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(got.Status.TaskState).To(BeEmpty())
			g.Expect(got.Status.PowerState).To(Equal(v1.PowerStateRunning))
			g.Expect(got.Status.NodeName).To(Equal("node-a"))
			g.Expect(got.Status.Flavor.VCPUs).To(Equal(int32(1)))
			g.Expect(got.Status.LaunchedAt).NotTo(BeNil())
			g.Expect(got.Finalizers).To(ContainElement(v1.FinalizerInstance))
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(ready.ObservedGeneration).To(Equal(got.Generation))
			g.Expect(meta.IsStatusConditionFalse(got.Status.Conditions, v1.ConditionReconciling)).To(BeTrue())
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionScheduled)).To(BeTrue())
			g.Expect(fakeDriver.Has(string(got.UID))).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())

		Eventually(func() v1.Resources { return hypervisor(ctx, "node-a").Status.Allocated }).
			WithContext(ctx).Should(Equal(v1.Resources{VCPUs: 1, MemoryMiB: 256, DiskGiB: 1}))
		hv := hypervisor(ctx, "node-a")
		Expect(hv.Status.ObservedGeneration).To(Equal(hv.Generation))
		Expect(hv.Status.Instances).To(Equal(int32(1)))
		got := current(ctx, inst)
		expectGitOpsHealth(got, gitops.Healthy, status.CurrentStatus)

		By("terminating")
		dir, err := agentStore.InstanceDir(string(got.UID))
		Expect(err).NotTo(HaveOccurred())
		Expect(dir).To(BeADirectory(), "the instance's files are on the node before the delete")
		Expect(k8s.Delete(ctx, inst)).To(Succeed())
		Eventually(func() bool {
			_, err := get(ctx, inst)()
			return apierrors.IsNotFound(err)
		}).WithContext(ctx).Should(BeTrue())
		Expect(fakeDriver.Has(string(got.UID))).To(BeFalse(), "the domain is destroyed")
		Expect(dir).NotTo(BeADirectory(), "the instance's files are deleted")
		Eventually(func() v1.Resources { return hypervisor(ctx, "node-a").Status.Allocated }).
			WithContext(ctx).Should(Equal(v1.Resources{}))
	})

	It("waits with FlavorNotFound until the flavor exists", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "flavorless")
		makeImage(ctx, ns, "img")
		flavor := unique("later")
		inst := newInstance(ns, "web", flavor, "img")
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(v1.ReasonFlavorNotFound), "%+v", got.Status)
			g.Expect(ready.Message).To(ContainSubstring(flavor))
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateBuilding))
		}).WithContext(ctx).Should(Succeed())

		makeFlavor(ctx, flavor, 1, 128, 1)
		Eventually(func() (v1.VMState, error) {
			got, err := get(ctx, inst)()
			return got.Status.VMState, err
		}).WithContext(ctx).Should(Equal(v1.VMStateActive))
	})

	It("refuses a flavor smaller than the image needs, as Stalled, until spec.flavor changes", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "too-small")
		img := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "big-image"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: imageFile}, SHA256: imageSum, MinDiskGiB: 5}}
		Expect(k8s.Create(ctx, img)).To(Succeed())
		inst := newInstance(ns, "web", "small", "big-image")
		inst.Spec.NodeSelector = onNodeA
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonFlavorTooSmall, "needs at least 5 GiB")
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionStalled)).To(BeTrue())
			g.Expect(got.Status.NodeName).To(BeEmpty())
		}).WithContext(ctx).Should(Succeed())

		makeFlavor(ctx, "roomy", 1, 256, 5)
		got, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		got.Spec.Flavor = "roomy"
		Expect(k8s.Update(ctx, got)).To(Succeed())
		waitForVMState(ctx, inst, v1.VMStateActive)
	})

	It("says NoValidHost with the filter to blame, records an Event, and places once a node fits", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "novalid")
		makeImage(ctx, ns, "img")
		inst := newInstance(ns, "big", "huge", "img")
		inst.Spec.NodeSelector = map[string]string{"pool": "big"}
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			sched := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionScheduled)
			g.Expect(sched).NotTo(BeNil())
			g.Expect(sched.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(sched.Reason).To(Equal(v1.ReasonNoValidHost))
			g.Expect(sched.Message).To(ContainSubstring("NodeSelectorFilter rejected"))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionReconciling)).To(BeTrue(),
				"waiting for a host is progress to kstatus, not failure")
		}).WithContext(ctx).Should(Succeed())
		Eventually(func(g Gomega) {
			var events eventsv1.EventList
			g.Expect(k8s.List(ctx, &events, client.InNamespace(ns))).To(Succeed())
			reasons := []string{}
			for _, e := range events.Items {
				if e.Regarding.Name == "big" {
					reasons = append(reasons, e.Reason)
				}
			}
			g.Expect(reasons).To(ContainElement(v1.ReasonNoValidHost))
		}).WithContext(ctx).Should(Succeed())

		By("adding a node that fits, without an agent: the instance is placed there and waits in Spawning")
		makeNode(ctx, "big-node", v1.Resources{VCPUs: 64, MemoryMiB: 1 << 21, DiskGiB: 100}, map[string]string{"pool": "big"}, time.Hour)
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.NodeName).To(Equal("big-node"))
			g.Expect(got.Status.TaskState).To(Equal(v1.TaskStateSpawning))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionScheduled)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())

		By("deleting it while its node's agent never answers: once the node is down, it goes")
		Expect(k8s.Delete(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred(), "the node is up: the object stays until its agent has cleaned up")
			g.Expect(got.DeletionTimestamp).NotTo(BeNil())
			g.Expect(got.Status.Task).NotTo(BeNil())
			g.Expect(got.Status.Task.Action).To(Equal(v1.ActionTerminate))
			g.Expect(got.Status.TaskState).To(Equal(v1.TaskStateDeleting))
		}).WithContext(ctx).Should(Succeed())
		Consistently(func() error { _, err := get(ctx, inst)(); return err }).WithContext(ctx).
			WithTimeout(2*time.Second).Should(Succeed(), "no answer from the agent: the object waits")
		expireLease(ctx, "big-node")
		Eventually(func() bool { _, err := get(ctx, inst)(); return apierrors.IsNotFound(err) }).
			WithContext(ctx).WithTimeout(30 * time.Second).Should(BeTrue())
	})

	It("never overcommits a small node when many instances launch at once", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "crowd")
		makeImage(ctx, ns, "img")
		makeNode(ctx, "tiny-node", v1.Resources{VCPUs: 3, MemoryMiB: 3 * 256, DiskGiB: 100}, map[string]string{"pool": "tiny"}, time.Hour)
		const launched = 12
		for i := 0; i < launched; i++ {
			inst := newInstance(ns, unique("crowd"), "small", "img")
			inst.Spec.NodeSelector = map[string]string{"pool": "tiny"}
			Expect(k8s.Create(ctx, inst)).To(Succeed())
		}
		count := func() (placed, refused int) {
			var list v1.InstanceList
			Expect(k8s.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
			for _, inst := range list.Items {
				if inst.Status.NodeName == "tiny-node" {
					placed++
				}
				if c := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionScheduled); c != nil && c.Reason == v1.ReasonNoValidHost {
					refused++
				}
			}
			return placed, refused
		}
		Eventually(func(g Gomega) {
			placed, refused := count()
			g.Expect(placed).To(Equal(3))
			g.Expect(refused).To(Equal(launched - 3))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		Consistently(func() int { p, _ := count(); return p }).WithContext(ctx).WithTimeout(3 * time.Second).Should(Equal(3))
		Eventually(func() v1.Resources { return hypervisor(ctx, "tiny-node").Status.Allocated }).
			WithContext(ctx).Should(Equal(v1.Resources{VCPUs: 3, MemoryMiB: 768, DiskGiB: 3}))

		expireLease(ctx, "tiny-node")
		Expect(k8s.DeleteAllOf(ctx, &v1.Instance{}, client.InNamespace(ns))).To(Succeed())
		Eventually(func() int { p, _ := count(); return p }).WithContext(ctx).WithTimeout(30 * time.Second).Should(BeZero())
	})

	It("puts an instance whose spawn fails in Error, with the fault, as Stalled", func(ctx SpecContext) {
		fakeDriver.SetFail("Spawn", errors.New("the disk is on fire"))
		DeferCleanup(func() { fakeDriver.SetFail("Spawn", nil) })
		inst := createOnNodeA(ctx, "broken")
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateError))
			g.Expect(got.Status.TaskState).To(BeEmpty())
			g.Expect(got.Status.Fault).NotTo(BeNil())
			g.Expect(got.Status.Fault.Message).To(ContainSubstring("the disk is on fire"))
			g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, v1.ConditionStalled)).To(BeTrue())
			ready := meta.FindStatusCondition(got.Status.Conditions, v1.ConditionReady)
			g.Expect(ready.Reason).To(Equal(v1.ReasonInstanceError))
		}).WithContext(ctx).Should(Succeed())
		got := current(ctx, inst)
		expectGitOpsHealth(got, gitops.Degraded, status.FailedStatus)
	})

	It("gives a failed terminate a new task until the domain is gone, never dropping the object", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "stubborn")
		waitForVMState(ctx, inst, v1.VMStateActive)
		fakeDriver.SetFail("Destroy", errors.New("device busy"))
		DeferCleanup(func() { fakeDriver.SetFail("Destroy", nil) })
		Expect(k8s.Delete(ctx, inst)).To(Succeed())

		var firstID int64
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.AgentReport).NotTo(BeNil())
			g.Expect(got.Status.AgentReport.TaskResult).To(Equal(v1.TaskFailed))
			g.Expect(got.Status.AgentReport.Message).To(ContainSubstring("device busy"))
			firstID = got.Status.AgentReport.TaskID
		}).WithContext(ctx).Should(Succeed())
		Eventually(func() (int64, error) {
			got, err := get(ctx, inst)()
			if err != nil || got.Status.Task == nil {
				return 0, err
			}
			return got.Status.Task.ID, nil
		}).WithContext(ctx).Should(BeNumerically(">", firstID), "a new terminate task is given")

		fakeDriver.SetFail("Destroy", nil)
		Eventually(func() bool { _, err := get(ctx, inst)(); return apierrors.IsNotFound(err) }).
			WithContext(ctx).WithTimeout(40 * time.Second).Should(BeTrue())
	})

	It("refuses requests the state machine forbids, with a reason, and changes nothing; carries out an administrator's change of a locked instance", func(ctx SpecContext) {
		inst := createOnNodeA(ctx, "refuse")
		waitForVMState(ctx, inst, v1.VMStateActive)

		By("changing its flavor to one no node has room for: it waits, and nothing changes")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Flavor = "huge" })
		Eventually(func(g Gomega) {
			cur, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			ready := meta.FindStatusCondition(cur.Status.Conditions, v1.ConditionReady)
			g.Expect(ready.Reason).To(Equal(v1.ReasonNoValidHost))
			g.Expect(cur.Status.Flavor.Name).To(Equal("small"), "the instance keeps the flavor it runs with")
			g.Expect(cur.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(cur.Status.Task).To(BeNil())
			g.Expect(cur.Status.Resize).To(BeNil())
		}).WithContext(ctx).Should(Succeed())

		By("locking it, then asking (as an administrator) for a hard reboot: carried out, the lock was checked by the API server")
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.Flavor, i.Spec.Locked, i.Spec.LockedReason = "small", true, "audit"
		})
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootHard, RequestedAt: microNow()}
		})
		Eventually(func(g Gomega) {
			cur, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cur.Status.RebootRequest).NotTo(BeNil())
			g.Expect(cur.Status.RebootRequest.Result).To(Equal(v1.RequestSucceeded))
			g.Expect(cur.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(meta.IsStatusConditionTrue(cur.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).Should(Succeed())

		By("a soft reboot of a paused instance: refused in status, and no later request is hidden")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredPaused })
		waitForVMState(ctx, inst, v1.VMStatePaused)
		update(ctx, inst, func(i *v1.Instance) {
			i.Spec.RebootRequest = &v1.RebootRequest{Type: v1.RebootSoft, RequestedAt: microNow()}
		})
		Eventually(func(g Gomega) {
			cur, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cur.Status.RebootRequest.Result).To(Equal(v1.RequestRefused))
			g.Expect(cur.Status.RebootRequest.Reason).To(Equal(v1.ReasonInvalidState))
			g.Expect(cur.Status.RebootRequest.Message).To(ContainSubstring("reboot is allowed from Active"))
		}).WithContext(ctx).Should(Succeed())
		update(ctx, inst, func(i *v1.Instance) { i.Spec.PowerState = v1.DesiredRunning })
		waitForVMState(ctx, inst, v1.VMStateActive)
	})
})

// expireLease makes a node's heartbeat lapse, as when its agent dies: the last renewal vouches
// for one second only. (The manager judges renewals by its own clock, so backdating the renew
// time alone would not do.)
func expireLease(ctx SpecContext, node string) {
	setLease(ctx, node, time.Second, time.Now().Add(-time.Hour))
	Eventually(func() v1.HypervisorState { return hypervisor(ctx, node).Status.State }).WithContext(ctx).Should(Equal(v1.HypervisorDown))
}
