package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// nicLine matches the test guest's line for a DHCP lease: "nic eth0 mac=... ip=...".
var nicLine = regexp.MustCompile(`nic (eth\d+) mac=([0-9a-f:]{17}) ip=([0-9.]+)`)

// lastLease is the MAC and address of the guest's last lease on eth0 ("" if none yet).
func lastLease(c console) (mac, ip string) {
	m := nicLine.FindAllStringSubmatch(string(c), -1)
	if len(m) == 0 {
		return "", ""
	}
	return m[len(m)-1][2], m[len(m)-1][3]
}

// ping sends one echo request from this machine to the guest across the provider bridge.
func ping(ctx context.Context, ip string) error {
	out, err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", "2", ip).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s: %w: %s", ip, err, out)
	}
	return nil
}

var _ = Describe("Networking", Ordered, func() {
	inNamespace("network")
	const name = "netty"
	var mac, ip string

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"},
				NodeSelector: map[string]string{"kubernetes.io/hostname": "host-1"},
				Networks:     []v1.NetworkInterface{{Network: utils.ProviderNetworkName}}}}
		Expect(cluster.Client.Create(ctx, inst)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			out, err := kubectl(ctx, "delete", "instance", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}, NodeTimeout(2*time.Minute))
	}, NodeTimeout(3*time.Minute))

	// expectSameNIC checks, after a move, that the instance runs on node with the MAC and the
	// address it had, and that the guest answers a ping there.
	expectSameNIC := func(ctx context.Context, node string) *v1.Instance {
		inst := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(inst.Status.NodeName).To(Equal(node))
		Expect(inst.Status.Networks).To(HaveLen(1))
		Expect(inst.Status.Networks[0].MACAddress).To(Equal(mac))
		out, err := host(node).Virsh(ctx, "domiflist", string(inst.UID))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(ContainSubstring(mac), "the domain on %s has the NIC's MAC", node)
		Expect(out).To(ContainSubstring(cluster.Network.Bridge))
		Eventually(func() error { return ping(ctx, ip) }).WithContext(ctx).WithTimeout(90*time.Second).
			WithPolling(time.Second).Should(Succeed(), "the guest answers at %s on %s", ip, node)
		// The agent of the new node sees the address itself; status keeps showing it.
		return expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			report := i.Status.AgentReport
			g.Expect(report).NotTo(BeNil())
			g.Expect(report.NodeName).To(Equal(node))
			g.Expect(report.Interfaces).To(HaveLen(1))
			g.Expect(report.Interfaces[0].MACAddress).To(Equal(mac))
			g.Expect(report.Interfaces[0].IPAddresses).To(ContainElement(ip))
			g.Expect(i.Status.Addresses).To(Equal(utils.ProviderNetworkName + "=" + ip))
		})
	}

	It("gets its address by DHCP and shows the same address in status and kubectl get", func(ctx SpecContext) {
		inst := expectInstance(ctx, name, settled(v1.VMStateActive))
		active := time.Now()
		Expect(inst.Status.Networks).To(HaveLen(1))
		mac = inst.Status.Networks[0].MACAddress
		Expect(mac).To(MatchRegexp(`^fa:16:3e(:[0-9a-f]{2}){3}$`))
		Eventually(func() string { m, _ := lastLease(readConsole(inst)); return m }).WithContext(ctx).
			WithTimeout(90*time.Second).WithPolling(200*time.Millisecond).Should(Equal(mac), "the guest prints its lease")
		_, ip = lastLease(readConsole(inst))
		Expect(ip).To(HavePrefix(strings.TrimSuffix(cluster.Network.Gateway, ".1") + "."))
		got := expectInstance(ctx, name, func(g Gomega, i *v1.Instance) {
			g.Expect(i.Status.Networks[0].IPAddresses).To(Equal([]string{ip}))
			g.Expect(i.Status.Addresses).To(Equal(utils.ProviderNetworkName + "=" + ip))
		})
		GinkgoWriter.Printf("FIGURE from Active to the DHCP address in status: %s\n", time.Since(active).Round(10*time.Millisecond))
		Expect(got.Status.Networks[0].MACAddress).To(Equal(mac))

		// cloud-init's network configuration on the config drive names the same NIC.
		Expect(string(readConsole(inst))).To(ContainSubstring(`cidata network-config: macaddress: "` + mac + `"`))
		Expect(ping(ctx, ip)).To(Succeed())

		out, err := kubectl(ctx, "get", "instance", name)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(strings.Fields(strings.SplitN(out, "\n", 2)[0])).To(ContainElement("NETWORKS"))
		Expect(out).To(ContainSubstring(utils.ProviderNetworkName + "=" + ip))
		out, err = kubectlNova(ctx, "list")
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`(?m)^` + name + `\s.*` + regexp.QuoteMeta(utils.ProviderNetworkName+"="+ip)))

		// The node selector pinned the launch; the moves below name their targets.
		patchSpec(ctx, name, `{"spec":{"nodeSelector":null}}`)
	}, NodeTimeout(3*time.Minute))

	It("keeps its MAC and address through a live migration", func(ctx SpecContext) {
		out, err := kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--live", "--node", "host-2", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		expectSameNIC(ctx, "host-2")
	}, NodeTimeout(4*time.Minute))

	It("keeps its MAC and address through a cold migration, after booting again", func(ctx SpecContext) {
		out, err := kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--node", "host-3", "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		out, err = kubectlNova(ctx, "resize", name, "--confirm", "--wait", "--timeout=2m")
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectSameNIC(ctx, "host-3")
		// host-3 has storage of its own: the console log there holds only the boot there.
		expectConsole(ctx, inst, func(c console) bool {
			m, leased := lastLease(c.SinceLastBoot())
			return c.Boots() == 1 && m == mac && leased == ip
		}, "the boot on host-3 leases the same address for the same MAC")
	}, NodeTimeout(5*time.Minute))

	It("keeps its MAC and address through a shelve and an unshelve", func(ctx SpecContext) {
		patchSpec(ctx, name, `{"spec":{"powerState":"Shelved"}}`)
		off := expectInstance(ctx, name, settled(v1.VMStateShelvedOffloaded))
		Expect(off.Status.Networks[0].MACAddress).To(Equal(mac), "the offloaded instance keeps its MAC")
		Expect(off.Status.Networks[0].IPAddresses).To(ContainElement(ip), "and its address")
		patchSpec(ctx, name, `{"spec":{"nodeSelector":{"kubernetes.io/hostname":"host-1"}}}`)
		out, err := kubectlNova(ctx, "unshelve", name, "--wait")
		Expect(err).NotTo(HaveOccurred(), out)
		inst := expectSameNIC(ctx, "host-1")
		// The shared storage may keep a console log of the guest's time there before: what
		// counts is the lease of its last boot.
		expectConsole(ctx, inst, func(c console) bool {
			m, leased := lastLease(c.SinceLastBoot())
			return m == mac && leased == ip
		}, "the unshelved guest's last boot leases the same address")
	}, NodeTimeout(5*time.Minute))
})
