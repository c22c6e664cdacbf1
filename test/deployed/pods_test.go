package deployed

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// A pod that kube-scheduler placed on a real node holds memory there that kubenova must not
// promise a guest: with the node's allocatable taken but for less than an m1.tiny, an instance
// pinned there waits with NoValidHost naming PodsFitFilter, and runs there once the pod is gone.
func TestAnInstanceDoesNotTakeMemoryAPodRequested(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	node := cluster.Nodes[0]
	// (The guests already there are counted: their reservation pods are among the pods.)
	free := freeMemory(ctx, t, node.Name)
	// Leave 128 MiB: less than m1.tiny's 256.
	hog := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "memory-hog"},
		Spec: corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name},
			Containers: []corev1.Container{{Name: "pause", Image: tagOf(t, "pause"), ImagePullPolicy: corev1.PullNever,
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceMemory: *resource.NewQuantity(free-128<<20, resource.BinarySI)}}}}}}
	if err := cluster.Client.Create(ctx, hog); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "the pod scheduled and running on "+node.Name, func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(hog), hog); err != nil {
			return err
		}
		if hog.Spec.NodeName != node.Name || hog.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("node %q, phase %q", hog.Spec.NodeName, hog.Status.Phase)
		}
		return nil
	})

	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "beside-a-pod"},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"},
			NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name}}}
	if err := cluster.Client.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cluster.Client.Delete(context.Background(), inst)
	}()
	eventually(t, time.Minute, "the instance waits, naming PodsFitFilter", func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst); err != nil {
			return err
		}
		c := meta.FindStatusCondition(inst.Status.Conditions, v1.ConditionScheduled)
		if inst.Status.NodeName != "" || c == nil || c.Reason != v1.ReasonNoValidHost || !strings.Contains(c.Message, "PodsFitFilter rejected 1") {
			return fmt.Errorf("node %q, Scheduled %v", inst.Status.NodeName, c)
		}
		return nil
	})

	if err := cluster.Client.Delete(ctx, hog); err != nil {
		t.Fatal(err)
	}
	inst = waitSettled(ctx, t, inst.Name, v1.VMStateActive, 3*time.Minute)
	if inst.Status.NodeName != node.Name {
		t.Fatalf("placed on %s, want %s", inst.Status.NodeName, node.Name)
	}
	if out, err := node.Virsh(ctx, "domstate", string(inst.UID)); err != nil || strings.TrimSpace(out) != "running" {
		t.Errorf("virsh domstate on %s: %q, %v; want running", node.Name, out, err)
	}
	if err := cluster.Client.Delete(ctx, inst); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "the instance gone", func() error {
		err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(inst), inst)
		if err == nil {
			return fmt.Errorf("still there, %s", inst.Status.VMState)
		}
		return client.IgnoreNotFound(err)
	})
}

