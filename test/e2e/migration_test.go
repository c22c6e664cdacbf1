package e2e

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Live migrations between the suite's hosts: host-1 and host-2 share their storage root,
// host-3 has its own. The test guest prints "alive seq=K" every few seconds from its boot on,
// so a guest that moved without stopping goes on counting, and never prints a boot line again.
var _ = Describe("Live migration", Ordered, disruptive, func() {
	inNamespace("migration")
	const name = "wanderer"
	var inst *v1.Instance

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
		// Start on host-1, so that the first move is between the two hosts that share storage.
		inst = launchPinned(ctx, name, "host-1")
	}, NodeTimeout(3*time.Minute))

	// migrate moves the instance live to target while its guest counts, and checks that it
	// arrived running the same boot: returns the Migration.
	migrate := func(ctx context.Context, target string, block bool) *v1.Migration {
		before := expectInstance(ctx, name, settled(v1.VMStateActive))
		source := before.Status.NodeName
		seqBefore := readConsole(before).Last(aliveSeq)
		start := time.Now()
		out, err := kubectlNovaAsCloudAdmin(ctx, "migrate", name, "--live", "--node", target, "--wait", "--timeout=3m")
		Expect(err).NotTo(HaveOccurred(), out)
		took := time.Since(start)
		Expect(out).To(ContainSubstring("runs on " + target))
		created := regexp.MustCompile(`migration\.compute\.kubenova\.io/(\S+) created`).FindStringSubmatch(out)
		Expect(created).To(HaveLen(2), out)
		migName := created[1]

		mig := &v1.Migration{}
		Expect(cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: migName}, mig)).To(Succeed())
		Expect(mig.Status.Phase).To(Equal(v1.MigrationSucceeded))
		Expect(mig.Status.SourceNode).To(Equal(source))
		Expect(mig.Status.TargetNode).To(Equal(target))
		Expect(mig.Status.BlockMigration).To(Equal(block))
		Expect(mig.Status.TotalMillis).To(BeNumerically(">", 0), "libvirt's job statistics")
		Expect(mig.Status.DowntimeMillis).To(BeNumerically(">", 0))
		Expect(mig.Status.DowntimeMillis).To(BeNumerically("<", mig.Status.TotalMillis))
		Expect(mig.Status.ProgressPercent).To(Equal(int32(100)))
		Expect(mig.Status.StartTime).NotTo(BeNil())
		Expect(mig.Status.CompletionTime).NotTo(BeNil())
		Expect(apimeta.IsStatusConditionTrue(mig.Status.Conditions, v1.ConditionReady)).To(BeTrue())
		GinkgoWriter.Printf("FIGURE live migration %s -> %s (block %v): %s from kubectl to Succeeded; libvirt: %d ms total, %d ms downtime\n",
			source, target, block, took.Round(10*time.Millisecond), mig.Status.TotalMillis, mig.Status.DowntimeMillis)

		after := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal(target))
		Expect(after.UID).To(Equal(before.UID))
		Expect(after.Status.PeerReport).To(BeNil())
		Expect(after.Status.MigrationRequest.Result).To(Equal(v1.RequestSucceeded))
		// The guest runs on the target, and only there.
		out, err = host(target).Virsh(ctx, "domstate", string(after.UID))
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(strings.TrimSpace(out)).To(Equal("running"))
		Eventually(func() (string, error) { return host(source).Virsh(ctx, "list", "--all", "--uuid") }).
			WithContext(ctx).ShouldNot(ContainSubstring(string(after.UID)), "the domain left the source")
		// Its counter goes on from where it was, on the target: with the source's QEMU gone, the
		// next line is the target's, exactly one more than the last before it, and no boot came
		// between (on shared storage both QEMUs write one log, so a line from before the move
		// proves nothing).
		moved := readConsole(after)
		seqMoved, bootsMoved := moved.Last(aliveSeq), moved.Boots()
		expectConsole(ctx, after, func(c console) bool { return c.Last(aliveSeq) > max(seqMoved, seqBefore) }, "counting on the target")
		c := readConsole(after)
		Expect(c.Boots()).To(Equal(bootsMoved), "no boot since the move")
		if seqMoved > 0 {
			Expect(c.Last(aliveSeq)).To(Equal(seqMoved+1), "the same guest counting on by one on the target")
		} else {
			// A block migration's target log starts empty at the move.
			Expect(c.Last(aliveSeq)).To(BeNumerically(">", seqBefore), "the same guest counting on from the source's count")
		}
		if block {
			Expect(c.Boots()).To(BeZero(), "the target's console log starts after the move: no boot line")
		} else {
			Expect(c.Boots()).To(Equal(1), "one boot in the shared console log")
		}
		// Both hypervisors count the instance where it is now.
		Eventually(func(g Gomega) {
			for _, hv := range []string{source, target} {
				got := &v1.Hypervisor{}
				g.Expect(cluster.Client.Get(ctx, client.ObjectKey{Name: hv}, got)).To(Succeed())
				g.Expect(got.Status.Instances).To(Equal(countOn(ctx, hv)), hv)
			}
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		return mig
	}

	It("moves only the memory between hosts that share storage, the guest running on", func(ctx SpecContext) {
		migrate(ctx, "host-2", false)
		disk := filepath.Join(host("host-2").StorageRoot, "instances", string(inst.UID), "disk")
		Expect(disk).To(BeAnExistingFile(), "the one shared disk stays where it was")
	}, NodeTimeout(5*time.Minute))

	It("copies the disk to a host with its own storage (block migration), and removes the source's copy", func(ctx SpecContext) {
		migrate(ctx, "host-3", true)
		Expect(filepath.Join(host("host-3").StorageRoot, "instances", string(inst.UID), "disk")).To(BeAnExistingFile())
		Eventually(func() string {
			return filepath.Join(host("host-2").StorageRoot, "instances", string(inst.UID))
		}).WithContext(ctx).ShouldNot(BeADirectory(), "the source's copy goes once the guest runs on the target")
	}, NodeTimeout(5*time.Minute))

	It("copies it back to a host of the shared storage", func(ctx SpecContext) {
		migrate(ctx, "host-1", true)
		Eventually(func() string {
			return filepath.Join(host("host-3").StorageRoot, "instances", string(inst.UID))
		}).WithContext(ctx).ShouldNot(BeADirectory())
	}, NodeTimeout(5*time.Minute))

	It("refuses a block migration onto the same storage, leaving the guest where it runs", func(ctx SpecContext) {
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: name + "-"},
			Spec: v1.MigrationSpec{InstanceName: name, Type: v1.MigrationLive, TargetNode: "host-2", BlockMigration: v1.BlockMigrationEnabled}}
		Expect(cluster.Client.Create(ctx, mig)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(mig), mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(v1.MigrationFailed))
			g.Expect(mig.Status.Reason).To(Equal("StorageMismatch"))
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		cur := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(cur.Status.NodeName).To(Equal("host-1"))
		out, err := kubectlNova(ctx, "migration-list", "--instance", name)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(strings.Count(out, "Succeeded")).To(Equal(3), out)
		Expect(out).To(ContainSubstring("Failed"))
		out, err = kubectlNova(ctx, "show", name)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`lastMigration\s+migration ` + mig.Name + `: Refused: StorageMismatch`))
	}, NodeTimeout(2*time.Minute))

	// slowSource restarts a node's agent with its migrations capped at 4 MiB/s, so that a move
	// of the test guest lasts long enough to cut into; the agent runs uncapped again after the
	// spec.
	slowSource := func(node string) {
		h := host(node)
		Expect(cluster.StopAgent(h)).To(Succeed())
		Expect(cluster.StartAgent(h, slowMigrations)).To(Succeed())
		DeferCleanup(func() {
			if cluster.Process("manager") == nil {
				Expect(cluster.StartManager()).To(Succeed())
			}
			_ = cluster.StopAgent(h)
			Expect(cluster.StartAgent(h)).To(Succeed())
		})
	}

	// startMove creates a live migration to target and waits until its data is on the way.
	startMove := func(ctx context.Context, target string) *v1.Migration {
		mig := &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: name + "-"},
			Spec: v1.MigrationSpec{InstanceName: name, Type: v1.MigrationLive, TargetNode: target}}
		Expect(cluster.Client.Create(ctx, mig)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(mig), mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(v1.MigrationMigrating))
			g.Expect(mig.Status.DataTotalBytes).To(BeNumerically(">", 0))
		}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
		GinkgoWriter.Printf("migration %s under way: %d%% of %d bytes\n", mig.Name, mig.Status.ProgressPercent, mig.Status.DataTotalBytes)
		return mig
	}

	// runsOnlyOn checks that the instance's guest runs on node and nowhere else, one QEMU in all.
	runsOnlyOn := func(ctx context.Context, inst *v1.Instance, node string) {
		for _, h := range cluster.Hosts {
			out, err := h.Virsh(ctx, "list", "--all", "--uuid")
			Expect(err).NotTo(HaveOccurred(), out)
			if h.Name == node {
				Expect(out).To(ContainSubstring(string(inst.UID)), h.Name)
			} else {
				Expect(out).NotTo(ContainSubstring(string(inst.UID)), h.Name)
			}
		}
		Expect(qemuCount(inst)).To(Equal(1))
	}

	It("aborts a move whose Migration is deleted in flight: the guest runs on at the source", func(ctx SpecContext) {
		slowSource("host-1")
		before := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(before.Status.NodeName).To(Equal("host-1"))
		seq, boots := readConsole(before).Last(aliveSeq), readConsole(before).Boots()
		mig := startMove(ctx, "host-2")
		Expect(cluster.Client.Delete(ctx, mig)).To(Succeed())
		Eventually(func() bool {
			return apierrors.IsNotFound(cluster.Client.Get(ctx, client.ObjectKeyFromObject(mig), &v1.Migration{}))
		}).WithContext(ctx).WithTimeout(60*time.Second).Should(BeTrue(), "the Migration goes once its move is aborted")
		after := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal("host-1"))
		Expect(after.Status.MigrationRequest.Result).To(Equal(v1.RequestFailed))
		Expect(after.Status.MigrationRequest.Message).To(ContainSubstring("aborted"))
		Expect(after.Status.Fault).To(BeNil(), "an aborted move is no fault of the instance")
		Eventually(func() []string { return events(ctx, name, "Aborting") }).WithContext(ctx).ShouldNot(BeEmpty())
		runsOnlyOn(ctx, after, "host-1")
		expectConsole(ctx, after, func(c console) bool { return c.Last(aliveSeq) > seq }, "counting on at the source")
		Expect(readConsole(after).Boots()).To(Equal(boots), "never rebooted")
	}, NodeTimeout(4*time.Minute))

	It("finishes a move whose manager and source agent were killed in the middle, the guest running exactly once", func(ctx SpecContext) {
		slowSource("host-1")
		before := expectInstance(ctx, name, settled(v1.VMStateActive))
		seq, boots := readConsole(before).Last(aliveSeq), readConsole(before).Boots()
		mig := startMove(ctx, "host-2")
		Expect(cluster.KillManager()).To(Succeed())
		Expect(cluster.KillAgent(host("host-1"))).To(Succeed())
		Expect(cluster.StartManager()).To(Succeed())
		Expect(cluster.StartAgent(host("host-1"), slowMigrations)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(mig), mig)).To(Succeed())
			g.Expect(mig.Status.Phase).To(Equal(v1.MigrationSucceeded), "%s: %s", mig.Status.Reason, mig.Status.Message)
		}).WithContext(ctx).WithTimeout(3 * time.Minute).Should(Succeed())
		after := expectInstance(ctx, name, settled(v1.VMStateActive))
		Expect(after.Status.NodeName).To(Equal("host-2"))
		runsOnlyOn(ctx, after, "host-2")
		expectConsole(ctx, after, func(c console) bool { return c.Last(aliveSeq) > seq }, "counting on at the target")
		Expect(readConsole(after).Boots()).To(Equal(boots), "never rebooted")
		Consistently(func() int { return qemuCount(after) }).WithContext(ctx).WithTimeout(3 * time.Second).Should(Equal(1))
	}, NodeTimeout(5*time.Minute))
})

// slowMigrations caps an agent's outgoing live migrations so that they can be cut into.
const slowMigrations = "--live-migration-bandwidth=4"

// countOn counts the instances placed on a node, from the instances themselves.
func countOn(ctx context.Context, node string) int32 {
	var list v1.InstanceList
	if err := cluster.Client.List(ctx, &list); err != nil {
		return -1
	}
	n := int32(0)
	for _, i := range list.Items {
		if i.Status.NodeName == node {
			n++
		}
	}
	return n
}
