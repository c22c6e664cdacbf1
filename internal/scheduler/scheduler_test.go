package scheduler

import (
	"fmt"
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

// TestConcurrentClaimsNeverOvercommit plays many schedulers' worth of launches at once against
// a node that fits three, with a cache that never shows any of them placed: Placement's pending
// claims alone must stop the fourth.
// TestConcurrentDecisionsNeverOvercommit runs twenty decisions at once, each choosing from its
// own snapshot without a lock (as reconciles with several workers do) against a cache that never
// shows any of them placed: Reserve must turn all but three away, and the losers, deciding
// again, must find no room.
func TestConcurrentDecisionsNeverOvercommit(t *testing.T) {
	p := NewPlacement()
	var instances []v1.Instance
	for i := 0; i < 20; i++ {
		instances = append(instances, v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(fmt.Sprint(i))}})
	}
	list := func() ([]v1.Instance, error) { return instances, nil }
	node := host("only", 3, 3*512, 100)
	var placed, lostRaces atomic.Int32
	var wg, chosen sync.WaitGroup
	chosen.Add(len(instances))
	for i := range instances {
		wg.Add(1)
		go func(uid types.UID) {
			defer wg.Done()
			for round := 0; ; round++ {
				h := node
				h.Used = p.Usage(instances, uid)["only"]
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
				ok, err := p.Reserve(uid, h, small(), list)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					placed.Add(1)
					return
				}
				lostRaces.Add(1)
			}
		}(instances[i].UID)
	}
	wg.Wait()
	if placed.Load() != 3 {
		t.Fatalf("placed %d instances on a node that fits 3", placed.Load())
	}
	if lostRaces.Load() != int32(len(instances)-3) {
		t.Fatalf("%d decisions lost their node to another; want all %d but the three that fit", lostRaces.Load(), len(instances)-3)
	}
}

func TestUsage(t *testing.T) {
	p := NewPlacement()
	flavor := &v1.AppliedFlavor{Name: "m1", FlavorSpec: v1.FlavorSpec{VCPUs: 2, MemoryMiB: 1024, DiskGiB: 5}}
	res := FlavorResources(flavor.FlavorSpec)
	placedInst := v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "placed"}, Status: v1.InstanceStatus{NodeName: "a", Flavor: flavor, VMState: v1.VMStateActive}}
	offloaded := v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "off"}, Status: v1.InstanceStatus{NodeName: "a", Flavor: flavor, VMState: v1.VMStateShelvedOffloaded}}
	stale := v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "stale"}}
	self := v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "self"}}
	p.pending["stale"] = claim{node: "b", resources: res}
	p.pending["gone"] = claim{node: "b", resources: res}
	p.pending["placed"] = claim{node: "a", resources: res}
	p.pending["self"] = claim{node: "b", resources: res}
	list := []v1.Instance{placedInst, offloaded, stale, self}

	used := p.Usage(list, "self")
	if used["a"] != res {
		t.Errorf("a: %+v; the placed instance counts once and the offloaded one not at all", used["a"])
	}
	if used["b"] != Add(res, res) {
		t.Errorf("b: %+v; the stale instance's claim and the gone one's count (a snapshot may be older than the claim), self's does not", used["b"])
	}
	if len(p.pending) != 4 {
		t.Errorf("a snapshot retires nothing: pending %v", p.pending)
	}

	ok, err := p.Reserve("self", host("b", 8, 8192, 100), small(), func() ([]v1.Instance, error) { return list, nil })
	if err != nil || !ok {
		t.Fatalf("reserve: %v, %v", ok, err)
	}
	if _, kept := p.pending["placed"]; kept {
		t.Error("a claim the fresh list shows is retired")
	}
	if _, kept := p.pending["gone"]; kept {
		t.Error("the claim of an instance missing from the fresh list is retired")
	}
	if c := p.pending["self"]; c.resources != small().Resources {
		t.Errorf("self's old claim is replaced by its new one: %+v", c)
	}
}

// TestSnapshotOlderThanAClaimKeepsIt: a decision whose snapshot was read before another
// instance existed must neither retire nor ignore that instance's claim.
func TestSnapshotOlderThanAClaimKeepsIt(t *testing.T) {
	p := NewPlacement()
	older := []v1.Instance{{ObjectMeta: metav1.ObjectMeta{UID: "a"}}}
	newer := append(older, v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "b"}})
	node := host("only", 2, 2*512, 100)
	if ok, _ := p.Reserve("b", node, small(), func() ([]v1.Instance, error) { return newer, nil }); !ok {
		t.Fatal("b fits")
	}
	// a's decision started from the older list, which does not have b yet.
	h := node
	h.Used = p.Usage(older, "a")["only"]
	if h.Used != small().Resources {
		t.Fatalf("b's claim must count in a snapshot that predates b: used %+v", h.Used)
	}
	if ok, _ := p.Reserve("a", h, small(), func() ([]v1.Instance, error) { return newer, nil }); !ok {
		t.Fatal("a fits beside b")
	}
	c := v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: "c"}}
	if ok, _ := p.Reserve("c", node, small(), func() ([]v1.Instance, error) { return append(newer, c), nil }); ok {
		t.Fatal("a third instance must not fit on a node for two")
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
