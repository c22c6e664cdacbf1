// Package manifests tests config/ as a cluster would take it: every kustomization renders and
// the API server admits what it renders; the roles let each identity do its work and no more;
// the admission policies confine the agents to their nodes and keep moves to a chosen node and
// evacuation for administrators.
package manifests

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/controllers"
	"github.com/kubenova/kubenova/internal/consolelog"
	"github.com/kubenova/kubenova/test/utils"
)

var cluster *utils.Cluster

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kubenova-manifests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster, err = utils.StartControlPlane(context.Background(), dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Stop()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// overlays are every kustomization of config/.
var overlays = []string{"crd", "rbac", "admission", "manager", "agent", "default", "samples"}

// TestEveryKustomizationRendersAndIsAdmitted builds each kustomization and applies
// config/default and the samples with server-side dry-run: the API server validates every
// object against its schema and runs admission, and stores nothing.
func TestEveryKustomizationRendersAndIsAdmitted(t *testing.T) {
	ctx := context.Background()
	for _, dir := range overlays {
		objects, err := utils.Render(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(objects) == 0 {
			t.Errorf("config/%s renders nothing", dir)
		}
		if dir != "default" && dir != "samples" {
			continue
		}
		if dir == "samples" {
			objects = fillSamplePlaceholders(t, objects)
		}
		if err := utils.Apply(ctx, cluster.Client, objects, true); err != nil {
			t.Errorf("config/%s: %v", dir, err)
		}
	}
}

// fillSamplePlaceholders puts a path and a digest where the samples have the placeholders
// that `make dev` fills with the test guest's.
func fillSamplePlaceholders(t *testing.T, objects []*unstructured.Unstructured) []*unstructured.Unstructured {
	t.Helper()
	fill := strings.NewReplacer("${GUEST_IMAGE}", "/var/lib/kubenova-images/sources/guest.qcow2",
		"${GUEST_SHA256}", strings.Repeat("0", 64))
	var out []*unstructured.Unstructured
	for _, o := range objects {
		b, err := o.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		filled := &unstructured.Unstructured{}
		if err := filled.UnmarshalJSON([]byte(fill.Replace(string(b)))); err != nil {
			t.Fatal(err)
		}
		out = append(out, filled)
	}
	return out
}

// TestDefaultHoldsEveryPiece: config/default installs every piece kubenova runs with, each in
// kubenova-system.
func TestDefaultHoldsEveryPiece(t *testing.T) {
	objects, err := utils.Render("default")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, o := range objects {
		have[o.GetKind()+"/"+o.GetName()] = true
		ns := o.GetNamespace()
		// The one exception: the manager reads kube-apiserver's front-proxy settings, which
		// live in kube-system, through the built-in Role there.
		frontProxyReader := o.GetKind() == "RoleBinding" && o.GetName() == "kubenova-manager-auth-reader" && ns == metav1.NamespaceSystem
		if ns != "" && ns != utils.SystemNamespace && !frontProxyReader {
			t.Errorf("%s %s is in namespace %s", o.GetKind(), o.GetName(), ns)
		}
	}
	for _, want := range []string{
		"Namespace/kubenova-system", "Deployment/kubenova-manager", "DaemonSet/kubenova-agent",
		"ServiceAccount/kubenova-manager", "ServiceAccount/kubenova-agent",
		"ClusterRole/kubenova-manager", "Role/kubenova-manager", "ClusterRole/kubenova-agent", "Role/kubenova-agent",
		"ClusterRoleBinding/kubenova-manager", "RoleBinding/kubenova-manager",
		"ClusterRoleBinding/kubenova-agent", "RoleBinding/kubenova-agent",
		"ClusterRole/kubenova-view", "ClusterRole/kubenova-edit", "ClusterRole/kubenova-admin",
		"ValidatingAdmissionPolicy/kubenova-agent-node-restriction", "ValidatingAdmissionPolicy/kubenova-instance-lock",
		"ValidatingAdmissionPolicy/kubenova-migration-admin", "MutatingAdmissionPolicy/kubenova-instance-finalizer",
		"ValidatingAdmissionPolicy/kubenova-reservation-pods", "ValidatingWebhookConfiguration/kubenova-reservation-eviction",
		"CustomResourceDefinition/instances.compute.kubenova.io", "Service/kubenova-manager-metrics",
		"Service/kubenova-agent-metrics", "Service/kubenova-manager-subresources",
		"APIService/v1alpha1.subresources.compute.kubenova.io", "RoleBinding/kubenova-manager-auth-reader",
	} {
		if !have[want] {
			t.Errorf("config/default lacks %s", want)
		}
	}
	// The metrics endpoints are on, and token-checked (--metrics-secure defaults to true).
	for _, o := range objects {
		if o.GetKind() != "Deployment" && o.GetKind() != "DaemonSet" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
		joined := strings.Join(args, " ")
		if !strings.Contains(joined, "--metrics-bind-address=:") || strings.Contains(joined, "--metrics-secure=false") {
			t.Errorf("%s %s serves no token-checked metrics: %s", o.GetKind(), o.GetName(), joined)
		}
		// Console logs: the manager's aggregated API, and each agent's service behind it.
		consoleFlag := map[string]string{"Deployment": "--subresources-bind-address=:", "DaemonSet": "--console-bind-address=:"}[o.GetKind()]
		if !strings.Contains(joined, consoleFlag) {
			t.Errorf("%s %s does not serve console logs (%s): %s", o.GetKind(), o.GetName(), consoleFlag, joined)
		}
	}
}

// expectForbidden fails unless err is the API server's refusal and says why in words that
// contain want.
func expectForbidden(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: allowed, want forbidden", what)
	case !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err):
		t.Errorf("%s: %v, want forbidden", what, err)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: refused with %q, want it to say %q", what, err.Error(), want)
	}
}

func expectAllowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// tokenClient is a client that authenticates with a token of one of kubenova's service
// accounts, bound to bound when not nil.
func tokenClient(t *testing.T, account string, bound *authenticationv1.BoundObjectReference) client.Client {
	t.Helper()
	token, err := cluster.ServiceAccountToken(context.Background(), account, bound)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, utils.TokenConfig(cluster.Config, token))
}

func kubeconfigClient(t *testing.T, path string) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, cfg)
}

func newClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	c, err := client.New(cfg, client.Options{Scheme: cluster.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// agentOf is a client of the agents' service account with a token bound to node's Node, the
// identity an agent's pod has.
func agentOf(t *testing.T, node string) client.Client {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}
	if err := client.IgnoreAlreadyExists(cluster.Client.Create(ctx, n)); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.Get(ctx, client.ObjectKeyFromObject(n), n); err != nil {
		t.Fatal(err)
	}
	return tokenClient(t, "kubenova-agent", &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: node, UID: n.UID})
}

func statusPatch(c client.Client, obj client.Object, body string) error {
	return c.Status().Patch(context.Background(), obj, client.RawPatch(types.MergePatchType, []byte(body)))
}

// placedInstance creates an instance whose status places it on node, its task naming peer (if
// any) the peer node.
func placedInstance(t *testing.T, name, node, peer string) *v1.Instance {
	t.Helper()
	ctx := context.Background()
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "img"}}}
	if err := cluster.Client.Create(ctx, inst); err != nil {
		t.Fatal(err)
	}
	inst.Status = v1.InstanceStatus{NodeName: node, VMState: v1.VMStateActive, PowerState: v1.PowerStateRunning}
	if peer != "" {
		inst.Status.Task = &v1.Task{ID: 3, Action: v1.ActionLiveMigrate, StartedAt: metav1.Now(), PeerNode: peer}
	}
	if err := cluster.Client.Status().Update(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.Patch(context.Background(), inst, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
		_ = cluster.Client.Delete(context.Background(), inst)
	})
	return inst
}

