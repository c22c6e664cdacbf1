package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/metrics"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// Placement: choosing a node for a building instance, or for an offloaded one being unshelved
// (with the image and flavor checks that come first), and saying when a placed instance's node
// no longer matches its spec. It is apart because a placement decision is work of its own: the
// scheduler's choice among the nodes, and a Placement claim that concurrent decisions contest.

// schedule places a building instance on a node, or says why it cannot yet and retries with
// backoff.
func (r *InstanceReconciler) schedule(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if inst.Status.TaskState != v1.TaskStateScheduling {
		return nil, nil
	}
	flavor := &v1.Flavor{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Spec.Flavor}, flavor); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, err
		}
		st.waiting = &lifecycle.Refusal{Reason: v1.ReasonFlavorNotFound,
			Message: fmt.Sprintf("flavor %q does not exist; create it or change spec.flavor", inst.Spec.Flavor)}
		return &ctrl.Result{}, nil // the Flavor watch brings us back
	}
	image, notReady, err := r.availableImage(ctx, inst.Namespace, inst.Spec.Image)
	if err != nil {
		return nil, err
	}
	if notReady != nil {
		// The Image and ClusterImage watches bring us back when it changes.
		if notReady.Reason == v1.ReasonImageError {
			st.refusal = notReady // only someone's change helps
		} else {
			st.waiting = notReady
		}
		return &ctrl.Result{}, nil
	}
	if missing, err := r.copyUserData(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return &ctrl.Result{RequeueAfter: userDataRetry}, err
	}
	if missing, err := r.networksMissing(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}, err
	}
	if missing, err := r.serverGroupMissing(ctx, inst); err != nil || missing != nil {
		st.waiting = missing
		return &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}, err
	}
	if msg := flavorTooSmall(flavor, image); msg != "" {
		// Nova refuses these at the API (FlavorDiskSmallerThanMinDisk, FlavorMemoryTooSmall);
		// only a change of spec.flavor or of the image helps, so the instance is Stalled.
		st.refusal = &lifecycle.Refusal{Action: v1.ActionLaunch, Reason: v1.ReasonFlavorTooSmall, Message: msg}
		return &ctrl.Result{}, nil
	}
	if ok, err := r.chooseAdoptedDisk(ctx, inst, st); err != nil || !ok {
		return &ctrl.Result{RequeueAfter: quarantineRetry}, err
	}
	node, res, err := r.placeOrWait(ctx, inst, st, flavor.Spec)
	if node == "" {
		return res, err
	}
	inst.Status.NodeName = node
	inst.Status.Flavor = &v1.AppliedFlavor{Name: flavor.Name, FlavorSpec: flavor.Spec}
	inst.Status.Image = image.AppliedImage
	launch, _ := lifecycle.Lookup(v1.ActionLaunch)
	inst.Status.TaskState, _ = launch.NextTask(v1.TaskStateScheduling)
	if a := inst.Status.AdoptedDisk; a != nil {
		r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, "Schedule",
			"launching with flavor %s from the quarantined disk of instance uid %s (image %s not used): placed on node %s",
			flavor.Name, a.UID, inst.Status.Image.Name, node)
		return nil, nil
	}
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, "Schedule", "launching with flavor %s and image %s: placed on node %s",
		flavor.Name, inst.Status.Image.Name, node)
	return nil, nil
}

// scheduleUnshelve places a shelved-offloaded instance anew for its unshelve, as Nova's unshelve
// goes through the scheduler: any node that fits its flavor and spec, not necessarily the old one.
func (r *InstanceReconciler) scheduleUnshelve(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	task := inst.Status.Task
	if task == nil || task.Action != v1.ActionUnshelve || inst.Status.NodeName != "" || inst.Status.TaskState != v1.TaskStateUnshelving {
		return nil, nil
	}
	node, res, err := r.placeOrWait(ctx, inst, st, inst.Status.Flavor.FlavorSpec)
	if node == "" {
		return res, err
	}
	inst.Status.NodeName = node
	unshelve, _ := lifecycle.Lookup(v1.ActionUnshelve)
	inst.Status.TaskState, _ = unshelve.NextTask(v1.TaskStateUnshelving)
	r.event(st, inst, corev1.EventTypeNormal, v1.ReasonScheduled, "Schedule", "unshelving from image %s: placed on node %s",
		task.Image.Name, node)
	return nil, nil
}

