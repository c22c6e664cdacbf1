package scheduler

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func host(name string, vcpus, memMiB, diskGiB int64, mods ...func(*Host)) Host {
	h := Host{
		Hypervisor: &v1.Hypervisor{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       v1.HypervisorSpec{CPUAllocationRatio: "1.0", MemoryAllocationRatio: "1.0", DiskAllocationRatio: "1.0"},
			Status: v1.HypervisorStatus{State: v1.HypervisorUp,
				Capacity: v1.Resources{VCPUs: vcpus, MemoryMiB: memMiB, DiskGiB: diskGiB}},
		},
		Node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}},
	}
	for _, m := range mods {
		m(&h)
	}
	return h
}

// withNetworks gives the host networks of these names.
func withNetworks(names ...string) func(*Host) {
	return func(h *Host) {
		for _, n := range names {
			h.Hypervisor.Status.Networks = append(h.Hypervisor.Status.Networks, v1.HypervisorNetwork{Name: n, Type: v1.NetworkBridge, Source: "br-" + n})
		}
	}
}

func small() Request { return Request{Resources: v1.Resources{VCPUs: 1, MemoryMiB: 512, DiskGiB: 1}} }

func TestFilters(t *testing.T) {
	cases := []struct {
		name   string
		host   Host
		req    Request
		blamed string // "" = passes
	}{
		{"fits", host("a", 4, 4096, 10), small(), ""},
		{"down", host("a", 4, 4096, 10, func(h *Host) { h.Hypervisor.Status.State = v1.HypervisorDown }), small(), "ComputeFilter"},
		{"never reported", host("a", 4, 4096, 10, func(h *Host) { h.Hypervisor.Status.State = "" }), small(), "ComputeFilter"},
		{"disabled", host("a", 4, 4096, 10, func(h *Host) { h.Hypervisor.Spec.Disabled = true }), small(), "ComputeFilter"},
		{"forced down", host("a", 4, 4096, 10, func(h *Host) { h.Hypervisor.Spec.ForcedDown = true }), small(), "ComputeFilter"},
		{"storage refused", host("a", 4, 4096, 10, func(h *Host) { h.Hypervisor.Status.StorageUnavailable = "no .storage-id" }), small(), "StorageFilter"},
		{"cordoned", host("a", 4, 4096, 10, func(h *Host) { h.Node.Spec.Unschedulable = true }), small(), "NodeSchedulableFilter"},
		{"no node", host("a", 4, 4096, 10, func(h *Host) { h.Node = nil }), small(), "NodeSchedulableFilter"},
		{"out of service", host("a", 4, 4096, 10, func(h *Host) {
			h.Node.Spec.Taints = []corev1.Taint{{Key: corev1.TaintNodeOutOfService, Effect: corev1.TaintEffectNoExecute}}
		}), small(), "NodeSchedulableFilter"},
		{"excluded", host("a", 4, 4096, 10), Request{Resources: small().Resources, Exclude: []string{"a"}}, "ExcludedHostFilter"},
		{"wrong zone", host("a", 4, 4096, 10, func(h *Host) { h.Node.Labels[ZoneLabel] = "z1" }),
			Request{Resources: small().Resources, AvailabilityZone: "z2"}, "AvailabilityZoneFilter"},
		{"right zone", host("a", 4, 4096, 10, func(h *Host) { h.Node.Labels[ZoneLabel] = "z2" }),
			Request{Resources: small().Resources, AvailabilityZone: "z2"}, ""},
		{"selector misses", host("a", 4, 4096, 10), Request{Resources: small().Resources, NodeSelector: map[string]string{"gpu": "yes"}}, "NodeSelectorFilter"},
		{"too many vcpus", host("a", 1, 4096, 10), Request{Resources: v1.Resources{VCPUs: 2, MemoryMiB: 512}}, "VCPUFilter"},
		{"too much ram", host("a", 4, 256, 10), small(), "RAMFilter"},
		{"too much disk", host("a", 4, 4096, 0), small(), "DiskFilter"},
		{"used up", host("a", 4, 1024, 10, func(h *Host) { h.Used = v1.Resources{MemoryMiB: 768} }), small(), "RAMFilter"},
		{"ratio makes room", host("a", 1, 4096, 10, func(h *Host) { h.Hypervisor.Spec.CPUAllocationRatio = "4.0"; h.Used.VCPUs = 3 }), small(), ""},
		{"reserved counts", host("a", 4, 1024, 10, func(h *Host) { h.Hypervisor.Status.Reserved.MemoryMiB = 768 }), small(), "RAMFilter"},
		{"lacks a network", host("a", 4, 4096, 10, withNetworks("provider")),
			Request{Resources: small().Resources, Networks: []string{"provider", "storage"}}, "NetworkFilter"},
		{"has every network", host("a", 4, 4096, 10, withNetworks("storage", "provider")),
			Request{Resources: small().Resources, Networks: []string{"provider", "storage"}}, ""},
	}
	for _, c := range cases {
		got, err := Select([]Host{c.host}, c.req, DefaultFilters)
		if c.blamed == "" {
			if err != nil || got != "a" {
				t.Errorf("%s: got %q, %v; want a", c.name, got, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: chose %q, want NoValidHost blaming %s", c.name, got, c.blamed)
			continue
		}
		if !strings.Contains(err.Error(), c.blamed+" rejected 1") {
			t.Errorf("%s: %v; want %s blamed", c.name, err, c.blamed)
		}
	}
}

func TestNoValidHostCountsPerFilter(t *testing.T) {
	hosts := []Host{
		host("a", 4, 256, 10), host("b", 4, 256, 10),
		host("c", 4, 4096, 10, func(h *Host) { h.Hypervisor.Spec.Disabled = true }),
	}
	_, err := Select(hosts, small(), DefaultFilters)
	want := "no valid host among 3: RAMFilter rejected 2, ComputeFilter rejected 1"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	if _, err := Select(nil, small(), DefaultFilters); err == nil || !strings.Contains(err.Error(), "no hypervisors") {
		t.Fatalf("no hosts: %v", err)
	}
}

func TestRAMSpread(t *testing.T) {
	hosts := []Host{host("a", 8, 2048, 10), host("b", 8, 8192, 10), host("c", 8, 8192, 10, func(h *Host) { h.Used.MemoryMiB = 4096 })}
	got, err := Select(hosts, small(), DefaultFilters)
	if err != nil || got != "b" {
		t.Fatalf("got %q, %v; want b, the host with the most free RAM", got, err)
	}
}

// TestConcurrentDecisionsNeverOvercommit runs twenty decisions at once, each choosing from its
// own snapshot without a lock (as reconciles with several workers do) while the informer shows
// none of them placed: Reserve must turn all but three away, and the losers, deciding again,
// must find no room.
func TestConcurrentDecisionsNeverOvercommit(t *testing.T) {
	p := NewPlacement()
	var uids []types.UID
	for i := 0; i < 20; i++ {
		uids = append(uids, types.UID(fmt.Sprint(i)))
	}
	node := host("only", 3, 3*512, 100)
	var placed, lostRaces atomic.Int32
	var wg, chosen sync.WaitGroup
	chosen.Add(len(uids))
	for _, uid := range uids {
		wg.Add(1)
		go func(uid types.UID) {
			defer wg.Done()
			for round := 0; ; round++ {
				h := node
				h.Used = p.Usage(uid)["only"]
				_, err := Select([]Host{h}, small(), DefaultFilters)
				if round == 0 {
					// Every first decision is taken from the same empty snapshot before any
					// is reserved: the worst race there is.
					chosen.Done()
					chosen.Wait()
				}
				if err != nil {
					return // no room: NoValidHost
				}
				if p.Reserve(uid, "", h, small()) {
					placed.Add(1)
					return
				}
				lostRaces.Add(1)
			}
		}(uid)
	}
	wg.Wait()
	if placed.Load() != 3 {
		t.Fatalf("placed %d instances on a node that fits 3", placed.Load())
	}
	if lostRaces.Load() != int32(len(uids)-3) {
		t.Fatalf("%d decisions lost their node to another; want all %d but the three that fit", lostRaces.Load(), len(uids)-3)
	}
}

func TestUsageFollowsTheInformer(t *testing.T) {
	p := NewPlacement()
	flavor := &v1.AppliedFlavor{Name: "m1", FlavorSpec: v1.FlavorSpec{VCPUs: 2, MemoryMiB: 1024, DiskGiB: 5}}
	res := FlavorResources(flavor.FlavorSpec)
	placed := func(uid types.UID, node string, state v1.VMState) *v1.Instance {
		return &v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: uid}, Status: v1.InstanceStatus{NodeName: node, Flavor: flavor, VMState: state}}
	}
	p.Observe(placed("x", "a", v1.VMStateActive))
	p.Observe(placed("off", "a", v1.VMStateShelvedOffloaded))
	p.Observe(&v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "unplaced"}})
	if got := p.Usage("self"); got["a"] != res || len(got) != 1 {
		t.Fatalf("usage %+v; the placed instance counts once, the offloaded and unplaced ones not at all", got)
	}
	unshelving := placed("back", "c", v1.VMStateShelvedOffloaded)
	unshelving.Status.Task = &v1.Task{ID: 4, Action: v1.ActionUnshelve}
	p.Observe(unshelving)
	if got := p.Usage("self"); got["c"] != res {
		t.Fatalf("usage %+v; an offloaded instance placed anew for its unshelve counts on its new node", got)
	}
	p.Forget("back")

	// Claims count until the informer shows them; self's never counts against itself.
	if !p.Reserve("y", "7", host("b", 8, 8192, 100), Request{Resources: res}) {
		t.Fatal("y fits on b")
	}
	if !p.Reserve("self", "7", host("b", 8, 8192, 100), Request{Resources: res}) {
		t.Fatal("self fits on b")
	}
	if got := p.Usage("self")["b"]; got != res {
		t.Errorf("b: %+v; y's claim counts, self's does not", got)
	}
	if got := p.Usage("other")["b"]; got != Add(res, res) {
		t.Errorf("b: %+v; both claims count for another decision", got)
	}

	// The version the decision was made from does not show it, even on the node (an instance
	// resized on its own node): the claim stays.
	old := placed("y", "b", v1.VMStateActive)
	old.ResourceVersion = "7"
	p.Observe(old)
	if _, pending := p.pending["y"]; !pending {
		t.Error("the decision's own version retired its claim")
	}
	p.Forget("y")
	if !p.Reserve("y", "7", host("b", 8, 8192, 100), Request{Resources: res}) {
		t.Fatal("y fits on b")
	}
	// The informer shows y placed: its claim retires and y counts once.
	p.Observe(placed("y", "b", v1.VMStateBuilding))
	if _, pending := p.pending["y"]; pending {
		t.Error("a claim the informer shows is retired")
	}
	if got := p.Usage("self")["b"]; got != res {
		t.Errorf("b: %+v; y counts once", got)
	}

	// x moves to b (a migration), then is shelved off the node, then deleted.
	p.Observe(placed("x", "b", v1.VMStateActive))
	if got := p.Usage("self"); got["a"] != (v1.Resources{}) || got["b"] != Add(res, res) {
		t.Errorf("after the move: %+v", got)
	}
	p.Observe(placed("x", "b", v1.VMStateShelvedOffloaded))
	p.Forget("x")
	p.Forget("self")
	if got := p.Usage("nobody"); got["b"] != res || len(p.pending) != 0 {
		t.Errorf("after x left and self was deleted: %+v, pending %v", got, p.pending)
	}
}