// TestAgentsAreConfinedToTheirNode: the API server lets an agent write its own Hypervisor,
// Lease and Events, and the agent's fields of the instances on its node (or of which it is the
// task's peer), and nothing of any other node, nor any spec.
func TestAgentsAreConfinedToTheirNode(t *testing.T) {
	ctx := context.Background()
	agentA, agentB := agentOf(t, "node-a"), agentOf(t, "node-b")

	// Hypervisors.
	expectForbidden(t, "node-a's agent creates its Hypervisor fenced",
		agentA.Create(ctx, &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Spec: v1.HypervisorSpec{ForcedDown: true}}),
		"may not set the administrator settings")
	expectForbidden(t, "node-a's agent creates node-b's Hypervisor",
		agentA.Create(ctx, &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}), "only its own Hypervisor")
	hvA := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	expectAllowed(t, "node-a's agent creates its Hypervisor", agentA.Create(ctx, hvA))
	hvB := &v1.Hypervisor{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}
	expectAllowed(t, "node-b's agent creates its Hypervisor", agentB.Create(ctx, hvB))
	expectAllowed(t, "node-a's agent reports its capacity", statusPatch(agentA, hvA, `{"status":{"capacity":{"vcpus":8},"hostUUID":"a"}}`))
	expectForbidden(t, "node-a's agent marks itself Up", statusPatch(agentA, hvA, `{"status":{"state":"Up"}}`),
		"only the reported fields")
	expectForbidden(t, "node-a's agent reports node-b's capacity", statusPatch(agentA, hvB, `{"status":{"capacity":{"vcpus":64}}}`),
		"only its own Hypervisor")
	expectForbidden(t, "node-a's agent unfences itself",
		agentA.Patch(ctx, hvA, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"forcedDown":false}}`))), "cannot patch resource")
	expectForbidden(t, "node-a's agent deletes node-b's Hypervisor", agentA.Delete(ctx, hvB), "cannot delete resource")

	// Leases.
	now := metav1.NowMicro()
	lease := func(name, holder string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: utils.SystemNamespace, Name: name},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now}}
	}
	own := lease("kubenova-agent-node-a", "node-a")
	expectAllowed(t, "node-a's agent renews its Lease", agentA.Create(ctx, own))
	expectForbidden(t, "node-a's agent renews node-b's Lease", agentA.Create(ctx, lease("kubenova-agent-node-b", "node-b")),
		"only its own Lease")
	expectForbidden(t, "node-a's agent takes the manager's leader Lease", agentA.Create(ctx, lease("kubenova-manager", "node-a")),
		"only its own Lease")
	own.Spec.HolderIdentity = ptr.To("node-b")
	expectForbidden(t, "node-a's agent holds its Lease as node-b", agentA.Update(ctx, own), "must hold its Lease as node-a")

	// Instances.
	onA := placedInstance(t, "on-a", "node-a", "")
	toA := placedInstance(t, "on-b-to-a", "node-b", "node-a")
	expectAllowed(t, "node-a's agent reports the power state of its instance",
		statusPatch(agentA, onA, `{"status":{"powerState":"Shutdown","agentReport":{"nodeName":"node-a","taskID":1}}}`))
	expectForbidden(t, "node-a's agent sets the vm state of its instance", statusPatch(agentA, onA, `{"status":{"vmState":"Error"}}`),
		"may write only status.powerState and status.agentReport")
	expectForbidden(t, "node-a's agent moves its instance to node-b", statusPatch(agentA, onA, `{"status":{"nodeName":"node-b"}}`),
		"may write only status.powerState and status.agentReport")
	expectForbidden(t, "node-a's agent answers as a peer for its own instance",
		statusPatch(agentA, onA, `{"status":{"peerReport":{"nodeName":"node-a","step":"prepared"}}}`), "status.peerReport of those")
	expectForbidden(t, "node-a's agent changes the spec of its instance",
		agentA.Patch(ctx, onA, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"flavor":"m1.huge"}}`))), "cannot patch resource")
	expectForbidden(t, "node-a's agent deletes its instance", agentA.Delete(ctx, onA), "cannot delete resource")
	expectAllowed(t, "node-a's agent answers as the peer of an incoming move",
		statusPatch(agentA, toA, `{"status":{"peerReport":{"nodeName":"node-a","step":"prepared","stepTaskID":3}}}`))
	expectForbidden(t, "node-a's agent reports the power of an instance it only receives",
		statusPatch(agentA, toA, `{"status":{"powerState":"Shutdown"}}`), "may write only status.powerState")
	expectForbidden(t, "node-b's agent writes node-a's instance", statusPatch(agentB, onA, `{"status":{"powerState":"Crashed"}}`),
		"neither on that node nor its task peer")
	expectForbidden(t, "node-a's agent reports as node-b",
		statusPatch(agentA, onA, `{"status":{"agentReport":{"nodeName":"node-b","taskID":2}}}`), "may report only as node node-a")

	// A token that names no node, and a person: neither passes for an agent.
	unbound := tokenClient(t, "kubenova-agent", nil)
	expectForbidden(t, "an agent token bound to no node", statusPatch(unbound, onA, `{"status":{"powerState":"Crashed"}}`),
		"this token names no node")

	// Events.
	event := func(name, controller string) *eventsv1.Event {
		return &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			EventTime: metav1.NowMicro(), ReportingController: controller, ReportingInstance: controller + "-x",
			Action: "Report", Reason: "Test", Type: corev1.EventTypeNormal,
			Regarding: corev1.ObjectReference{Kind: "Instance", Namespace: "default", Name: onA.Name}}
	}
	expectAllowed(t, "node-a's agent reports an Event", agentA.Create(ctx, event("a-own", "kubenova-agent-node-a")))
	expectForbidden(t, "node-a's agent reports as node-b", agentA.Create(ctx, event("a-as-b", "kubenova-agent-node-b")),
		"may report Events only as kubenova-agent-node-a")
	expectForbidden(t, "node-a's agent reports as the manager", agentA.Create(ctx, event("a-as-manager", "kubenova-manager")),
		"may report Events only as kubenova-agent-node-a")

	// Secrets: only the manager's copies of user data, in kubenova's namespace, by name.
	expectForbidden(t, "node-a's agent reads a user's Secret",
		agentA.Get(ctx, client.ObjectKey{Namespace: "default", Name: "web-userdata"}, &corev1.Secret{}), "cannot get resource")
	if err := agentA.Get(ctx, client.ObjectKey{Namespace: utils.SystemNamespace, Name: v1.UserDataCopyName("some-uid")}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("node-a's agent reads a user data copy: %v, want NotFound (allowed, and there is none)", err)
	}
	expectForbidden(t, "node-a's agent lists the copies", agentA.List(ctx, &corev1.SecretList{}, client.InNamespace(utils.SystemNamespace)),
		"cannot list resource")
}