// placeOrWait chooses a node that fits flavor and the spec's placement and says so in the
// Scheduled condition, or records why no node fits and when to try again ("" and the result
// to return).
func (r *InstanceReconciler) placeOrWait(ctx context.Context, inst *v1.Instance, st *reconcileState, flavor v1.FlavorSpec) (string, *ctrl.Result, error) {
	request := scheduler.Request{
		Resources:        scheduler.FlavorResources(flavor),
		NodeSelector:     inst.Spec.NodeSelector,
		AvailabilityZone: inst.Spec.AvailabilityZone,
		Networks:         scheduler.NetworksOf(inst),
	}
	if a := inst.Status.AdoptedDisk; a != nil && inst.Status.TaskState == v1.TaskStateScheduling {
		request.AdoptDisk = a.UID // only where that disk is
	}
	node, err := r.place(ctx, inst, request)
	if err != nil {
		var nvh *scheduler.NoValidHost
		if !errors.As(err, &nvh) {
			return "", nil, err
		}
		st.waiting = &lifecycle.Refusal{Reason: v1.ReasonNoValidHost, Message: nvh.Error()}
		meta.SetStatusCondition(&inst.Status.Conditions, metav1.Condition{Type: v1.ConditionScheduled,
			Status: metav1.ConditionFalse, Reason: v1.ReasonNoValidHost, Message: nvh.Error(),
			ObservedGeneration: inst.Generation})
		r.event(st, inst, corev1.EventTypeWarning, v1.ReasonNoValidHost, "Schedule", "%s", nvh.Error())
		r.observe(st, func() { metrics.CountNoValidHost(nvh.Blamed()) })
		return "", &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}, nil
	}
	if res, err := r.admitOnNode(ctx, inst, st, node); res != nil || err != nil {
		return "", res, err
	}
	r.attempts.forget(inst.UID)
	meta.SetStatusCondition(&inst.Status.Conditions, metav1.Condition{Type: v1.ConditionScheduled,
		Status: metav1.ConditionTrue, Reason: v1.ReasonScheduled, Message: "placed on " + node,
		ObservedGeneration: inst.Generation})
	return node, nil, nil
}

// admitOnNode holds a launch placed on node until its namespace's quotas have room for it and
// the node's kubelet has admitted its reservation (instance_reservation.go); the result to
// return while it must wait, nil when it may go on.
func (r *InstanceReconciler) admitOnNode(ctx context.Context, inst *v1.Instance, st *reconcileState, node string) (*ctrl.Result, error) {
	refuse := func(why *lifecycle.Refusal) *ctrl.Result {
		r.Placement.Release(inst.UID)
		r.reservationWaits.Delete(inst.UID)
		st.waiting = why
		meta.SetStatusCondition(&inst.Status.Conditions, metav1.Condition{Type: v1.ConditionScheduled,
			Status: metav1.ConditionFalse, Reason: why.Reason, Message: why.Message, ObservedGeneration: inst.Generation})
		r.event(st, inst, corev1.EventTypeWarning, why.Reason, "Schedule", "%s", why.Message)
		return &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}
	}
	exceeded, err := r.quotaExceeded(ctx, inst)
	if err != nil {
		r.Placement.Release(inst.UID)
		return nil, err
	}
	if exceeded != nil {
		return refuse(exceeded), nil
	}
	wait, refused, err := r.reservationPending(ctx, inst, node)
	switch {
	case err != nil:
		return nil, err
	case refused != nil:
		return refuse(refused), nil
	case wait != nil:
		// The reservation pod's changes wake the instance; the look again is for the deadline.
		st.waiting = wait
		return &ctrl.Result{RequeueAfter: reservationAdmissionTimeout / 8}, nil
	}
	return nil, nil
}

// flavorTooSmall says why a flavor cannot boot an image, or "" when it can.
func flavorTooSmall(flavor *v1.Flavor, image *resolvedImage) string {
	if d := flavor.Spec.DiskGiB; d > 0 && d < image.spec.MinDiskGiB {
		return fmt.Sprintf("flavor %s has a %d GiB disk; %s needs at least %d GiB", flavor.Name, d, image.ImageReference, image.spec.MinDiskGiB)
	}
	if m := flavor.Spec.MemoryMiB; m < image.spec.MinMemoryMiB {
		return fmt.Sprintf("flavor %s has %d MiB of memory; %s needs at least %d MiB", flavor.Name, m, image.ImageReference, image.spec.MinMemoryMiB)
	}
	return ""
}

