package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/test/utils"
)

// The image store is a shared mount (NFS) in production. Its directory seen before the mount
// is there is empty: kubenova must take that for "unavailable", never for "an empty store".
var _ = Describe("An image store that is not mounted", Ordered, disruptive, func() {
	inNamespace("unmounted")

	It("loses no image and writes nothing into the empty directory, and launches and snapshots once it is back", func(ctx SpecContext) {
		before := instanceForSpecs(ctx, "before", "test-guest")

		By("an image no node has cached yet: the test guest written anew, so its digest is new")
		guest, _, err := utils.GuestImage()
		Expect(err).NotTo(HaveOccurred())
		fresh := filepath.Join(cluster.ImageSources, "unmounted-"+ns+".qcow2")
		qemuImg("convert", "-q", "-O", "qcow2", "-o", "cluster_size=131072", guest, fresh)
		sum := fileDigest(fresh)
		Expect(cluster.Client.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "fresh"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: fresh}, SHA256: sum, DiskFormat: v1.DiskFormatQCOW2}})).To(Succeed())
		available := expectImagePhase(ctx, ns, "fresh", v1.ImageAvailable)

		By("unmounting the store: its directory is an empty one")
		mounted := cluster.ImageStore + ".mounted"
		Expect(os.Rename(cluster.ImageStore, mounted)).To(Succeed())
		Expect(os.Mkdir(cluster.ImageStore, 0o755)).To(Succeed())
		remounted := false
		DeferCleanup(func() {
			if !remounted {
				Expect(os.RemoveAll(cluster.ImageStore)).To(Succeed())
				Expect(os.Rename(mounted, cluster.ImageStore)).To(Succeed())
			}
		})

		start := time.Now()
		manifest := strings.Replace(mustRender("instance.yaml"), "name: demo", "name: after", 1)
		manifest = strings.Replace(manifest, "name: test-guest", "name: fresh", 1)
		out, err := kubectl(ctx, "apply", "-f", writeManifest("after.yaml", manifest))
		Expect(err).NotTo(HaveOccurred(), out)
		DeferCleanup(func(ctx SpecContext) {
			out, err := kubectl(ctx, "delete", "instance", "after", "--ignore-not-found", "--wait=true", "--timeout=90s")
			Expect(err).NotTo(HaveOccurred(), out)
		}, NodeTimeout(2*time.Minute))
		snap := &v1.Snapshot{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "while-unmounted"},
			Spec: v1.SnapshotSpec{InstanceName: before.Name}}
		Expect(cluster.Client.Create(ctx, snap)).To(Succeed())
		late := &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "late"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: fresh}, SHA256: sum, DiskFormat: v1.DiskFormatQCOW2}}
		Expect(cluster.Client.Create(ctx, late)).To(Succeed())

		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(late), late)).To(Succeed())
			ready := meta.FindStatusCondition(late.Status.Conditions, v1.ConditionReady)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(controllers.ReasonStoreUnavailable))
			g.Expect(late.Status.Phase).To(Equal(v1.ImagePending))
		}).WithContext(ctx).WithTimeout(60 * time.Second).Should(Succeed())
		// The agent tries a task three times, 2 s and 4 s apart: had it taken the missing store
		// for a failure, the launch and the snapshot would have failed by now.
		Consistently(func(g Gomega) {
			img := &v1.Image{}
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(available), img)).To(Succeed())
			g.Expect(img.Status.Phase).To(Equal(v1.ImageAvailable), "nobody can see its bytes; that does not make them lost")
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(snap), snap)).To(Succeed())
			g.Expect(snap.Status.Phase).To(BeElementOf(v1.SnapshotPending, v1.SnapshotSnapshotting, v1.SnapshotUploading), snap.Status.Message)
			inst, err := instance(ctx, "after")()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateBuilding))
		}).WithContext(ctx).WithTimeout(10 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
		Expect(os.ReadDir(cluster.ImageStore)).To(BeEmpty(), "no import or upload went into the unmounted directory")

		By("mounting it again: the waits end")
		Expect(os.Remove(cluster.ImageStore)).To(Succeed())
		Expect(os.Rename(mounted, cluster.ImageStore)).To(Succeed())
		remounted = true
		after := expectInstance(ctx, "after", settled(v1.VMStateActive))
		expectConsole(ctx, after, func(c console) bool { return c.Last(bootCount) == 1 && c.Last(aliveSeq) >= 1 }, "first boot, from the image fetched once the store was back")
		GinkgoWriter.Printf("FIGURE launch across an unmounted store (apply to Active): %s\n", time.Since(start).Round(100*time.Millisecond))
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(snap), snap)).To(Succeed())
			g.Expect(snap.Status.Phase).To(Equal(v1.SnapshotSucceeded), snap.Status.Message)
		}).WithContext(ctx).WithTimeout(120 * time.Second).Should(Succeed())
		expectImagePhase(ctx, ns, "late", v1.ImageAvailable)
	}, NodeTimeout(6*time.Minute))
})
