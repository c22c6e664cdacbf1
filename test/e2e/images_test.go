package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
	"github.com/kubenova/kubenova/test/utils"
)

var _ = Describe("Images", Ordered, func() {
	inNamespace("images")

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		applySample(ctx, "image.yaml")
	})

	It("imports the test guest, verified, and reports its sizes", func(ctx SpecContext) {
		path, sum, err := utils.GuestImage()
		Expect(err).NotTo(HaveOccurred())
		created := time.Now()
		Expect(cluster.Client.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guest"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: sum}})).To(Succeed())
		img := expectImagePhase(ctx, ns, "guest", v1.ImageAvailable)
		// Polled every 100 ms: status times have whole seconds only.
		GinkgoWriter.Printf("FIGURE import of the test guest (%d bytes, virtual %d): %s\n", img.Status.SizeBytes,
			img.Status.VirtualSizeBytes, time.Since(created).Round(10*time.Millisecond))
		st, err := os.Stat(path)
		Expect(err).NotTo(HaveOccurred())
		Expect(img.Status.SizeBytes).To(Equal(st.Size()))
		Expect(img.Status.VirtualSizeBytes).To(BeNumerically(">", img.Status.SizeBytes))
		Expect(img.Status.Format).To(Equal("qcow2"))
		Expect(img.Status.SHA256).To(Equal(sum))
		stored, err := os.Stat(filepath.Join(cluster.ImageStore, "images", string(img.UID)))
		Expect(err).NotTo(HaveOccurred(), "the image store holds the bytes under the image's UID")
		Expect(stored.Size()).To(Equal(st.Size()))
		out, err := kubectl(ctx, "get", "images", "-n", ns)
		Expect(err).NotTo(HaveOccurred(), out)
		Expect(out).To(MatchRegexp(`guest\s+Available\s+qcow2\s+%d`, st.Size()))
	})

	It("refuses every kind of bad image with a reason and a message, and keeps their instances waiting", func(ctx SpecContext) {
		good, sum, err := utils.GuestImage()
		Expect(err).NotTo(HaveOccurred())
		dir := cluster.ImageSources
		victim := filepath.Join(dir, "victim.raw")
		qemuImg("create", "-q", "-f", "raw", victim, "1M")
		backed := filepath.Join(dir, "backed.qcow2")
		qemuImg("create", "-q", "-f", "qcow2", "-F", "raw", "-b", victim, backed)
		dataFile := filepath.Join(dir, "data-file.qcow2")
		qemuImg("create", "-q", "-f", "qcow2", "-o", "data_file="+victim+".data", dataFile, "1M")
		outside := filepath.Join(cluster.WorkDir, "outside.qcow2")
		qemuImg("create", "-q", "-f", "qcow2", outside, "1M")
		dead := httptest.NewServer(nil)
		dead.Close()

		cases := []struct {
			name, reason, says string
			spec               v1.ImageSpec
		}{
			{"wrong-checksum", imagestore.ReasonChecksumMismatch, "has sha256 " + sum,
				v1.ImageSpec{Source: v1.ImageSource{File: good}, SHA256: digestOf("another image")}},
			{"unreachable", imagestore.ReasonSourceUnreachable, "connection refused",
				v1.ImageSpec{Source: v1.ImageSource{URL: dead.URL + "/guest.qcow2"}, SHA256: sum}},
			{"not-raw", imagestore.ReasonInvalidImage, "the image is qcow2, not raw as its diskFormat says",
				v1.ImageSpec{Source: v1.ImageSource{File: good}, SHA256: sum, DiskFormat: v1.DiskFormatRaw}},
			{"backing-file", imagestore.ReasonInvalidImage, "has a backing file (" + victim + ")",
				v1.ImageSpec{Source: v1.ImageSource{File: backed}, SHA256: fileDigest(backed)}},
			{"data-file", imagestore.ReasonInvalidImage, "has an external data file",
				v1.ImageSpec{Source: v1.ImageSource{File: dataFile}, SHA256: fileDigest(dataFile)}},
			{"outside", imagestore.ReasonSourceNotAllowed, "outside the directories the image service imports from",
				v1.ImageSpec{Source: v1.ImageSource{File: outside}, SHA256: fileDigest(outside)}},
		}
		for _, c := range cases {
			Expect(cluster.Client.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: c.name}, Spec: c.spec})).To(Succeed())
			Expect(cluster.Client.Create(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "on-" + c.name},
				Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: c.name}}})).To(Succeed())
		}
		for _, c := range cases {
			img := expectImagePhase(ctx, ns, c.name, v1.ImageError)
			stalled := meta.FindStatusCondition(img.Status.Conditions, v1.ConditionStalled)
			Expect(stalled).NotTo(BeNil(), c.name)
			Expect(stalled.Status).To(Equal(metav1.ConditionTrue), c.name)
			Expect(stalled.Reason).To(Equal(c.reason), c.name)
			Expect(stalled.Message).To(ContainSubstring(c.says), c.name)
			_, err := os.Stat(filepath.Join(cluster.ImageStore, "images", string(img.UID)))
			Expect(os.IsNotExist(err)).To(BeTrue(), "%s: a refused image reached the store", c.name)

			Eventually(func(g Gomega) {
				inst := &v1.Instance{}
				g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "on-" + c.name}, inst)).To(Succeed())
				ready := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Reason).To(Equal(v1.ReasonImageError))
				g.Expect(ready.Message).To(ContainSubstring("image " + c.name + " failed its import"))
				g.Expect(ready.Message).To(ContainSubstring(c.says))
				g.Expect(inst.Status.VMState).To(Equal(v1.VMStateBuilding))
				g.Expect(inst.Status.NodeName).To(BeEmpty())
			}).WithContext(ctx).WithTimeout(30*time.Second).Should(Succeed(), c.name)
		}
		// One of them, given a good image, launches: nothing was lost by waiting.
		patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"image":{"name":"guest"}}}`))
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "on-wrong-checksum"}}
		Expect(cluster.Client.Patch(ctx, inst, patch)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
		}).WithContext(ctx).WithTimeout(2 * time.Minute).Should(Succeed())
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 }, "first boot")
		deleteAll(ctx, ns)
	}, NodeTimeout(4*time.Minute))

	// Knowing a digest must never grant an image (the hole Kubernetes closed for cached private
	// container images in KEP-2535): an Image whose url answers nothing, carrying the digest of
	// the test guest that both nodes have cached, launches nothing.
	It("never launches from a node's cached copy of an image the image service did not verify", func(ctx SpecContext) {
		owner := createInstance(ctx, "digest-owner", "test-guest")
		_, sum, err := utils.GuestImage()
		Expect(err).NotTo(HaveOccurred())
		_, err = os.Stat(filepath.Join(host(owner.Status.NodeName).StorageRoot, "_base", sum))
		Expect(err).NotTo(HaveOccurred(), "the owner's node caches the digest")

		dead := httptest.NewServer(nil)
		dead.Close()
		thieves := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "thieves-"}}
		Expect(cluster.Client.Create(ctx, thieves)).To(Succeed())
		Expect(cluster.GrantTenant(ctx, thieves.Name)).To(Succeed())
		Expect(cluster.Client.Create(ctx, &v1.Image{ObjectMeta: metav1.ObjectMeta{Namespace: thieves.Name, Name: "borrowed"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{URL: dead.URL + "/private.qcow2"}, SHA256: sum}})).To(Succeed())
		for _, node := range []string{"host-1", "host-2"} {
			Expect(cluster.Client.Create(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: thieves.Name, Name: "thief-on-" + node},
				Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "borrowed"},
					NodeSelector: map[string]string{corev1.LabelHostname: node}}})).To(Succeed())
		}
		Eventually(func(g Gomega) {
			var list v1.InstanceList
			g.Expect(cluster.Client.List(ctx, &list, client.InNamespace(thieves.Name))).To(Succeed())
			g.Expect(list.Items).To(HaveLen(2))
			for _, inst := range list.Items {
				ready := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionReady)
				g.Expect(ready).NotTo(BeNil())
				g.Expect(ready.Reason).To(Equal(v1.ReasonImageError))
				g.Expect(inst.Status.NodeName).To(BeEmpty())
			}
		}).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		var thiefList v1.InstanceList
		Expect(cluster.Client.List(ctx, &thiefList, client.InNamespace(thieves.Name))).To(Succeed())
		Expect(thiefList.Items).To(HaveLen(2))
		Consistently(func(g Gomega) {
			for _, h := range cluster.Hosts {
				// Domains are named by UID: look for the thieves' own.
				out, err := h.Virsh(ctx, "list", "--all", "--uuid")
				g.Expect(err).NotTo(HaveOccurred(), out)
				for _, thief := range thiefList.Items {
					g.Expect(out).NotTo(ContainSubstring(string(thief.UID)), h.Name)
				}
			}
			var list v1.InstanceList
			g.Expect(cluster.Client.List(ctx, &list, client.InNamespace(thieves.Name))).To(Succeed())
			for _, inst := range list.Items {
				g.Expect(inst.Status.NodeName).To(BeEmpty())
			}
		}).WithContext(ctx).WithTimeout(3 * time.Second).Should(Succeed())
		deleteAll(ctx, thieves.Name)
		out, err := kubectl(ctx, "delete", "instance", "digest-owner", "--wait=true", "--timeout=90s")
		Expect(err).NotTo(HaveOccurred(), out)
	}, NodeTimeout(3*time.Minute))

	It("boots an instance from a ClusterImage that every namespace shares", func(ctx SpecContext) {
		path, sum, err := utils.GuestImage()
		Expect(err).NotTo(HaveOccurred())
		Expect(client.IgnoreAlreadyExists(cluster.Client.Create(ctx, &v1.ClusterImage{ObjectMeta: metav1.ObjectMeta{Name: "shared-guest"},
			Spec: v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: sum}}))).To(Succeed())
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "from-shared"},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Kind: v1.KindClusterImage, Name: "shared-guest"}}}
		Expect(cluster.Client.Create(ctx, inst)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst)).To(Succeed())
			g.Expect(inst.Status.VMState).To(Equal(v1.VMStateActive))
		}).WithContext(ctx).WithTimeout(2 * time.Minute).Should(Succeed())
		Expect(inst.Status.Image.Kind).To(Equal(v1.KindClusterImage))
		expectConsole(ctx, inst, func(c console) bool { return c.Last(bootCount) == 1 }, "first boot")
		deleteAll(ctx, ns)
	}, NodeTimeout(3*time.Minute))
})

// expectImagePhase waits until an Image reaches phase and returns it.
func expectImagePhase(ctx context.Context, ns, name string, phase v1.ImagePhase) *v1.Image {
	img := &v1.Image{}
	Eventually(func(g Gomega) {
		g.Expect(cluster.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, img)).To(Succeed())
		g.Expect(img.Status.Phase).To(Equal(phase), "%s: %+v", name, img.Status.Conditions)
	}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	return img
}

// deleteAll deletes the instances of a namespace and waits until they are gone.
func deleteAll(ctx context.Context, ns string) {
	out, err := kubectl(ctx, "delete", "instances", "--all", "-n", ns, "--wait=true", "--timeout=90s")
	Expect(err).NotTo(HaveOccurred(), out)
}

func qemuImg(args ...string) {
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(out))
}

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func fileDigest(path string) string {
	b, err := os.ReadFile(path)
	Expect(err).NotTo(HaveOccurred())
	return digestOf(string(b))
}
