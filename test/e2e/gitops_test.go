package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kubenova/kubenova/test/gitops"
)

// A GitOps tool's view: every sample applied server-side, as Argo CD with ServerSideApply and
// Flux do, into their own namespace; once settled, a server-side diff of the same files is
// empty (the controllers write no field the files own), and the health each tool reports.
var _ = Describe("GitOps", Ordered, func() {
	inNamespace("gitops")
	var dir string

	// render writes a sample for the gitops namespace; the rescue sample's instance gets a name
	// of its own (it shows the demo instance rescued).
	render := func(name string) string {
		GinkgoHelper()
		manifest := mustRender(name)
		if name == "instance-rescue.yaml" {
			manifest = strings.Replace(manifest, "name: demo\n", "name: demo-rescue\n", 1)
		}
		path := filepath.Join(dir, name)
		Expect(os.WriteFile(path, []byte(manifest), 0o644)).To(Succeed())
		return path
	}
	// migration is a record of one live move of demo, named so that it can sit in a file.
	const migration = `apiVersion: compute.kubenova.io/v1alpha1
kind: Migration
metadata:
  name: demo-move
  namespace: gitops
spec:
  instanceName: demo
  type: Live
`
	// objectsOf reads the objects a file declares, as they are in the cluster now.
	objectsOf := func(ctx context.Context, path string) []*unstructured.Unstructured {
		GinkgoHelper()
		b, err := os.ReadFile(path)
		Expect(err).NotTo(HaveOccurred())
		var out []*unstructured.Unstructured
		for _, doc := range strings.Split(string(b), "\n---\n") {
			declared := &unstructured.Unstructured{}
			Expect(yaml.Unmarshal([]byte(doc), &declared.Object)).To(Succeed())
			if declared.Object == nil {
				continue
			}
			live := &unstructured.Unstructured{}
			live.SetGroupVersionKind(declared.GroupVersionKind())
			Expect(cluster.Client.Get(ctx, client.ObjectKeyFromObject(declared), live)).To(Succeed())
			out = append(out, live)
		}
		return out
	}

	BeforeAll(func(ctx SpecContext) {
		expectHypervisorsUp(ctx)
		dir = filepath.Join(cluster.WorkDir, "gitops")
		Expect(os.MkdirAll(dir, 0o755)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) {
			out, err := kubectlAsCloudAdmin(ctx, "delete", "instances,migrations,snapshots,images", "--all", "-n", ns, "--wait=true", "--timeout=120s")
			Expect(err).NotTo(HaveOccurred(), out)
		}, NodeTimeout(3*time.Minute))
	})

	It("applies every sample server-side, settles, and then diffs empty; each tool reports it healthy", func(ctx SpecContext) {
		admin := []string{render("flavors.yaml"), render("clusterimage.yaml")}
		tenant := []string{render("image.yaml"), render("instance.yaml"), render("instance-network.yaml"),
			render("instance-userdata.yaml"), render("instance-rescue.yaml")}
		// Migrations are a project administrator's (kubenova-admin); the tool applies them as
		// the cloud's administrator here.
		snapshots, migrations := []string{render("snapshot.yaml")}, []string{filepath.Join(dir, "migration.yaml")}
		Expect(os.WriteFile(migrations[0], []byte(migration), 0o644)).To(Succeed())
		records := append(append([]string{}, snapshots...), migrations...)

		apply := func(as func(context.Context, ...string) (string, error), files []string) {
			GinkgoHelper()
			for _, f := range files {
				out, err := as(ctx, "apply", "--server-side", "-f", f)
				Expect(err).NotTo(HaveOccurred(), out)
			}
		}
		apply(cluster.KubectlAsCloudAdmin, admin)
		apply(cluster.Kubectl, tenant)

		// healthy waits until Argo CD's script and kstatus both say what a settled object is.
		scripts, err := gitops.LoadHealthScripts()
		Expect(err).NotTo(HaveOccurred())
		healthy := func(files []string) {
			GinkgoHelper()
			Eventually(func(g Gomega) {
				for _, f := range files {
					for _, o := range objectsOf(ctx, f) {
						if o.GroupVersionKind().Group != "compute.kubenova.io" || o.GetKind() == "Flavor" {
							continue
						}
						h, err := scripts.Of(o)
						g.Expect(err).NotTo(HaveOccurred())
						g.Expect(h.Status).To(Equal(gitops.Healthy), "%s %s: %s", o.GetKind(), o.GetName(), h.Message)
						res, err := gitops.Kstatus(o)
						g.Expect(err).NotTo(HaveOccurred())
						g.Expect(res.Status).To(Equal(status.CurrentStatus), "%s %s: %s", o.GetKind(), o.GetName(), res.Message)
					}
				}
			}).WithContext(ctx).WithTimeout(3 * time.Minute).WithPolling(time.Second).Should(Succeed())
		}
		healthy(append(admin, tenant...))
		apply(cluster.Kubectl, snapshots)
		apply(cluster.KubectlAsCloudAdmin, migrations)
		healthy(records)

		for _, f := range append(admin, migrations...) {
			out, err := kubectlAsCloudAdmin(ctx, "diff", "--server-side", "-f", f)
			Expect(err).NotTo(HaveOccurred(), "kubectl diff of %s:\n%s", f, out)
			Expect(out).To(BeEmpty())
		}
		for _, f := range append(tenant, snapshots...) {
			out, err := kubectl(ctx, "diff", "--server-side", "-f", f)
			Expect(err).NotTo(HaveOccurred(), "kubectl diff of %s:\n%s", f, out)
			Expect(out).To(BeEmpty())
		}

		var table strings.Builder
		for _, f := range append(append(admin, tenant...), records...) {
			for _, o := range objectsOf(ctx, f) {
				if o.GroupVersionKind().GroupKind() == (schema.GroupKind{Group: "compute.kubenova.io", Kind: "Flavor"}) || o.GetKind() == "Secret" {
					continue
				}
				h, _ := scripts.Of(o)
				res, _ := gitops.Kstatus(o)
				table.WriteString(o.GetKind() + " " + o.GetName() + ": Argo CD " + h.Status + " (" + h.Message + "), kstatus " + string(res.Status) + "\n")
			}
		}
		GinkgoWriter.Printf("health after the server-side apply of every sample:\n%s", table.String())
	}, NodeTimeout(8*time.Minute))
})
