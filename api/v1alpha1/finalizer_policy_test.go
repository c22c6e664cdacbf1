package v1alpha1_test

import (
	"context"
	"testing"
	"time"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// TestTheAPIServerAddsTheFinalizer: config/admission/instance-finalizer.yaml makes every new
// Instance carry the manager's finalizer from its first version, once, whatever finalizers its
// manifest names.
func TestTheAPIServerAddsTheFinalizer(t *testing.T) {
	ctx := context.Background()
	g := gomega.NewWithT(t)
	create := func(name string, finalizers ...string) []string {
		inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Finalizers: finalizers},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "img"}}}
		// The policy takes effect a moment after it is created.
		g.Eventually(func(g gomega.Gomega) {
			_ = env.Client.Delete(ctx, inst)
			probe := inst.DeepCopy()
			probe.ResourceVersion = ""
			g.Expect(client.IgnoreAlreadyExists(env.Client.Create(ctx, probe))).To(gomega.Succeed())
			g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(inst), probe)).To(gomega.Succeed())
			g.Expect(probe.Finalizers).To(gomega.ContainElement(v1.FinalizerInstance))
			inst = probe
		}).WithTimeout(30 * time.Second).Should(gomega.Succeed())
		t.Cleanup(func() {
			// No manager runs here to remove it.
			inst.Finalizers = nil
			_ = env.Client.Update(context.Background(), inst)
			_ = env.Client.Delete(context.Background(), inst)
		})
		return inst.Finalizers
	}
	g.Expect(create("finalized-plain")).To(gomega.Equal([]string{v1.FinalizerInstance}))
	got := create("finalized-other", "example.com/keep")
	g.Expect(got).To(gomega.ConsistOf("example.com/keep", v1.FinalizerInstance))
	got = create("finalized-already", v1.FinalizerInstance)
	g.Expect(got).To(gomega.Equal([]string{v1.FinalizerInstance}), "added once")
}