// TestTheManagerDoesItsWorkAndNoMore: the manager's token takes the leader Lease and writes
// instances' status, but creates no instance and reads no Secret list.
func TestTheManagerDoesItsWorkAndNoMore(t *testing.T) {
	ctx := context.Background()
	mgr := tokenClient(t, "kubenova-manager", nil)
	now := metav1.NowMicro()
	leader := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: utils.SystemNamespace, Name: "kubenova-manager"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("manager-0"), LeaseDurationSeconds: ptr.To[int32](15), RenewTime: &now}}
	expectAllowed(t, "the manager takes the leader Lease", mgr.Create(ctx, leader))
	inst := placedInstance(t, "managed", "node-a", "")
	expectAllowed(t, "the manager sets the vm state", statusPatch(mgr, inst, `{"status":{"vmState":"Stopped"}}`))
	expectAllowed(t, "the manager adds a finalizer",
		mgr.Patch(ctx, inst, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":["compute.kubenova.io/instance","x/y"]}}`))))
	expectForbidden(t, "the manager creates an instance",
		mgr.Create(ctx, &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "rogue"},
			Spec: v1.InstanceSpec{Flavor: "f", Image: v1.ImageReference{Name: "i"}}}), "cannot create resource")
	expectForbidden(t, "the manager lists Secrets", mgr.List(ctx, &corev1.SecretList{}), "cannot list resource")
	copied := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: utils.SystemNamespace, Name: v1.UserDataCopyName("managed-uid")},
		Data: map[string][]byte{v1.UserDataCopyKey: []byte("#cloud-config\n")}}
	expectAllowed(t, "the manager copies user data into kubenova's namespace", mgr.Create(ctx, copied))
	expectAllowed(t, "the manager deletes the copy", mgr.Delete(ctx, copied))
	expectForbidden(t, "the manager writes a user's Secret",
		mgr.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "planted"}}), "cannot create resource")
	// The aggregated API: the front proxy's settings, its own tokens for the agents, the CA
	// bundle of its APIService; nothing of the kind beyond those.
	expectAllowed(t, "the manager reads the front proxy's settings",
		mgr.Get(ctx, client.ObjectKey{Namespace: metav1.NamespaceSystem, Name: "extension-apiserver-authentication"}, &corev1.ConfigMap{}))
	expectForbidden(t, "the manager reads another ConfigMap of kube-system",
		mgr.Get(ctx, client.ObjectKey{Namespace: metav1.NamespaceSystem, Name: "kube-root-ca.crt"}, &corev1.ConfigMap{}), "cannot get resource")
	forNode := func(account string) error {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: utils.SystemNamespace, Name: account}}
		return mgr.SubResource("token").Create(ctx, sa, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: []string{consolelog.Audience("node-a")}}})
	}
	expectAllowed(t, "the manager mints its own token for an agent", forNode("kubenova-manager"))
	expectForbidden(t, "the manager mints the agents' token", forNode("kubenova-agent"), "cannot create resource")
	apiService := func(name string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("apiregistration.k8s.io/v1")
		u.SetKind("APIService")
		u.SetName(name)
		return u
	}
	if err := mgr.Get(ctx, client.ObjectKeyFromObject(apiService("v1alpha1.subresources.compute.kubenova.io")), apiService("")); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("the manager reads its APIService: %v", err)
	}
	expectForbidden(t, "the manager reads another APIService",
		mgr.Get(ctx, client.ObjectKey{Name: "v1.apps"}, apiService("")), "cannot get resource")
	expectForbidden(t, "the manager changes a flavor",
		mgr.Create(ctx, &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: "rogue"}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 64, DiskGiB: 1}}),
		"cannot create resource")
}

