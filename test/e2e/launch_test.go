package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

const bootLine = "kubenova-test-guest: booted count=1"

func instance(ctx context.Context, name string) func() (*v1.Instance, error) {
	return func() (*v1.Instance, error) {
		inst := &v1.Instance{}
		err := cluster.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, inst)
		return inst, err
	}
}

func host(name string) utils.Host {
	for _, h := range cluster.Hosts {
		if h.Name == name {
			return h
		}
	}
	Fail("no host " + name)
	return utils.Host{}
}

// applySample applies one of config/samples: the flavors and public images as the cloud's
// administrator (they are the cloud's), the rest as the ordinary user, in ns.
func applySample(ctx context.Context, name string) {
	path := writeManifest(name, mustRender(name))
	var out string
	var err error
	if name == "flavors.yaml" || name == "clusterimage.yaml" {
		out, err = cluster.KubectlAsCloudAdmin(ctx, "apply", "-f", path)
	} else {
		out, err = kubectl(ctx, "apply", "-f", path)
	}
	Expect(err).NotTo(HaveOccurred(), out)
}

var _ = Describe("Launch and terminate", Ordered, disruptive, func() {
	inNamespace("launch")
	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
	})

	It("boots real guests on both nodes, shows Nova's columns, and removes domain and disk on delete", func(ctx SpecContext) {
		// Two instances of 256 MiB: the RAM-spread weigher puts them on different nodes.
		second := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: demo-2", 1)
		secondPath := writeManifest("demo-2.yaml", second)
		applied := time.Now()
		applySample(ctx, "instance.yaml")
		out, err := kubectl(ctx, "apply", "-f", secondPath)
		Expect(err).NotTo(HaveOccurred(), out)

		nodes := map[string]string{}
		for _, name := range []string{"demo", "demo-2"} {
			Eventually(func(g Gomega) {
				inst, err := instance(ctx, name)()
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
				g.Expect(inst.Status.TaskState).To(BeEmpty())
				g.Expect(inst.Status.PowerState).To(Equal(v1.PowerStateRunning))
				g.Expect(meta.IsStatusConditionTrue(inst.Status.Conditions, v1.ConditionReady)).To(BeTrue())
				g.Expect(inst.Status.ObservedGeneration).To(Equal(inst.Generation))
				nodes[name] = inst.Status.NodeName
			}).WithContext(ctx).WithTimeout(90 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
		}
		GinkgoWriter.Printf("apply to Active (both instances): %s\n", time.Since(applied).Round(time.Millisecond))
		Expect(nodes["demo"]).NotTo(Equal(nodes["demo-2"]), "RAM spread places the two instances on different nodes")

		var disk string
		for name, node := range nodes {
			inst, err := instance(ctx, name)()
			Expect(err).NotTo(HaveOccurred())
			h := host(node)
			dominfo, err := h.Virsh(ctx, "domstate", inst.Status.AgentReport.DomainName)
			Expect(err).NotTo(HaveOccurred(), dominfo)
			Expect(dominfo).To(ContainSubstring("running"))
			Eventually(func() (string, error) {
				b, err := os.ReadFile(inst.Status.AgentReport.ConsoleLogPath)
				return string(b), err
			}).WithContext(ctx).WithTimeout(90*time.Second).WithPolling(250*time.Millisecond).Should(ContainSubstring(bootLine), name)
			GinkgoWriter.Printf("%s: apply to console boot line: %s\n", name, time.Since(applied).Round(time.Millisecond))
			if name == "demo" {
				disk = filepath.Join(h.StorageRoot, "instances", string(inst.UID), "disk")
			}
		}
		Expect(disk).To(BeAnExistingFile())

		out, err = kubectl(ctx, "get", "instances")
		Expect(err).NotTo(HaveOccurred(), out)
		header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
		Expect(header).To(Equal([]string{"NAME", "STATUS", "TASK", "POWER", "NODE", "NETWORKS", "FLAVOR", "IMAGE", "SPEC_FLAVOR", "SPEC_IMAGE", "AGE"}))
		// An instance without NICs leaves NETWORKS empty, which kubectl prints as nothing.
		Expect(out).To(MatchRegexp(`demo\s+Active\s+Running\s+host-\d\s+m1.tiny\s+test-guest\s+m1.tiny\s+test-guest`))
		GinkgoWriter.Printf("kubectl get instances:\n%s", out)

		demo, err := instance(ctx, "demo")()
		Expect(err).NotTo(HaveOccurred())
		h := host(demo.Status.NodeName)
		deleted := time.Now()
		out, err = kubectl(ctx, "delete", "instance", "demo", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
		GinkgoWriter.Printf("kubectl delete to gone: %s\n", time.Since(deleted).Round(time.Millisecond))
		list, err := h.Virsh(ctx, "list", "--all", "--name")
		Expect(err).NotTo(HaveOccurred())
		Expect(list).NotTo(ContainSubstring(demo.Status.AgentReport.DomainName))
		Expect(disk).NotTo(BeAnExistingFile())
		_, err = os.Stat(filepath.Dir(disk))
		Expect(os.IsNotExist(err)).To(BeTrue(), "the instance directory is gone")
		base, err := filepath.Glob(filepath.Join(h.StorageRoot, "_base", "*"))
		Expect(err).NotTo(HaveOccurred())
		Expect(base).NotTo(BeEmpty(), "the node's image cache is kept")

		// The other instance and its disk are untouched.
		other, err := instance(ctx, "demo-2")()
		Expect(err).NotTo(HaveOccurred())
		Expect(other.Status.VMState).To(Equal(v1.VMStateActive))
		Expect(filepath.Join(host(other.Status.NodeName).StorageRoot, "instances", string(other.UID), "disk")).To(BeAnExistingFile())

		out, err = kubectl(ctx, "delete", "instance", "demo-2", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(5*time.Minute))

	It("does not hang deleting an instance whose node died", func(ctx SpecContext) {
		second := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: orphan", 1)
		path := writeManifest("orphan.yaml", second)
		out, err := kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		var inst *v1.Instance
		Eventually(func(g Gomega) {
			inst, err = instance(ctx, "orphan")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
		}).WithContext(ctx).WithTimeout(90 * time.Second).Should(Succeed())
		h := host(inst.Status.NodeName)

		By("stopping the node's agent, as a node failure would")
		Expect(cluster.StopAgent(h)).To(Succeed())
		Eventually(func(g Gomega) {
			hv := &v1.Hypervisor{}
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: h.Name}, hv)).To(Succeed())
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorDown))
			g.Expect(meta.IsStatusConditionFalse(hv.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		// Nobody can tell whether the guest runs: not Ready, not un-Ready either.
		expectInstance(ctx, "orphan", func(g Gomega, cur *v1.Instance) {
			ready := findCondition(cur, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Status).To(Equal(metav1.ConditionUnknown))
			g.Expect(ready.Reason).To(Equal(v1.ReasonNodeDown))
		})

		out, err = kubectl(ctx, "delete", "instance", "orphan", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)

		By("restarting the agent: it removes the domain and keeps the files in quarantine")
		list, err := h.Virsh(ctx, "list", "--all", "--name")
		Expect(err).NotTo(HaveOccurred(), list)
		Expect(list).To(ContainSubstring(inst.Status.AgentReport.DomainName), "the domain outlived its instance while the agent was down")
		Expect(filepath.Join(h.StorageRoot, "instances", string(inst.UID))).To(BeADirectory(), "and so did its files")
		Expect(cluster.StartAgent(h)).To(Succeed())
		Eventually(func() (string, error) {
			return h.Virsh(ctx, "list", "--all", "--name")
		}).WithContext(ctx).WithTimeout(60 * time.Second).ShouldNot(ContainSubstring(inst.Status.AgentReport.DomainName))
		// Its terminate never ran on the node: nothing there proves the disk unwanted.
		expectQuarantined(ctx, h, inst)
		Eventually(func(g Gomega) {
			hv := &v1.Hypervisor{}
			g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: h.Name}, hv)).To(Succeed())
			g.Expect(hv.Status.State).To(Equal(v1.HypervisorUp))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
	}, NodeTimeout(5*time.Minute))

	It("keeps the disk of an instance whose object was lost in quarantine, and boots it again for the instance applied anew with adoptQuarantinedDisk", func(ctx SpecContext) {
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: lost", 1)
		path := writeManifest("lost.yaml", manifest)
		out, err := kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		old := expectInstance(ctx, "lost", settled(v1.VMStateActive))
		expectConsole(ctx, old, func(c console) bool { return c.Last(bootCount) == 1 && c.Last(aliveSeq) >= 1 }, "first boot, its counter on the disk")
		h := host(old.Status.NodeName)

		By("losing the object as an etcd restore would: no finalizer, gone at once, no terminate")
		// The manager would put its finalizer back at once; it is away while the object goes.
		Expect(cluster.StopManager()).To(Succeed())
		managerDown := true
		DeferCleanup(func() {
			if managerDown {
				Expect(cluster.StartManager()).To(Succeed())
			}
		})
		out, err = cluster.KubectlWith(ctx, cluster.AdminKubeconfig, "-n", ns, "patch", "instance", "lost",
			"--type=merge", "-p", `{"metadata":{"finalizers":null}}`)
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = cluster.KubectlWith(ctx, cluster.AdminKubeconfig, "-n", ns, "delete", "instance", "lost", "--wait=true", "--timeout=30s")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(cluster.StartManager()).To(Succeed())
		managerDown = false

		By("applying it again from Git, asking for its quarantined disk: it waits, as no node has swept yet")
		adopting := strings.Replace(manifest, "spec:\n", "spec:\n  adoptQuarantinedDisk: true\n", 1)
		Expect(adopting).NotTo(Equal(manifest))
		out, err = kubectl(ctx, "apply", "-f", writeManifest("lost-adopting.yaml", adopting))
		Expect(err).NotTo(HaveOccurred(), out)
		waiting := expectInstance(ctx, "lost", func(g Gomega, inst *v1.Instance) {
			ready := findCondition(inst, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(v1.ReasonQuarantinedDiskNotFound))
			g.Expect(inst.Status.NodeName).To(BeEmpty())
		})
		Expect(waiting.UID).NotTo(Equal(old.UID))
		list, err := h.Virsh(ctx, "list", "--all", "--name")
		Expect(err).NotTo(HaveOccurred(), list)
		Expect(list).To(ContainSubstring(old.Status.AgentReport.DomainName), "nothing removed the old domain while its agent ran")

		By("restarting the old node's agent, whose sweep at start quarantines the old disk")
		Expect(cluster.StopAgent(h)).To(Succeed())
		Expect(cluster.StartAgent(h)).To(Succeed())
		Eventually(func() (string, error) {
			return h.Virsh(ctx, "list", "--all", "--name")
		}).WithContext(ctx).WithTimeout(60 * time.Second).ShouldNot(ContainSubstring(old.Status.AgentReport.DomainName))
		// The sweep puts the old disk in quarantine, and the waiting instance takes it from there
		// at once (the Hypervisor listing it wakes the instance), so the disk may have left the
		// quarantine already: the node's Event says it went through it (the spec above shows a
		// quarantine that stays).
		Eventually(func() ([]string, error) { return hypervisorEvents(ctx, h.Name, "InstanceFilesQuarantined") }).
			WithContext(ctx).WithTimeout(30 * time.Second).Should(ContainElement(ContainSubstring(string(old.UID))))

		By("the new instance boots the old disk: the guest's counter goes on")
		adopted := expectInstance(ctx, "lost", settled(v1.VMStateActive))
		Expect(adopted.UID).To(Equal(waiting.UID))
		Expect(adopted.Status.AdoptedDisk).NotTo(BeNil())
		Expect(adopted.Status.AdoptedDisk.UID).To(Equal(string(old.UID)))
		Expect(host(adopted.Status.NodeName).StorageRoot).To(Equal(h.StorageRoot), "placed where the disk is")
		expectConsole(ctx, adopted, func(c console) bool { return c.Last(bootCount) == 2 }, "second boot, from the old disk")
		dom, err := host(adopted.Status.NodeName).Virsh(ctx, "domstate", adopted.Status.AgentReport.DomainName)
		Expect(err).NotTo(HaveOccurred(), dom)
		Expect(strings.TrimSpace(dom)).To(Equal("running"))
		Expect(filepath.Join(h.StorageRoot, "quarantine", string(old.UID))).NotTo(BeADirectory(), "the disk left the quarantine")
		Expect(filepath.Join(h.StorageRoot, "instances", string(old.UID))).NotTo(BeADirectory(), "and is the new instance's only")
		Expect(filepath.Join(h.StorageRoot, "instances", string(adopted.UID), "adopted.json")).To(BeARegularFile())
		out, err = kubectl(ctx, "delete", "instance", "lost", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(5*time.Minute))
})

// expectQuarantined checks that the node kept the vanished instance's disk in its quarantine
// (whole: qemu-img reads it, on its base image) and says so in its Hypervisor's status, in an
// Event and through kubectl nova quarantine-list.
func expectQuarantined(ctx context.Context, h utils.Host, inst *v1.Instance) {
	GinkgoHelper()
	uid := string(inst.UID)
	dir := filepath.Join(h.StorageRoot, "quarantine", uid)
	Eventually(filepath.Join(dir, "disk")).WithTimeout(30 * time.Second).Should(BeARegularFile())
	Expect(filepath.Join(h.StorageRoot, "instances", uid)).NotTo(BeADirectory())
	out, err := exec.CommandContext(ctx, "qemu-img", "check", "-U", filepath.Join(dir, "disk")).CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "the quarantined disk is a sound qcow2: %s", out)
	Expect(filepath.Join(dir, "quarantine.json")).To(BeARegularFile())
	Eventually(func(g Gomega) {
		hv := &v1.Hypervisor{}
		g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Name: h.Name}, hv)).To(Succeed())
		g.Expect(hv.Status.Quarantined).To(ContainElement(And(HaveField("UID", uid),
			HaveField("Namespace", inst.Namespace), HaveField("Name", inst.Name), HaveField("Bytes", BeNumerically(">", 0)))))
	}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
	Eventually(func() ([]string, error) { return hypervisorEvents(ctx, h.Name, "InstanceFilesQuarantined") }).
		WithContext(ctx).WithTimeout(30 * time.Second).Should(ContainElement(ContainSubstring(uid)))
	out2, err := kubectlNovaAsCloudAdmin(ctx, "quarantine-list")
	Expect(err).NotTo(HaveOccurred(), out2)
	Expect(out2).To(MatchRegexp(`(?m)^%s\s+%s/%s\s+\S*%s`, uid, inst.Namespace, inst.Name, h.Name))
}