// resolvedImage is an Available image: what the instance records of it, and its spec.
type resolvedImage struct {
	*v1.AppliedImage
	spec v1.ImageSpec
}

// availableImage looks up the image a reference names. An image that is missing or not
// Available (yet) gives a Refusal saying so, naming the image: instances wait for their image,
// they do not fail with it. Only an image the image service verified from its own source is
// ever handed to a node.
func (r *InstanceReconciler) availableImage(ctx context.Context, namespace string, ref v1.ImageReference) (*resolvedImage, *lifecycle.Refusal, error) {
	var img v1.ImageObject = &v1.Image{}
	key := types.NamespacedName{Namespace: namespace, Name: ref.Name}
	where := "in namespace " + namespace
	if ref.ImageKindOrDefault() == v1.KindClusterImage {
		img, key, where = &v1.ClusterImage{}, types.NamespacedName{Name: ref.Name}, "in the cluster"
	}
	if err := r.Get(ctx, key, img); apierrors.IsNotFound(err) {
		return nil, &lifecycle.Refusal{Reason: v1.ReasonImageNotFound,
			Message: fmt.Sprintf("%s does not exist %s", ref, where)}, nil
	} else if err != nil {
		return nil, nil, err
	}
	st := img.ImageStatus()
	if st.Phase != v1.ImageAvailable || st.SHA256 == "" {
		phase, why := st.Phase, ""
		if phase == "" {
			phase = v1.ImagePending
		}
		if c := meta.FindStatusCondition(st.Conditions, v1.ConditionReady); c != nil && c.Message != "" {
			why = ": " + c.Message
		}
		if phase == v1.ImageError {
			return nil, &lifecycle.Refusal{Reason: v1.ReasonImageError,
				Message: fmt.Sprintf("%s failed its import%s; fix its source and create it again, or change spec.image", ref, why)}, nil
		}
		return nil, &lifecycle.Refusal{Reason: v1.ReasonImageNotReady,
			Message: fmt.Sprintf("%s is %s%s", ref, phase, why)}, nil
	}
	applied := &v1.AppliedImage{ImageReference: v1.ImageReference{Kind: ref.ImageKindOrDefault(), Name: ref.Name},
		UID: string(img.GetUID()), SHA256: st.SHA256, DiskFormat: img.ImageSpec().DiskFormat}
	if applied.DiskFormat == "" {
		applied.DiskFormat = v1.DiskFormatQCOW2
	}
	return &resolvedImage{AppliedImage: applied, spec: *img.ImageSpec()}, nil, nil
}

// place chooses a node from a snapshot of the allocations (scheduler.Placement.Usage) without
// holding the placement lock, then reserves it (scheduler.Placement.Reserve), which checks again
// under the lock that the node still fits. A choice that lost its room to a decision made
// meanwhile is made again. A decision costs in proportion to the nodes, not the instances.
func (r *InstanceReconciler) place(ctx context.Context, inst *v1.Instance, request scheduler.Request) (string, error) {
	if !r.Placement.Synced() {
		return "", errors.New("the placement has not seen every instance yet; trying again")
	}
	group, err := r.groupRequest(ctx, inst)
	if err != nil {
		return "", err
	}
	request.Owner = client.ObjectKeyFromObject(inst)
	// A placed instance's claim is the far end of a move; one with no node is placed at home.
	request.Move = inst.Status.NodeName != ""
	// A launch that waits for its reservation keeps the node it was given while it still fits.
	keep := r.Placement.PendingNode(inst.UID)
	for attempt := 1; ; attempt++ {
		hosts, err := r.candidates(ctx)
		if err != nil {
			return "", err
		}
		if group != nil {
			g := *group
			g.Members = r.Placement.GroupMembers(inst.UID, g.Key)
			request.Group = &g
		}
		used, overhead := r.Placement.Usage(inst.UID), r.Placement.OverheadUsage(inst.UID)
		for i := range hosts {
			hosts[i].Used, hosts[i].OverheadMiB = used[hosts[i].Name()], overhead[hosts[i].Name()]
			hosts[i].Pods = r.Pods.On(hosts[i].Name())
		}
		if i := slices.IndexFunc(hosts, func(h scheduler.Host) bool { return h.Name() == keep }); keep != "" && i >= 0 {
			if _, err := scheduler.Select(hosts[i:i+1], request, scheduler.DefaultFilters); err == nil &&
				r.Placement.Reserve(inst.UID, inst.ResourceVersion, hosts[i], request) {
				return keep, nil
			}
			keep = ""
		}
		node, err := scheduler.Select(hosts, request, scheduler.DefaultFilters)
		if err != nil {
			return "", err
		}
		i := slices.IndexFunc(hosts, func(h scheduler.Host) bool { return h.Name() == node })
		if r.Placement.Reserve(inst.UID, inst.ResourceVersion, hosts[i], request) {
			return node, nil
		}
		if attempt == maxPlacementAttempts {
			return "", fmt.Errorf("node %s was taken by other decisions %d times in a row; trying again later", node, attempt)
		}
	}
}

