package scheduler

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	resourcehelper "k8s.io/component-helpers/resource"
)

// PodRequests is what pods request of a node, as kube-scheduler counts it.
type PodRequests struct {
	MilliCPU    int64
	MemoryBytes int64
}

// PodLoad keeps, per node, the sum of what the pods bound there request: the room kube-scheduler
// has promised to pods, which kubenova's placement must not promise to guests. It is fed by a
// Pod informer (Observe, Forget), so that a decision reads a sum per node instead of listing
// pods. A pod counts from its binding until it has terminated, as it counts for kube-scheduler.
type PodLoad struct {
	mu      sync.Mutex
	pods    map[types.UID]podClaim
	perNode map[string]PodRequests
}

type podClaim struct {
	node     string
	requests PodRequests
}

// NewPodLoad returns an empty PodLoad.
func NewPodLoad() *PodLoad {
	return &PodLoad{pods: map[types.UID]podClaim{}, perNode: map[string]PodRequests{}}
}

// Observe records a pod as the informer shows it now.
func (l *PodLoad) Observe(pod *corev1.Pod) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forget(pod.UID)
	// Placement counts the guests a reservation pod carries.
	if pod.Labels[ReservationLabel] != "" || pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	reqs := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{UseStatusResources: true})
	c := podClaim{node: pod.Spec.NodeName, requests: PodRequests{
		MilliCPU: reqs.Cpu().MilliValue(), MemoryBytes: reqs.Memory().Value()}}
	l.pods[pod.UID] = c
	sum := l.perNode[c.node]
	l.perNode[c.node] = PodRequests{MilliCPU: sum.MilliCPU + c.requests.MilliCPU, MemoryBytes: sum.MemoryBytes + c.requests.MemoryBytes}
}

// Forget drops a pod that is gone.
func (l *PodLoad) Forget(uid types.UID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forget(uid)
}

func (l *PodLoad) forget(uid types.UID) {
	c, ok := l.pods[uid]
	if !ok {
		return
	}
	delete(l.pods, uid)
	sum := l.perNode[c.node]
	sum = PodRequests{MilliCPU: sum.MilliCPU - c.requests.MilliCPU, MemoryBytes: sum.MemoryBytes - c.requests.MemoryBytes}
	if sum == (PodRequests{}) {
		delete(l.perNode, c.node)
		return
	}
	l.perNode[c.node] = sum
}

// On is what the pods bound to node request.
func (l *PodLoad) On(node string) PodRequests {
	if l == nil {
		return PodRequests{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perNode[node]
}

// EventHandler feeds Observe and Forget from a Pod informer.
func (l *PodLoad) EventHandler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if pod, ok := obj.(*corev1.Pod); ok {
				l.Observe(pod)
			}
		},
		UpdateFunc: func(_, obj any) {
			if pod, ok := obj.(*corev1.Pod); ok {
				l.Observe(pod)
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				l.Forget(pod.UID)
			}
		},
	}
}

// ReservationLabel marks kubenova's reservation pods (controllers/reservation_controller.go);
// its value says which kind.
const ReservationLabel = "compute.kubenova.io/reservation"

// StripPod is the cache transform of the manager's Pod informer: it keeps what PodRequests
// reads (the node, the phase, the containers' and the pod's resources, the overhead) and drops
// the rest, so that caching every pod of the cluster costs little and holds none of their
// environment. Of kubenova's reservation pods it keeps their labels and conditions too.
func StripPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	stripped := &corev1.Pod{}
	stripped.Name, stripped.Namespace, stripped.UID, stripped.ResourceVersion = pod.Name, pod.Namespace, pod.UID, pod.ResourceVersion
	stripped.DeletionTimestamp = pod.DeletionTimestamp
	if kind := pod.Labels[ReservationLabel]; kind != "" {
		stripped.Labels = map[string]string{ReservationLabel: kind}
		stripped.Status.Conditions, stripped.Status.Reason, stripped.Status.Message = pod.Status.Conditions, pod.Status.Reason, pod.Status.Message
	}
	stripped.Spec.NodeName, stripped.Spec.Overhead, stripped.Spec.Resources = pod.Spec.NodeName, pod.Spec.Overhead, pod.Spec.Resources
	keep := func(in []corev1.Container) []corev1.Container {
		out := make([]corev1.Container, len(in))
		for i, c := range in {
			out[i] = corev1.Container{Name: c.Name, Resources: c.Resources, RestartPolicy: c.RestartPolicy}
		}
		return out
	}
	stripped.Spec.Containers, stripped.Spec.InitContainers = keep(pod.Spec.Containers), keep(pod.Spec.InitContainers)
	stripped.Status.Phase, stripped.Status.Resources = pod.Status.Phase, pod.Status.Resources
	keepStatus := func(in []corev1.ContainerStatus) []corev1.ContainerStatus {
		out := make([]corev1.ContainerStatus, len(in))
		for i, s := range in {
			out[i] = corev1.ContainerStatus{Name: s.Name, Resources: s.Resources, AllocatedResources: s.AllocatedResources}
		}
		return out
	}
	stripped.Status.ContainerStatuses = keepStatus(pod.Status.ContainerStatuses)
	stripped.Status.InitContainerStatuses = keepStatus(pod.Status.InitContainerStatuses)
	return stripped, nil
}