var _ = Describe("Restarts", Ordered, disruptive, func() {
	inNamespace("restarts")

	It("finishes a launch across restarts of the manager and of every agent", func(ctx SpecContext) {
		applySample(ctx, "image.yaml")
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: phoenix", 1)
		path := writeManifest("phoenix.yaml", manifest)

		By("creating the instance while no manager runs")
		Expect(cluster.StopManager()).To(Succeed())
		// Whatever happens below, leave the cluster whole for the other specs.
		stopped := map[string]bool{"manager": true}
		DeferCleanup(func() {
			if stopped["manager"] {
				Expect(cluster.StartManager()).To(Succeed())
			}
			for _, h := range cluster.Hosts {
				if stopped[h.Name] {
					Expect(cluster.StartAgent(h)).To(Succeed())
				}
			}
		})
		out, err := kubectl(ctx, "apply", "-f", path)
		Expect(err).NotTo(HaveOccurred(), out)
		inst, err := instance(ctx, "phoenix")()
		Expect(err).NotTo(HaveOccurred())
		Expect(inst.Status.VMState).To(BeEmpty(), "nothing acts on it yet")

		By("stopping every agent, then starting the manager: it places the instance and waits")
		for _, h := range cluster.Hosts {
			Expect(cluster.StopAgent(h)).To(Succeed())
			stopped[h.Name] = true
		}
		Expect(cluster.StartManager()).To(Succeed())
		stopped["manager"] = false
		Eventually(func(g Gomega) {
			inst, err := instance(ctx, "phoenix")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateBuilding))
			g.Expect(inst.Status.TaskState).To(Equal(v1.TaskStateSpawning))
			g.Expect(inst.Status.NodeName).NotTo(BeEmpty())
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())

		By("starting the agents again: the one of its node spawns it")
		for _, h := range cluster.Hosts {
			Expect(cluster.StartAgent(h)).To(Succeed())
			stopped[h.Name] = false
		}
		Eventually(func(g Gomega) {
			inst, err = instance(ctx, "phoenix")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(meta.IsStatusConditionTrue(inst.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		}).WithContext(ctx).WithTimeout(90 * time.Second).Should(Succeed())
		Eventually(func() (string, error) {
			b, err := os.ReadFile(inst.Status.AgentReport.ConsoleLogPath)
			return string(b), err
		}).WithContext(ctx).WithTimeout(90 * time.Second).Should(ContainSubstring(bootLine))

		out, err = kubectl(ctx, "delete", "instance", "phoenix", "--wait=true", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(5*time.Minute))
})

// mustRender renders a sample for ns.
func mustRender(name string) string {
	b, err := utils.RenderSample(name)
	Expect(err).NotTo(HaveOccurred())
	if ns == "" {
		return string(b)
	}
	return strings.ReplaceAll(string(b), "namespace: default", "namespace: "+ns)
}

// hypervisorEvents returns the notes of the Events about a node's Hypervisor with the given reason.
func hypervisorEvents(ctx context.Context, node, reason string) ([]string, error) {
	var list eventsv1.EventList
	if err := cluster.Client.List(ctx, &list); err != nil {
		return nil, err
	}
	var notes []string
	for _, e := range list.Items {
		if e.Regarding.Kind == "Hypervisor" && e.Regarding.Name == node && e.Reason == reason {
			notes = append(notes, e.Note)
		}
	}
	return notes, nil
}