// An instance's vCPUs and memory, with QEMU's overhead, are carried by its namespace's
// reservation pod on its node, which the node's kubelet admitted before the guest was spawned:
// kube-scheduler keeps a pod that needs that memory Pending, and a ResourceQuota on
// requests.memory holds a launch it has no room for (QuotaExceeded) until it grows; a quota on
// count/instances.compute.kubenova.io refuses the create, as it refuses a pod's.
func TestKubernetesCountsInstancesAndQuotasLimitThem(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	node := cluster.Nodes[0]
	pinned := func(name string) *v1.Instance {
		return &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "test-guest"},
				NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name}}}
	}
	first := pinned("counted")
	if err := cluster.Client.Create(ctx, first); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Client.Delete(context.Background(), first) }()
	first = waitSettled(ctx, t, first.Name, v1.VMStateActive, 3*time.Minute)
	one := scheduler.ReservedFor(scheduler.FlavorResources(first.Status.Flavor.FlavorSpec))
	reservation := &corev1.Pod{}
	eventually(t, time.Minute, "the reservation pod admitted by the kubelet", func() error {
		key := client.ObjectKey{Namespace: "default", Name: controllers.ReservationPodName(scheduler.ReservationKey{Namespace: "default", Node: node.Name})}
		if err := cluster.Client.Get(ctx, key, reservation); err != nil {
			return err
		}
		admitted := controllers.AdmittedRequests(reservation)
		if admitted.Memory().Value() < one.MemoryMiB<<20 {
			return fmt.Errorf("phase %s, admitted %v; want %d MiB", reservation.Status.Phase, admitted, one.MemoryMiB)
		}
		return nil
	})
	if p := reservation.Spec.Priority; p == nil || *p != 1000000000 || reservation.Spec.NodeName != node.Name {
		t.Errorf("reservation pod: priority %v, node %q", p, reservation.Spec.NodeName)
	}
	pid := qemuUser(t, node, first)
	rss := residentBytes(t, pid)
	t.Logf("FIGURE QEMU of an m1.tiny (256 MiB) booted under TCG: %d MiB resident; its reservation carries %d MiB", rss>>20, one.MemoryMiB)
	if rss > one.MemoryMiB<<20 {
		t.Errorf("QEMU %s holds %d MiB, more than the %d MiB its reservation carries", pid, rss>>20, one.MemoryMiB)
	}

	By := func(what string) { t.Log(what) }
	By("a pod that needs 64 MiB more than the node has left beside the guest stays Pending")
	hog := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "needs-the-guests-memory"},
		Spec: corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/hostname": node.Name},
			Containers: []corev1.Container{{Name: "pause", Image: tagOf(t, "pause"), ImagePullPolicy: corev1.PullNever,
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceMemory: *resource.NewQuantity(freeMemory(ctx, t, node.Name)+64<<20, resource.BinarySI)}}}}}}
	if err := cluster.Client.Create(ctx, hog); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Client.Delete(context.Background(), hog) }()
	eventually(t, time.Minute, "kube-scheduler finds no room for the pod", func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(hog), hog); err != nil {
			return err
		}
		for _, c := range hog.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "Insufficient memory") {
				return nil
			}
		}
		return fmt.Errorf("node %q, conditions %v", hog.Spec.NodeName, hog.Status.Conditions)
	})
	if err := cluster.Client.Delete(ctx, hog); err != nil {
		t.Fatal(err)
	}

	By("a quota with room for less than another m1.tiny holds the second launch")
	quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "compute"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{corev1.ResourceRequestsMemory: resource.MustParse("64Ti"),
			countInstances: resource.MustParse("1000")}}}
	if err := cluster.Client.Create(ctx, quota); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Client.Delete(context.Background(), quota) }()
	// The namespace holds the earlier tests' instances too: the limits are set from what the
	// quota controller counted.
	var used, count resource.Quantity
	eventually(t, time.Minute, "the quota controller counts the namespace", func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(quota), quota); err != nil {
			return err
		}
		var okMem, okCount bool
		used, okMem = quota.Status.Used[corev1.ResourceRequestsMemory]
		count, okCount = quota.Status.Used[countInstances]
		if !okMem || !okCount || used.Value() < one.MemoryMiB<<20 || count.Value() < 1 {
			return fmt.Errorf("used %v", quota.Status.Used)
		}
		// What the namespace holds now, so that the limits are not set from a count that an
		// earlier test's leaving instances still swell.
		pods, instances := namespaceUsage(ctx, t, "default")
		if used.Value() != pods || count.Value() != instances {
			return fmt.Errorf("quota counts %s and %s instances; the namespace holds %d bytes and %d instances", used.String(), count.String(), pods, instances)
		}
		return nil
	})
	setHard := func(bytes int64) {
		t.Helper()
		eventually(t, 30*time.Second, "the quota changed", func() error {
			if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(quota), quota); err != nil {
				return err
			}
			quota.Spec.Hard[corev1.ResourceRequestsMemory] = *resource.NewQuantity(bytes, resource.BinarySI)
			quota.Spec.Hard[countInstances] = *resource.NewQuantity(count.Value()+1, resource.DecimalSI)
			return cluster.Client.Update(ctx, quota)
		})
	}
	setHard(used.Value() + one.MemoryMiB<<19)
	second := pinned("counted-2")
	if err := cluster.Client.Create(ctx, second); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cluster.Client.Delete(context.Background(), second) }()
	eventually(t, time.Minute, "the second launch waits with QuotaExceeded", func() error {
		if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(second), second); err != nil {
			return err
		}
		c := meta.FindStatusCondition(second.Status.Conditions, v1.ConditionScheduled)
		if second.Status.NodeName != "" || c == nil || c.Reason != v1.ReasonQuotaExceeded || !strings.Contains(c.Message, "exceeded quota compute: requests.memory") {
			return fmt.Errorf("node %q, Scheduled %v", second.Status.NodeName, c)
		}
		return nil
	})
	By("the quota grows: the launch goes on by itself")
	setHard(used.Value() + 2*one.MemoryMiB<<20)
	second = waitSettled(ctx, t, second.Name, v1.VMStateActive, 3*time.Minute)
	if out, err := node.Virsh(ctx, "domstate", string(second.UID)); err != nil || strings.TrimSpace(out) != "running" {
		t.Errorf("virsh domstate on %s: %q, %v; want running", node.Name, out, err)
	}

	By("a third instance is refused at creation by count/instances.compute.kubenova.io")
	err := cluster.Client.Create(ctx, pinned("counted-3"))
	if err == nil || !strings.Contains(err.Error(), "exceeded quota: compute") || !strings.Contains(err.Error(), "count/instances.compute.kubenova.io") {
		t.Errorf("third create: %v; want refused by quota compute's count/instances.compute.kubenova.io", err)
	}
}

// namespaceUsage is what a quota of the namespace should count now: its running pods' memory
// requests and its instances.
func namespaceUsage(ctx context.Context, t *testing.T, namespace string) (memory, instances int64) {
	t.Helper()
	var pods corev1.PodList
	if err := cluster.Client.List(ctx, &pods, client.InNamespace(namespace)); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			for _, c := range p.Spec.Containers {
				memory += c.Resources.Requests.Memory().Value()
			}
		}
	}
	var list v1.InstanceList
	if err := cluster.Client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		t.Fatal(err)
	}
	return memory, int64(len(list.Items))
}

// countInstances is the quota's object count of Instances.
const countInstances corev1.ResourceName = "count/instances.compute.kubenova.io"

// freeMemory is what node's allocatable memory leaves beside the requests of its pods that have
// not ended (reservation pods included).
func freeMemory(ctx context.Context, t *testing.T, node string) int64 {
	t.Helper()
	n := &corev1.Node{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
		t.Fatal(err)
	}
	free := n.Status.Allocatable.Memory().Value()
	var pods corev1.PodList
	if err := cluster.Client.List(ctx, &pods, client.MatchingFields{"spec.nodeName": node}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			for _, c := range p.Spec.Containers {
				free -= c.Resources.Requests.Memory().Value()
			}
		}
	}
	return free
}

// residentBytes is a process's resident memory (VmRSS).
func residentBytes(t *testing.T, pid string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib); err != nil {
				t.Fatal(err)
			}
			return kib << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%s/status", pid)
	return 0
}
