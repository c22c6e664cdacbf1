package controllers

import (
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

var _ = Describe("Networks", func() {
	BeforeEach(func(ctx SpecContext) { ensureNodeA(ctx) })

	It("fixes each NIC's MAC before placing the instance, boots with them, keeps them through a stop and start, and shows the addresses", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "nics")
		makeImage(ctx, ns, "img")
		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		inst.Spec.Networks = []v1.NetworkInterface{{Network: "provider"}, {Network: "provider", MACAddress: "02:00:00:AB:CD:EF"}}
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		waitForVMState(ctx, inst, v1.VMStateActive)
		got, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		Expect(got.Status.Networks).To(HaveLen(2))
		assigned := got.Status.Networks[0].MACAddress
		Expect(assigned).To(MatchRegexp(`^fa:16:3e(:[0-9a-f]{2}){3}$`), "Neutron's prefix")
		Expect(got.Status.Networks[1].MACAddress).To(Equal("02:00:00:ab:cd:ef"), "the explicit MAC, in lower case")
		Expect(got.Spec.Networks[0].MACAddress).To(BeEmpty(), "the controller does not default spec")
		nics := func() []string {
			var macs []string
			m, ok := fakeDriver.Machine(string(got.UID))
			Expect(ok).To(BeTrue(), "the domain is defined")
			for _, nic := range m.NICs {
				Expect(nic.Source).To(Equal("br-provider"))
				macs = append(macs, nic.MACAddress)
			}
			return macs
		}
		Expect(nics()).To(Equal([]string{assigned, "02:00:00:ab:cd:ef"}))
		Eventually(func(g Gomega) {
			cur, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(meta.IsStatusConditionTrue(cur.Status.Conditions, v1.ConditionReady)).To(BeTrue(),
				"the node has the network: the placement holds (%+v)", cur.Status.Conditions)
		}).WithContext(ctx).Should(Succeed())

		// The network's DHCP server gives the first NIC an address: status shows it.
		fakeDriver.Lease(assigned, "192.0.2.10")
		Eventually(func(g Gomega) {
			cur, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cur.Status.Networks[0].IPAddresses).To(Equal([]string{"192.0.2.10"}))
			g.Expect(cur.Status.Networks[1].IPAddresses).To(BeEmpty())
			g.Expect(cur.Status.Addresses).To(Equal("provider=192.0.2.10"))
		}).WithContext(ctx).Should(Succeed())

		patchInstance(ctx, got, `{"spec":{"powerState":"Stopped"}}`)
		waitForVMState(ctx, inst, v1.VMStateStopped)
		stopped, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		Expect(stopped.Status.Addresses).To(Equal("provider=192.0.2.10"), "the address stays while the guest is off, as its lease does")
		patchInstance(ctx, got, `{"spec":{"powerState":"Running"}}`)
		waitForVMState(ctx, inst, v1.VMStateActive)
		Expect(nics()).To(Equal([]string{assigned, "02:00:00:ab:cd:ef"}), "the same MACs after a stop and start")
		cur, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		Expect(cur.Status.Addresses).To(Equal("provider=192.0.2.10"), "and after it")
	})

	It("keeps the MACs through a rebuild, a rescue and an unrescue, and a resize", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "nics-kept")
		makeImage(ctx, ns, "img")
		makeImage(ctx, ns, "other")
		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		inst.Spec.Networks = []v1.NetworkInterface{{Network: "provider"}}
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		waitForVMState(ctx, inst, v1.VMStateActive)
		got, err := get(ctx, inst)()
		Expect(err).NotTo(HaveOccurred())
		mac := got.Status.Networks[0].MACAddress
		expectNIC := func(what string) {
			m, ok := fakeDriver.Machine(string(got.UID))
			Expect(ok).To(BeTrue())
			Expect(m.NICs).To(HaveLen(1), what)
			Expect(m.NICs[0].MACAddress).To(Equal(mac), what)
			cur, err := get(ctx, inst)()
			Expect(err).NotTo(HaveOccurred())
			Expect(cur.Status.Networks).To(Equal([]v1.NICStatus{{Network: "provider", MACAddress: mac}}), what)
		}

		run := runID(got)
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Image.Name = "other" })
		Eventually(func(g Gomega) {
			cur, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(cur.Status.Image.Name).To(Equal("other"))
			g.Expect(cur.Status.VMState).To(Equal(v1.VMStateActive))
			g.Expect(runID(cur)).NotTo(Equal(run))
		}).WithContext(ctx).Should(Succeed())
		expectNIC("after the rebuild")

		update(ctx, inst, func(i *v1.Instance) { i.Spec.Rescue = &v1.RescueSpec{} })
		waitForVMState(ctx, inst, v1.VMStateRescued)
		expectNIC("under the rescue")
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Rescue = nil })
		waitForVMState(ctx, inst, v1.VMStateActive)
		expectNIC("after the unrescue")

		bigger := unique("bigger")
		makeFlavor(ctx, bigger, 2, 512, 2)
		update(ctx, inst, func(i *v1.Instance) { i.Spec.Flavor = bigger })
		waitForVMState(ctx, inst, v1.VMStateResized)
		expectNIC("resized")
	})

	It("waits with NetworkNotFound while no node has the network", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "nowhere")
		makeImage(ctx, ns, "img")
		inst := newInstance(ns, "web", "small", "img")
		inst.Spec.NodeSelector = onNodeA
		inst.Spec.Networks = []v1.NetworkInterface{{Network: "provider"}, {Network: "nowhere"}}
		Expect(k8s.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, inst)()
			g.Expect(err).NotTo(HaveOccurred())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonNetworkNotFound, "no node has network nowhere")
			g.Expect(got.Status.VMState).To(Equal(v1.VMStateBuilding))
			g.Expect(got.Status.NodeName).To(BeEmpty())
		}).WithContext(ctx).Should(Succeed())
	})

	It("refuses an explicit MAC that another instance has", func(ctx SpecContext) {
		ns := makeNamespace(ctx, "mac-clash")
		makeImage(ctx, ns, "img")
		first := newInstance(ns, "first", "small", "img")
		first.Spec.NodeSelector = onNodeA
		first.Spec.Networks = []v1.NetworkInterface{{Network: "provider"}}
		Expect(k8s.Create(ctx, first)).To(Succeed())
		var mac string
		Eventually(func(g Gomega) {
			got, err := get(ctx, first)()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(got.Status.Networks).To(HaveLen(1))
			mac = got.Status.Networks[0].MACAddress
		}).WithContext(ctx).Should(Succeed())
		second := newInstance(ns, "second", "small", "img")
		second.Spec.NodeSelector = onNodeA
		second.Spec.Networks = []v1.NetworkInterface{{Network: "provider", MACAddress: strings.ToUpper(mac)}}
		Expect(k8s.Create(ctx, second)).To(Succeed())
		Eventually(func(g Gomega) {
			got, err := get(ctx, second)()
			g.Expect(err).NotTo(HaveOccurred())
			expectReadyReason(g, got.Status.Conditions, v1.ReasonMACInUse, ns+"/first")
			g.Expect(got.Status.NodeName).To(BeEmpty())
		}).WithContext(ctx).Should(Succeed())
	})
})
