package novacli

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// testNow is the fixed clock of the tests: stamps and ages are computed from it.
var testNow = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)

// sampleInstance is an idle Active instance, as the manager leaves one after its launch.
func sampleInstance(name string) *v1.Instance {
	created := metav1.NewTime(testNow.Add(-90 * time.Minute))
	return &v1.Instance{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: "4f2c-uid", Generation: 3,
			CreationTimestamp: created},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"}},
		Status: v1.InstanceStatus{
			ObservedGeneration: 3, VMState: v1.VMStateActive, PowerState: v1.PowerStateRunning, NodeName: "host-1",
			Flavor: &v1.AppliedFlavor{Name: "m1.tiny", FlavorSpec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 256, DiskGiB: 1}},
			Image: &v1.AppliedImage{ImageReference: v1.ImageReference{Name: "test-guest"}, UID: "9a1c-uid",
				SHA256: "4e1243bd22c66e76c2ba9eddc1f91394e57f9f83", DiskFormat: v1.DiskFormatQCOW2},
			Conditions: []metav1.Condition{
				{Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1.ReasonDesiredStateReached,
					Message: "the instance is Active as its spec asks", ObservedGeneration: 3},
				{Type: v1.ConditionStalled, Status: metav1.ConditionFalse, Reason: "Idle", ObservedGeneration: 3},
			},
		},
	}
}

// patchRecord is a patch a verb sent.
type patchRecord struct {
	name string
	typ  string
	body string
}

// harness runs commands against a fake client and records the patches they send.
type harness struct {
	opts    *options
	out     *bytes.Buffer
	errOut  *bytes.Buffer
	mu      sync.Mutex
	patches []patchRecord
	// gets, when set, answers the Gets after the first patch in turn (the last one repeats), as
	// the manager would move the instance along.
	gets []*v1.Instance
}

func newHarness(t *testing.T, objs ...client.Object) *harness {
	t.Helper()
	h := &harness{out: &bytes.Buffer{}, errOut: &bytes.Buffer{}}
	h.opts = newOptions(genericiooptions.IOStreams{In: &bytes.Buffer{}, Out: h.out, ErrOut: h.errOut})
	c := fake.NewClientBuilder().WithScheme(h.opts.scheme).WithObjects(objs...).
		// The Instance CRD's selectable field, as the API server serves it.
		WithIndex(&v1.Instance{}, "status.nodeName", func(o client.Object) []string { return []string{o.(*v1.Instance).Status.NodeName} }).
		// An Event's field the API server selects by.
		WithIndex(&corev1.Event{}, "involvedObject.uid", func(o client.Object) []string { return []string{string(o.(*corev1.Event).InvolvedObject.UID)} }).
		WithInterceptorFuncs(interceptor.Funcs{Patch: h.patch, Get: h.get}).Build()
	h.opts.newClient = func() (client.Client, error) { return c, nil }
	h.opts.namespace = func() (string, error) { return "default", nil }
	h.opts.now = func() time.Time { return testNow }
	h.opts.pollInterval = time.Millisecond
	return h
}

func (h *harness) patch(ctx context.Context, c client.WithWatch, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
	data, err := p.Data(obj)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.patches = append(h.patches, patchRecord{name: obj.GetName(), typ: string(p.Type()), body: string(data)})
	h.mu.Unlock()
	if err := c.Patch(ctx, obj, p, opts...); err != nil {
		return err
	}
	// The API server bumps the generation on a change of the spec; the fake client does not.
	obj.SetGeneration(obj.GetGeneration() + 1)
	return nil
}

func (h *harness) get(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	h.mu.Lock()
	scripted := len(h.patches) > 0 && len(h.gets) > 0
	var next *v1.Instance
	if scripted {
		next = h.gets[0]
		if len(h.gets) > 1 {
			h.gets = h.gets[1:]
		}
	}
	h.mu.Unlock()
	if !scripted {
		return c.Get(ctx, key, obj, opts...)
	}
	next.DeepCopyInto(obj.(*v1.Instance))
	return nil
}

// run executes the command line args and returns its error.
func (h *harness) run(args ...string) error {
	root := newRootCommand(h.opts)
	root.SetArgs(args)
	return root.ExecuteContext(context.Background())
}
