package deployed

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// A pod that kube-scheduler placed on a real node holds memory there that kubenova must not
// promise a guest: with the node's allocatable taken but for less than an m1.tiny, an instance
// pinned there waits with NoValidHost naming PodsFitFilter, and runs there once the pod is gone.
func TestAnInstanceDoesNotTakeMemoryAPodRequested(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	node := cluster.Nodes[0]
	n := &corev1.Node{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Name: node.Name}, n); err != nil {
		t.Fatal(err)
	}
	free := n.Status.Allocatable.Memory().Value()
	var pods corev1.PodList
	if err := cluster.Client.List(ctx, &pods, client.MatchingFields{"spec.nodeName": node.Name}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			for _, c := range p.Spec.Containers {
				free -= c.Resources.Requests.Memory().Value()
			}
		}
	}
	var instances v1.InstanceList
	if err := cluster.Client.List(ctx, &instances); err != nil {
		t.Fatal(err)
	}
	for _, inst := range instances.Items {
		if inst.Status.NodeName == node.Name && inst.Status.Flavor != nil {
			free -= int64(inst.Status.Flavor.MemoryMiB) << 20
		}
	}
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