// TestReserveSeesClaimsMadeAfterTheSnapshot: a decision whose snapshot was taken before another
// decision's claim must not take the room that claim holds.
func TestReserveSeesClaimsMadeAfterTheSnapshot(t *testing.T) {
	p := NewPlacement()
	node := host("only", 2, 2*512, 100)
	h := node
	h.Used = p.Usage("a")["only"] // empty: b has not decided yet
	if !p.Reserve("b", "", node, small()) || !p.Reserve("c", "", node, small()) {
		t.Fatal("b and c fit")
	}
	if p.Reserve("a", "", h, small()) {
		t.Fatal("a third instance must not fit on a node for two, whatever its snapshot said")
	}
}

func BenchmarkSelect100Hosts(b *testing.B) {
	hosts := make([]Host, 100)
	for i := range hosts {
		hosts[i] = host(fmt.Sprintf("h%03d", i), 64, int64(65536+i), 1000)
	}
	r := small()
	for b.Loop() {
		if _, err := Select(hosts, r, DefaultFilters); err != nil {
			b.Fatal(err)
		}
	}
}

// benchmarkDecision is one scheduling decision as the manager makes it (a snapshot of the
// allocations, the filters and weigher over every host, the claim) on a cluster of hosts
// nodes that already runs instances instances.
func benchmarkDecision(b *testing.B, hosts, instances int) {
	p := NewPlacement()
	candidates := make([]Host, hosts)
	for i := range candidates {
		candidates[i] = host(fmt.Sprintf("h%04d", i), 1<<20, 1<<30, 1<<20)
	}
	flavor := &v1.AppliedFlavor{Name: "m1", FlavorSpec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 512, DiskGiB: 1}}
	for i := range instances {
		p.Observe(&v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(fmt.Sprint("i", i))},
			Status: v1.InstanceStatus{NodeName: candidates[i%hosts].Name(), Flavor: flavor, VMState: v1.VMStateActive}})
	}
	r := small()
	n := 0
	for b.Loop() {
		uid := types.UID(fmt.Sprint("new", n))
		n++
		used := p.Usage(uid)
		for i := range candidates {
			candidates[i].Used = used[candidates[i].Name()]
		}
		node, err := Select(candidates, r, DefaultFilters)
		if err != nil {
			b.Fatal(err)
		}
		h := candidates[slices.IndexFunc(candidates, func(h Host) bool { return h.Name() == node })]
		if !p.Reserve(uid, "1", h, r) {
			b.Fatal("lost a race with nobody")
		}
		// The informer shows it placed, as it soon would: the placement's write made a newer
		// version, which retires the claim.
		p.Observe(&v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: uid, ResourceVersion: "2"},
			Status: v1.InstanceStatus{NodeName: node, Flavor: flavor, VMState: v1.VMStateBuilding}})
		// Claims left behind would make each decision slower than the last, and the figure
		// depend on b.N.
		if len(p.pending) != 0 {
			b.Fatalf("%d claims outlive the placements that showed them", len(p.pending))
		}
	}
}

// The cost of a decision grows with the hosts, not with the instances already placed.
func BenchmarkDecision100Hosts1000Instances(b *testing.B)  { benchmarkDecision(b, 100, 1000) }
func BenchmarkDecision100Hosts10000Instances(b *testing.B) { benchmarkDecision(b, 100, 10000) }
func BenchmarkDecision1000Hosts10000Instances(b *testing.B) {
	benchmarkDecision(b, 1000, 10000)
}
