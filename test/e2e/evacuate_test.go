package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// Evacuation after a node failure: the node's agent, libvirtd and QEMUs are killed at once, as
// a power failure would. host-1 and host-2 share their storage; host-3 has its own.
var _ = Describe("Evacuation", Ordered, disruptive, func() {
	inNamespace("evacuation")
	// What the specs leave for the container's end: the specs build on one another.
	var instances, failed []string
	AfterAll(func(ctx SpecContext) {
		for _, node := range failed {
			restoreNode(ctx, node)
		}
		for _, name := range instances {
			out, err := kubectl(ctx, "delete", "instance", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}
	}, NodeTimeout(4*time.Minute))

	// launchOn creates an instance on node and waits for its first boot.
	launchOn := func(ctx context.Context, name, node string) *v1.Instance {
		applySample(ctx, "image.yaml")
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: "+name, 1)
		manifest = strings.Replace(manifest, "spec:\n", "spec:\n  nodeSelector:\n    kubernetes.io/hostname: "+node+"\n", 1)
		// A NIC, whose MAC the evacuation must keep.
		manifest = strings.Replace(manifest, "spec:\n", "spec:\n  networks:\n  - network: "+utils.ProviderNetworkName+"\n", 1)
		path := writeManifest(name+".yaml", manifest)
		out, err := kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(inst.Status.NodeName).To(Equal(node))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 && c.Last(aliveSeq) >= 1 }, "first boot")
		// The selector pinned the launch; an evacuation goes where it is told.
		patchSpec(ctx, name, `{"spec":{"nodeSelector":null}}`)
		instances = append(instances, name)
		return inst
	}

	// failNode kills a node's agent, libvirtd and QEMUs, and waits until its Hypervisor is Down.
	// The node comes back (unfenced) when the container ends, whatever happened.
	failNode := func(ctx context.Context, node string) {
		h := host(node)
		failed = append(failed, node)
		Expect(cluster.KillAgent(h)).To(Succeed())
		Expect(cluster.KillHost(ctx, h)).To(Succeed())
		Eventually(func(g Gomega) {
			hv := &v1.Hypervisor{}
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: node}, hv)).To(Succeed())
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorDown))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
	}

	evacuation := func(ctx context.Context, inst, target string) *v1.Migration {
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: inst + "-"},
			Spec: v1.MigrationSpec{InstanceName: inst, Type: v1.MigrationEvacuate, TargetNode: target}}
		Expect(cluster.Client.Create(ctx, mig)).To(Succeed())
		return mig
	}

	expectMigrationPhase := func(ctx context.Context, mig *v1.Migration, phase v1.MigrationPhase) *v1.Migration {
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(mig), mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(phase), mig.Status.Message)
		}).WithContext(ctx).WithTimeout(2 * time.Minute).Should(Succeed())
		return mig
	}

	It("refuses to evacuate a node that is not fenced, up or down", func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		inst := launchOn(ctx, "refugee", "host-1")
		mig := expectMigrationPhase(ctx, evacuation(ctx, "refugee", "host-2"), v1.MigrationFailed)
		Expect(mig.Status.Reason).To(Equal("NotFenced"))

		failNode(ctx, "host-1")
		mig = expectMigrationPhase(ctx, evacuation(ctx, "refugee", "host-2"), v1.MigrationFailed)
		Expect(mig.Status.Reason).To(Equal("NotFenced"))
		Expect(mig.Status.Message).To(ContainSubstring("not fenced"))
		Consistently(func(g Gomega) {
			cur, err := instance(ctx, "refugee")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cur.UID).To(Equal(inst.UID))
			g.Expect(cur.Status.NodeName).To(Equal("host-1"), "nothing moves while the node may still run the guest")
			// The hypervisor's word: nothing was defined or started on the other nodes.
			for _, other := range []string{"host-2", "host-3"} {
				out, err := host(other).Virsh(ctx, "list", "--all", "--uuid")
				g.Expect(err).NotTo(HaveOccurred(), out)
				g.Expect(out).NotTo(ContainSubstring(string(inst.UID)), other)
			}
		}).WithContext(ctx).Should(Succeed())
	}, NodeTimeout(4*time.Minute))

	It("rebuilds the instance from its own disk on a node of the same storage once the node is fenced: its data intact", func(ctx SpecContext) {
		before, err := instance(ctx, "refugee")()
		Expect(err).NotTo(HaveOccurred())
		start := time.Now()
		out, err := kubectlNovaAsCloudAdmin(ctx, "evacuate", "host-1", "--force-down", "--target", "host-2", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring("hypervisor.compute.kubenova.io/host-1 forced down"))
		Expect(out).To(ContainSubstring(ns + "/refugee runs on host-2"))
		after := expectInstance(ctx, "refugee", settled(v1.VMStateActive))
		GinkgoWriter.Printf("FIGURE evacuation from fencing to Active (shared storage): %s\n", time.Since(start).Round(10*time.Millisecond))
		Expect(after.Status.NodeName).To(Equal("host-2"))
		Expect(after.UID).To(Equal(before.UID))
		Expect(after.Status.Networks).To(HaveLen(1))
		Expect(after.Status.Networks[0].MACAddress).To(Equal(before.Status.Networks[0].MACAddress), "the NIC keeps its MAC")
		out, err = host("host-2").Virsh(ctx, "domiflist", string(after.UID))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(before.Status.Networks[0].MACAddress))
		Expect(after.Status.MigrationRequest.RebuiltFromImage).To(BeFalse())
		// The guest booted again on host-2 from the same disk: its boot counter, kept on that
		// disk, went on from 1.
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == 2 }, "second boot, from the same disk")
		Expect(qemuCount(after)).To(Equal(1))
	}, NodeTimeout(4*time.Minute))

	It("destroys, never restarts, the old domain when the failed node comes back, and leaves the shared disk alone", func(ctx SpecContext) {
		inst := expectInstance(ctx, "refugee", settled(v1.VMStateActive))
		h := host("host-1")
		Expect(cluster.StartHost(ctx, h)).To(Succeed())
		out, err := h.Virsh(ctx, "list", "--all", "--uuid")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(string(inst.UID)), "the old definition is still there before the agent starts")
		boots := readConsole(inst).Boots()
		// The second guard beside the fencing: QEMU's disk locking. Whoever starts the old
		// definition by hand cannot open the disk the guest on host-2 writes.
		out, err = h.Virsh(ctx, "start", string(inst.UID))
		Expect(err).To(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(`Failed to get "write" lock`))
		Expect(cluster.StartAgent(h)).To(Succeed())
		Eventually(func() (string, error) { return h.Virsh(ctx, "list", "--all", "--uuid") }).
			WithContext(ctx).WithTimeout(60*time.Second).ShouldNot(ContainSubstring(string(inst.UID)), "the returning agent removes it")
		Consistently(func() int { return qemuCount(inst) }).WithContext(ctx).WithTimeout(3 * time.Second).Should(Equal(1))
		Expect(readConsole(inst).Boots()).To(Equal(boots), "the guest on host-2 did not reboot")
		Expect(filepath.Join(h.StorageRoot, "instances", string(inst.UID), "disk")).To(BeAnExistingFile(), "the shared disk stays")
		cur := expectInstance(ctx, "refugee", settled(v1.VMStateActive))
		Expect(cur.Status.NodeName).To(Equal("host-2"))
	}, NodeTimeout(3*time.Minute))

	It("rebuilds from the image, saying the disk's data was lost, when the failed node's storage is its own", func(ctx SpecContext) {
		restoreNode(ctx, "host-1")
		expectHypervisorsUp(ctx)
		inst := launchOn(ctx, "castaway", "host-3")
		failNode(ctx, "host-3")
		out, err := kubectlNovaAsCloudAdmin(ctx, "evacuate", "host-3", "--force-down", "--target", "host-1", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		after := expectInstance(ctx, "castaway", settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal("host-1"))
		Expect(after.UID).To(Equal(inst.UID))
		Expect(after.Status.MigrationRequest.RebuiltFromImage).To(BeTrue())
		var list v1.MigrationList
		Expect(cluster.Client.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		found := false
		for _, m := range list.Items {
			if m.Spec.InstanceName == "castaway" && m.Spec.Type == v1.MigrationEvacuate && m.Status.Phase == v1.MigrationSucceeded {
				found = true
				Expect(m.Status.RebuiltFromImage).To(BeTrue())
				Expect(m.Status.Message).To(ContainSubstring("lost"))
			}
		}
		Expect(found).To(BeTrue())
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == 1 }, "a fresh disk from the image: the first boot again")

		By("the failed node coming back: its old domain goes, its disk, the last copy of the old data, stays in quarantine")
		h := host("host-3")
		restoreNode(ctx, "host-3")
		Eventually(func() (string, error) { return h.Virsh(ctx, "list", "--all", "--uuid") }).
			WithContext(ctx).WithTimeout(60 * time.Second).ShouldNot(ContainSubstring(string(inst.UID)))
		expectQuarantined(ctx, h, inst)
	}, NodeTimeout(5*time.Minute))

	It("destroys at once the guest of an instance evacuated while its node's agent was cut off, when that agent wakes up", func(ctx SpecContext) {
		restoreNode(ctx, "host-3")
		expectHypervisorsUp(ctx)
		inst := launchOn(ctx, "islander", "host-3")
		h := host("host-3")
		agent := cluster.AgentProcess("host-3")
		Expect(agent).NotTo(BeNil())

		By("freezing host-3's agent, as a network partition would cut it off; its guest runs on")
		Expect(agent.Signal(syscall.SIGSTOP)).To(Succeed())
		frozen := true
		DeferCleanup(func() {
			if frozen {
				Expect(agent.Signal(syscall.SIGCONT)).To(Succeed())
			}
		})
		Eventually(func(g Gomega) {
			hv := &v1.Hypervisor{}
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: "host-3"}, hv)).To(Succeed())
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorDown))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		out, err := kubectlNovaAsCloudAdmin(ctx, "evacuate", "host-3", "--force-down", "--target", "host-1", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		after := expectInstance(ctx, "islander", settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal("host-1"))
		state, err := h.Virsh(ctx, "domstate", string(inst.UID))
		Expect(err).NotTo(HaveOccurred(), state)
		Expect(strings.TrimSpace(state)).To(Equal("running"), "nothing stopped the old guest: the fencing was only declared")

		By("waking the agent up: the same process destroys the old guest at once, well before its periodic sweep")
		Expect(agent.Signal(syscall.SIGCONT)).To(Succeed())
		frozen = false
		woke := time.Now()
		Eventually(func() (string, error) { return h.Virsh(ctx, "list", "--all", "--uuid") }).
			WithContext(ctx).WithTimeout(30 * time.Second).ShouldNot(ContainSubstring(string(inst.UID)))
		GinkgoWriter.Printf("FIGURE stale guest destroyed %s after its agent woke up\n", time.Since(woke).Round(10*time.Millisecond))
		Expect(cluster.AgentProcess("host-3").Pid).To(Equal(agent.Pid), "no restart of the agent")
		b, err := os.ReadFile(filepath.Join(cluster.WorkDir, "logs", "agent-host-3.log"))
		Expect(err).NotTo(HaveOccurred())
		Expect(string(b)).To(ContainSubstring("destroying at once the domain of an instance that now lives elsewhere"), "the agent's reaction, not its sweep")
		Expect(filepath.Join(h.StorageRoot, "quarantine", string(inst.UID), "disk")).To(BeARegularFile(), "the old disk is the last copy of the guest's data")
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == 1 && c.Boots() == 1 }, "the evacuated guest on host-1 boots, once")
		restoreNode(ctx, "host-3")
	}, NodeTimeout(5*time.Minute))

	It("evacuates by itself, with --auto-evacuate-after, a node that stays down once it is fenced", func(ctx SpecContext) {
		restoreNode(ctx, "host-3")
		Expect(cluster.StopManager()).To(Succeed())
		Expect(cluster.StartManager("--auto-evacuate-after=5s")).To(Succeed())
		DeferCleanup(func() {
			_ = cluster.StopManager()
			Expect(cluster.StartManager()).To(Succeed())
		})
		expectHypervisorsUp(ctx)
		inst := launchOn(ctx, "driftwood", "host-2")
		failNode(ctx, "host-2")
		Consistently(func(g Gomega) {
			cur, err := instance(ctx, "driftwood")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cur.Status.NodeName).To(Equal("host-2"))
		}).WithContext(ctx).WithTimeout(8*time.Second).Should(Succeed(), "down longer than 5 s, but not fenced: nothing moves")

		hv := &v1.Hypervisor{}
		Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: "host-2"}, hv)).To(Succeed())
		patch := client.MergeFrom(hv.DeepCopy())
		hv.Spec.ForcedDown = true
		Expect(cluster.Client.Patch(ctx, hv, patch)).To(Succeed())
		start := time.Now()
		after := expectInstance(ctx, "driftwood", func(g Gomega, i *v1.Instance) {
			settled(v1.VMStateActive)(g, i)
			g.Expect(i.Status.NodeName).NotTo(Equal("host-2"))
		})
		GinkgoWriter.Printf("FIGURE automatic evacuation from fencing to Active (onto %s): %s\n", after.Status.NodeName, time.Since(start).Round(10*time.Millisecond))
		Expect(after.UID).To(Equal(inst.UID))
		// host-1 shares host-2's storage, host-3 does not: the scheduler's choice decides.
		Expect(after.Status.MigrationRequest.RebuiltFromImage).To(Equal(after.Status.NodeName == "host-3"))
		// refugee, evacuated onto host-2 before, went too: one evacuation per instance, once.
		Eventually(func(g Gomega) {
			var list v1.MigrationList
			g.Expect(cluster.Client.List(ctx, &list, client.InNamespace(ns),
				client.MatchingLabels{"compute.kubenova.io/auto-evacuation": "host-2"})).To(Succeed())
			per := map[string]int{}
			for _, m := range list.Items {
				per[m.Spec.InstanceName]++
				g.Expect(m.Status.Phase).To(Equal(v1.MigrationSucceeded), m.Name)
			}
			g.Expect(per).To(Equal(map[string]int{"driftwood": 1, "refugee": 1}))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		refugee := expectInstance(ctx, "refugee", settled(v1.VMStateActive))
		Expect(refugee.Status.NodeName).NotTo(Equal("host-2"))
	}, NodeTimeout(5*time.Minute))
})

// restoreNode brings a node killed by an evacuation spec back: its libvirtd and agent run and
// it is no longer forced down.
func restoreNode(ctx context.Context, node string) {
	h := host(node)
	out, _ := h.Virsh(ctx, "hostname")
	if strings.TrimSpace(out) != node {
		Expect(cluster.StartHost(ctx, h)).To(Succeed())
	}
	if !agentRuns(node) {
		Expect(cluster.StartAgent(h)).To(Succeed())
	}
	hv := &v1.Hypervisor{}
	Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: node}, hv)).To(Succeed())
	if hv.Spec.ForcedDown {
		patch := client.MergeFrom(hv.DeepCopy())
		hv.Spec.ForcedDown = false
		Expect(cluster.Client.Patch(ctx, hv, patch)).To(Succeed())
	}
	Eventually(func(g Gomega) {
		g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: node}, hv)).To(Succeed())
		g.Expect(hv.Status.State).To(Equal(v1.HypervisorUp), fmt.Sprintf("%s comes back", node))
	}).WithContext(ctx).WithTimeout(90 * time.Second).Should(Succeed())
}

// agentRuns says whether the agent of node runs.
func agentRuns(node string) bool {
	return cluster.AgentProcess(node) != nil
}