// maxPlacementAttempts bounds how often one reconcile decides again after losing its node to a
// concurrent decision; the next reconcile starts afresh.
const maxPlacementAttempts = 5

// candidates are the hosts a decision chooses from: every Hypervisor with its Node. They are
// the cache's own objects, not copies (a decision per instance must not copy every Node): the
// scheduler only reads them.
func (r *InstanceReconciler) candidates(ctx context.Context) ([]scheduler.Host, error) {
	var hvs v1.HypervisorList
	if err := r.List(ctx, &hvs, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	byName := map[string]*corev1.Node{}
	for i := range nodes.Items {
		byName[nodes.Items[i].Name] = &nodes.Items[i]
	}
	hosts := make([]scheduler.Host, 0, len(hvs.Items))
	for i := range hvs.Items {
		hosts = append(hosts, scheduler.Host{Hypervisor: &hvs.Items[i], Node: byName[hvs.Items[i].Name]})
	}
	return hosts, nil
}

// backoff counts a failed attempt to place an instance and returns the wait before the next:
// from 5 s, doubled each time, up to MaxSchedulingBackoff. A change to a Hypervisor, Node,
// Flavor or Image retries at once regardless.
func (r *InstanceReconciler) backoff(uid types.UID) time.Duration {
	limit := r.MaxSchedulingBackoff
	if limit == 0 {
		limit = 5 * time.Minute
	}
	return r.attempts.failed(uid, 5*time.Second, limit)
}

// checkPlacement says so when the node an instance runs on no longer matches its spec's node
// selector or zone: kubenova, like Nova, does not move a placed instance by itself (a move is
// a Migration), and a silent ignore would leave the user believing the change took effect.
func (r *InstanceReconciler) checkPlacement(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	if inst.Status.NodeName == "" || inst.Status.Task != nil || inst.Status.VMState == v1.VMStateBuilding {
		return nil, nil
	}
	node := &corev1.Node{}
	if err := r.Get(ctx, types.NamespacedName{Name: inst.Status.NodeName}, node); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	request := scheduler.Request{NodeSelector: inst.Spec.NodeSelector, AvailabilityZone: inst.Spec.AvailabilityZone,
		Networks: scheduler.NetworksOf(inst)}
	hv := &v1.Hypervisor{}
	if err := r.Get(ctx, types.NamespacedName{Name: node.Name}, hv); apierrors.IsNotFound(err) {
		// No report of the node's networks to judge by.
		hv, request.Networks = &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: node.Name}}, nil
	} else if err != nil {
		return nil, err
	}
	host := scheduler.Host{Node: node, Hypervisor: hv}
	for _, f := range scheduler.PlacementFilters {
		if !f.Passes(host, request) {
			st.refusal = &lifecycle.Refusal{Action: v1.ActionLiveMigrate, Reason: ReasonPlacementMismatch,
				Message: fmt.Sprintf("node %s no longer matches the spec (%s): kubenova does not move a placed instance by itself; "+
					"migrate it (kubectl nova migrate %s --live) to a node that does", node.Name, f.Name, inst.Name)}
			return nil, nil
		}
	}
	return nil, nil
}

// ReasonPlacementMismatch says an instance's node no longer matches its spec's placement.
const ReasonPlacementMismatch = "PlacementMismatch"
