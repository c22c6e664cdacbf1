package scheduler

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func requests(cpu, mem string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}}
}

func pod(uid, node string, phase corev1.PodPhase, containers ...corev1.ResourceRequirements) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Name: uid, Namespace: "ns"},
		Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
	for _, r := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "c", Resources: r,
			Env: []corev1.EnvVar{{Name: "PASSWORD", Value: "secret"}}})
	}
	return p
}

// PodLoad sums what bound, unfinished pods request per node, as kube-scheduler counts it (an
// init container larger than the containers counts whole), through the cache's transform.
func TestPodLoadSumsBoundPodsRequests(t *testing.T) {
	l := NewPodLoad()
	observe := func(p *corev1.Pod) {
		t.Helper()
		stripped, err := StripPod(p)
		if err != nil {
			t.Fatal(err)
		}
		if sp := stripped.(*corev1.Pod); len(sp.Spec.Containers) > 0 && len(sp.Spec.Containers[0].Env) > 0 {
			t.Fatal("the transform kept the containers' environment")
		}
		l.Observe(stripped.(*corev1.Pod))
	}
	web := pod("web", "a", corev1.PodRunning, requests("250m", "512Mi"), requests("250m", "512Mi"))
	web.Spec.InitContainers = []corev1.Container{{Name: "init", Resources: requests("100m", "2Gi")}}
	observe(web)
	observe(pod("db", "a", corev1.PodPending, requests("1", "1Gi")))
	observe(pod("unbound", "", corev1.PodPending, requests("4", "4Gi")))
	observe(pod("done", "a", corev1.PodSucceeded, requests("4", "4Gi")))
	observe(pod("other", "b", corev1.PodRunning, requests("2", "1Gi")))
	if got, want := l.On("a"), (PodRequests{MilliCPU: 1500, MemoryBytes: 3 << 30}); got != want {
		t.Fatalf("node a: %+v, want %+v (web 500m and its 2Gi init container, db 1 CPU 1Gi; not the unbound or finished pods)", got, want)
	}
	moved := pod("db", "b", corev1.PodRunning, requests("1", "1Gi"))
	observe(moved)
	l.Forget("web")
	if got := l.On("a"); got != (PodRequests{}) {
		t.Fatalf("node a after db moved and web went: %+v, want nothing", got)
	}
	if got, want := l.On("b"), (PodRequests{MilliCPU: 3000, MemoryBytes: 2 << 30}); got != want {
		t.Fatalf("node b: %+v, want %+v", got, want)
	}
}

func TestPodsFitFilter(t *testing.T) {
	withNode := func(cpu, mem string, pods PodRequests, used v1.Resources) Host {
		h := host("a", 64, 1<<20, 100)
		h.Node.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
		h.Pods, h.Used = pods, used
		return h
	}
	req := func(vcpus, mib int64) Request { return Request{Resources: v1.Resources{VCPUs: vcpus, MemoryMiB: mib}} }
	cases := []struct {
		name string
		host Host
		req  Request
		fits bool
	}{
		// 5 GiB left by the pods; 3.5 GiB taken by guests; 1 GiB more with its overhead
		// (160 + 8 + 16 MiB) fits, 2 GiB does not.
		{"room left", withNode("4", "8Gi", PodRequests{MemoryBytes: 3 << 30}, v1.Resources{MemoryMiB: 3584}), req(1, 1024), true},
		{"the pods hold the memory", withNode("4", "8Gi", PodRequests{MemoryBytes: 3 << 30}, v1.Resources{MemoryMiB: 3584}), req(1, 2048), false},
		{"the guests' QEMU overhead holds the rest", func() Host {
			h := withNode("4", "8Gi", PodRequests{MemoryBytes: 3 << 30}, v1.Resources{MemoryMiB: 3584})
			h.OverheadMiB = 400
			return h
		}(), req(1, 1024), false},
		// host() sets a CPU allocation ratio of 1.0: a vCPU is a whole CPU's share.
		{"the pods hold the CPU", withNode("2", "8Gi", PodRequests{MilliCPU: 1500}, v1.Resources{}), req(1, 256), false},
		{"half a CPU left for a vCPU at 2:1", func() Host {
			h := withNode("2", "8Gi", PodRequests{MilliCPU: 1500}, v1.Resources{})
			h.Hypervisor.Spec.CPUAllocationRatio = "2.0"
			return h
		}(), req(1, 256), true},
		{"no kubelet, no allocatable: not judged", host("a", 8, 8192, 100), req(1, 4096), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Select([]Host{tc.host}, tc.req, DefaultFilters)
			if tc.fits && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.fits {
				nvh, ok := err.(*NoValidHost)
				if !ok || nvh.Rejected["PodsFitFilter"] != 1 {
					t.Fatalf("got %v; want PodsFitFilter to refuse", err)
				}
			}
		})
	}
}