// TestOnlyTheManagerMakesReservationPods: a member may make pods, but neither with the
// reservation label, nor under the reservation pods' PriorityClass, nor under their names; the
// manager may.
func TestOnlyTheManagerMakesReservationPods(t *testing.T) {
	ctx := context.Background()
	if err := controllers.EnsureReservationPriorityClass(ctx, cluster.Client, controllers.DefaultReservationPriorityClass); err != nil {
		t.Fatal(err)
	}
	tenant := kubeconfigClient(t, cluster.Kubeconfig)
	mgr := tokenClient(t, "kubenova-manager", nil)
	pod := func(name string, change func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "pause"}}}}
		if change != nil {
			change(p)
		}
		return p
	}
	labelled := func(p *corev1.Pod) { p.Labels = map[string]string{controllers.ReservationLabel: "home"} }
	plain := pod("members-pod", nil)
	expectAllowed(t, "a member makes a pod", tenant.Create(ctx, plain))
	t.Cleanup(func() { _ = cluster.Client.Delete(context.Background(), plain, client.GracePeriodSeconds(0)) })
	expectForbidden(t, "a member makes a pod with the reservation label", tenant.Create(ctx, pod("fake-reservation", labelled)),
		"only kubenova's manager makes reservation pods")
	expectForbidden(t, "a member labels a pod as a reservation",
		tenant.Patch(ctx, plain, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"compute.kubenova.io/reservation":"home"}}}`))),
		"only kubenova's manager makes reservation pods")
	expectForbidden(t, "a member makes a pod under the reservations' PriorityClass",
		tenant.Create(ctx, pod("high", func(p *corev1.Pod) { p.Spec.PriorityClassName = controllers.DefaultReservationPriorityClass })),
		"for kubenova's reservation pods only")
	expectForbidden(t, "a member takes a reservation pod's name", tenant.Create(ctx, pod("kubenova-guests-node-a", nil)),
		"are kubenova's reservation pods'")
	real := pod("kubenova-guests-node-a", func(p *corev1.Pod) {
		labelled(p)
		p.Spec.PriorityClassName = controllers.DefaultReservationPriorityClass
	})
	expectAllowed(t, "the manager makes a reservation pod", mgr.Create(ctx, real))
	t.Cleanup(func() { _ = cluster.Client.Delete(context.Background(), real, client.GracePeriodSeconds(0)) })
}

// TestPeopleGetWhatNovasPolicyGivesThem: the built-in roles, with kubenova's rules folded in,
// split kubenova's kinds the way Nova's default policy does.
func TestPeopleGetWhatNovasPolicyGivesThem(t *testing.T) {
	ctx := context.Background()
	tenant := kubeconfigClient(t, cluster.Kubeconfig)
	admin := kubeconfigClient(t, cluster.CloudAdminKubeconfig)
	g := gomega.NewWithT(t)

	// A member (edit): instances, images, snapshots; reads flavors; no flavors, hypervisors or
	// migrations of their own.
	inst := &v1.Instance{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "members"},
		Spec: v1.InstanceSpec{Flavor: "m1.tiny", Image: v1.ImageReference{Name: "img"}}}
	expectAllowed(t, "a member launches an instance", tenant.Create(ctx, inst))
	t.Cleanup(func() {
		_ = cluster.Client.Patch(context.Background(), inst, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
		_ = cluster.Client.Delete(context.Background(), inst)
	})
	expectAllowed(t, "a member lists the flavors", tenant.List(ctx, &v1.FlavorList{}))
	expectAllowed(t, "a member lists the public images", tenant.List(ctx, &v1.ClusterImageList{}))
	expectForbidden(t, "a member creates a flavor",
		tenant.Create(ctx, &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: "mine"}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 64, DiskGiB: 1}}),
		"cannot create resource")
	expectForbidden(t, "a member lists the hypervisors", tenant.List(ctx, &v1.HypervisorList{}), "cannot list resource")
	cold := func(name, target string, kind v1.MigrationType) *v1.Migration {
		return &v1.Migration{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: v1.MigrationSpec{InstanceName: inst.Name, Type: kind, TargetNode: target}}
	}
	expectForbidden(t, "a member migrates", tenant.Create(ctx, cold("by-member", "", v1.MigrationCold)), "cannot create resource")
	canReadLog := func(c client.Client, namespace string) bool {
		t.Helper()
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: namespace, Verb: "get",
				Group: consolelog.APIGroup, Resource: "instances", Subresource: consolelog.Subresource, Name: inst.Name}}}
		if err := c.Create(ctx, review); err != nil {
			t.Fatal(err)
		}
		return review.Status.Allowed
	}
	if !canReadLog(tenant, "default") {
		t.Error("a member cannot read the console logs of the namespace's instances")
	}
	if canReadLog(tenant, "kube-system") {
		t.Error("a member reads the console logs of another namespace")
	}
	expectForbidden(t, "a member reads another namespace", tenant.List(ctx, &v1.InstanceList{}, client.InNamespace("kube-system")),
		"cannot list resource")

	// A project manager (admin): migrations the scheduler places; not a chosen node, not an
	// evacuation.
	if err := grantRole(ctx, "default", "project-manager", "admin"); err != nil {
		t.Fatal(err)
	}
	pm := impersonating(t, "project-manager")
	g.Eventually(func() error {
		return pm.List(ctx, &v1.MigrationList{}, client.InNamespace("default"))
	}).WithTimeout(10*time.Second).WithPolling(100*time.Millisecond).Should(gomega.Succeed(), "the grant takes effect")
	expectAllowed(t, "a project manager migrates", pm.Create(ctx, cold("by-pm", "", v1.MigrationCold)))
	expectForbidden(t, "a project manager chooses the node", pm.Create(ctx, cold("by-pm-to-b", "node-b", v1.MigrationLive)),
		"only administrators may choose the node")
	expectForbidden(t, "a project manager evacuates", pm.Create(ctx, cold("by-pm-evac", "", v1.MigrationEvacuate)),
		"only administrators may evacuate")

	// The cloud's administrator: flavors, hypervisors, a chosen node, evacuation.
	flavor := &v1.Flavor{ObjectMeta: metav1.ObjectMeta{Name: "m1.admins"}, Spec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 64, DiskGiB: 1}}
	expectAllowed(t, "the cloud admin creates a flavor", admin.Create(ctx, flavor))
	t.Cleanup(func() { _ = cluster.Client.Delete(context.Background(), flavor) })
	expectAllowed(t, "the cloud admin lists the hypervisors", admin.List(ctx, &v1.HypervisorList{}))
	expectAllowed(t, "the cloud admin moves to a chosen node", admin.Create(ctx, cold("by-admin-to-b", "node-b", v1.MigrationLive)))
	expectAllowed(t, "the cloud admin evacuates", admin.Create(ctx, cold("by-admin-evac", "", v1.MigrationEvacuate)))
}

// grantRole binds the built-in ClusterRole role to user in namespace.
func grantRole(ctx context.Context, namespace, user, role string) error {
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: user + "-" + role},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}}
	return client.IgnoreAlreadyExists(cluster.Client.Create(ctx, binding))
}

func impersonating(t *testing.T, user string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: []string{"system:authenticated"}}
	return newClient(t, cfg)
}
