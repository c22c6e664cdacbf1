// Package scheduler places instances on hypervisors the way Nova's filter scheduler does: every
// filter must pass, then a weigher picks among the survivors. It is pure: the caller supplies
// the hosts, their usage and the request, so it is cheap to test and to benchmark.
package scheduler

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// ZoneLabel is the node label that holds its availability zone.
const ZoneLabel = corev1.LabelTopologyZone

// Host is one candidate: its Hypervisor, its Node and what is placed on it.
type Host struct {
	Hypervisor *v1.Hypervisor
	// Node is the Kubernetes Node of the same name; nil if there is none.
	Node *corev1.Node
	// Used is the sum of the flavors placed here, claims not yet visible included.
	Used v1.Resources
	// OverheadMiB is the memory overhead of the guests Used counts (MemoryOverheadMiB).
	OverheadMiB int64
	// Pods is what the pods bound to the node request (PodLoad).
	Pods PodRequests
}

// Name is the host's node name.
func (h Host) Name() string { return h.Hypervisor.Name }

// Request is what an instance needs of a host.
type Request struct {
	Resources        v1.Resources
	NodeSelector     map[string]string
	AvailabilityZone string
	// Exclude lists hosts that must not be chosen (a migration's source).
	Exclude []string
	// Host, when set, is the only host that may be chosen (a migration's requested target).
	Host string
	// Networks the instance's NICs are plugged into: the host must have every one.
	Networks []string
	// AdoptDisk, when set, is the UID of a quarantined disk the launch boots: only hosts whose
	// storage holds it (their Hypervisor lists it) may be chosen.
	AdoptDisk string
	// Group, when set, is the instance's server group.
	Group *GroupRequest
	// Owner is the instance being placed, whose namespace's reservation pod carries the claim.
	Owner types.NamespacedName
	// Move says the claim is the far end of a move (a migration's target, a resize's new
	// flavor): it is carried by the node's reservation pod of moves, not by the namespace's.
	Move bool
}

// GroupRequest is the server group of the instance being placed: its policy and where its other
// members are.
type GroupRequest struct {
	// Key names the group: namespace/name.
	Key        string
	Policy     v1.ServerGroupPolicy
	MaxPerHost int
	// Members counts the group's other members on each node: a member counts on every node it
	// holds (both ends of a move in flight), as it does against the node's resources.
	Members map[string]int
}

// membersOn is how many other members of the request's group node has.
func (r Request) membersOn(node string) int {
	if r.Group == nil {
		return 0
	}
	return r.Group.Members[node]
}

// Filter rejects hosts that cannot take a request.
type Filter struct {
	// Name appears in NoValidHost messages, as Nova's filter names do.
	Name string
	// Passes says whether the host can take the request.
	Passes func(h Host, r Request) bool
}

// DefaultFilters are applied in order; the first one a host fails is the one blamed.
var DefaultFilters = []Filter{
	{Name: "ExcludedHostFilter", Passes: func(h Host, r Request) bool {
		for _, x := range r.Exclude {
			if x == h.Name() {
				return false
			}
		}
		return true
	}},
	{Name: "RequestedHostFilter", Passes: func(h Host, r Request) bool {
		return r.Host == "" || r.Host == h.Name()
	}},
	{Name: "QuarantinedDiskFilter", Passes: func(h Host, r Request) bool {
		return r.AdoptDisk == "" || slices.ContainsFunc(h.Hypervisor.Status.Quarantined,
			func(q v1.QuarantinedInstance) bool { return q.UID == r.AdoptDisk })
	}},
	{Name: "ComputeFilter", Passes: func(h Host, _ Request) bool {
		hv := h.Hypervisor
		return hv.Status.State == v1.HypervisorUp && !hv.Spec.Disabled && !hv.Spec.ForcedDown
	}},
	{Name: "StorageFilter", Passes: func(h Host, _ Request) bool {
		// The agent refuses its storage root (not mounted, or another filesystem).
		return h.Hypervisor.Status.StorageUnavailable == ""
	}},
	{Name: "NodeSchedulableFilter", Passes: func(h Host, _ Request) bool {
		return h.Node != nil && !h.Node.Spec.Unschedulable && !outOfService(h.Node)
	}},
	PlacementFilters[0],
	PlacementFilters[1],
	PlacementFilters[2],
	{Name: "ServerGroupAffinityFilter", Passes: func(h Host, r Request) bool {
		// The first member goes anywhere; the others where the members are (Nova's
		// ServerGroupAffinityFilter).
		if r.Group == nil || r.Group.Policy != v1.ServerGroupAffinity || len(r.Group.Members) == 0 {
			return true
		}
		return r.membersOn(h.Name()) > 0
	}},
	{Name: "ServerGroupAntiAffinityFilter", Passes: func(h Host, r Request) bool {
		if r.Group == nil || r.Group.Policy != v1.ServerGroupAntiAffinity {
			return true
		}
		return r.membersOn(h.Name()) < r.Group.MaxPerHost
	}},
	{Name: "VCPUFilter", Passes: func(h Host, r Request) bool {
		return r.Resources.VCPUs <= Free(h).VCPUs
	}},
	{Name: "RAMFilter", Passes: func(h Host, r Request) bool {
		return r.Resources.MemoryMiB <= Free(h).MemoryMiB
	}},
	{Name: "DiskFilter", Passes: func(h Host, r Request) bool {
		return r.Resources.DiskGiB <= Free(h).DiskGiB
	}},
	{Name: "PodsFitFilter", Passes: podsFit},
}

// podsFit says whether the node's allocatable, less what its pods request, holds its guests
// with this one: their memory whole (a pod must never be promised memory a guest holds, whatever
// the memory allocation ratio lets guests share among themselves), their vCPUs at the CPU
// allocation ratio's share. A node that reports no allocatable (no kubelet) is not judged.
func podsFit(h Host, r Request) bool {
	if h.Node == nil {
		return true
	}
	alloc := h.Node.Status.Allocatable
	if mem, ok := alloc[corev1.ResourceMemory]; ok {
		guests := (h.Used.MemoryMiB + h.OverheadMiB + ReservedFor(r.Resources).MemoryMiB) << 20
		if mem.Value()-h.Pods.MemoryBytes < guests {
			return false
		}
	}
	if cpu, ok := alloc[corev1.ResourceCPU]; ok {
		guests := CPUShareMilli(h.Used.VCPUs+r.Resources.VCPUs, CPUAllocationRatio(h.Hypervisor))
		if cpu.MilliValue()-h.Pods.MilliCPU < guests {
			return false
		}
	}
	return true
}

// PlacementFilters are the filters that depend only on the spec's placement constraints; the
// manager re-checks them against a placed instance's node.
var PlacementFilters = []Filter{
	{Name: "AvailabilityZoneFilter", Passes: func(h Host, r Request) bool {
		return r.AvailabilityZone == "" || (h.Node != nil && h.Node.Labels[ZoneLabel] == r.AvailabilityZone)
	}},
	{Name: "NodeSelectorFilter", Passes: func(h Host, r Request) bool {
		for k, v := range r.NodeSelector {
			if h.Node == nil || h.Node.Labels[k] != v {
				return false
			}
		}
		return true
	}},
	{Name: "NetworkFilter", Passes: func(h Host, r Request) bool {
		for _, want := range r.Networks {
			if !HasNetwork(h.Hypervisor, want) {
				return false
			}
		}
		return true
	}},
}

// HasNetwork says whether a node reports the network of that name.
func HasNetwork(hv *v1.Hypervisor, name string) bool {
	for _, n := range hv.Status.Networks {
		if n.Name == name {
			return true
		}
	}
	return false
}

// NetworksOf are the networks an instance's NICs are plugged into, each once.
func NetworksOf(inst *v1.Instance) []string {
	var out []string
	for _, nic := range inst.Spec.Networks {
		if !slices.Contains(out, nic.Network) {
			out = append(out, nic.Network)
		}
	}
	return out
}

func outOfService(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeOutOfService {
			return true
		}
	}
	return false
}

// Capacity is what may be placed on a host: (total - reserved) x allocation ratio, as Placement
// computes an inventory's capacity.
func Capacity(hv *v1.Hypervisor) v1.Resources {
	c, r := hv.Status.Capacity, hv.Status.Reserved
	return v1.Resources{
		VCPUs:     scale(c.VCPUs-r.VCPUs, hv.Spec.CPUAllocationRatio, 16.0),
		MemoryMiB: scale(c.MemoryMiB-r.MemoryMiB, hv.Spec.MemoryAllocationRatio, 1.5),
		DiskGiB:   scale(c.DiskGiB-r.DiskGiB, hv.Spec.DiskAllocationRatio, 1.0),
	}
}

// Free is a host's capacity less what is placed on it.
func Free(h Host) v1.Resources {
	c := Capacity(h.Hypervisor)
	return v1.Resources{
		VCPUs:     c.VCPUs - h.Used.VCPUs,
		MemoryMiB: c.MemoryMiB - h.Used.MemoryMiB,
		DiskGiB:   c.DiskGiB - h.Used.DiskGiB,
	}
}

// scale multiplies by a ratio written as a decimal string; the CRD validates the string, and an
// empty one (an object written before defaulting) takes Nova's default.
func scale(amount int64, ratio string, fallback float64) int64 {
	f, err := strconv.ParseFloat(ratio, 64)
	if err != nil || f <= 0 {
		f = fallback
	}
	if amount < 0 {
		return 0
	}
	return int64(float64(amount) * f)
}

// NoValidHost explains why no host fits, filter by filter, as Nova's NoValidHost does.
type NoValidHost struct {
	Hosts    int
	Rejected map[string]int
	order    []string
}

// Error implements error.
func (e *NoValidHost) Error() string {
	if e.Hosts == 0 {
		return "no valid host: there are no hypervisors"
	}
	parts := make([]string, 0, len(e.order))
	for _, name := range e.order {
		parts = append(parts, fmt.Sprintf("%s rejected %d", name, e.Rejected[name]))
	}
	return fmt.Sprintf("no valid host among %d: %s", e.Hosts, strings.Join(parts, ", "))
}

// Blamed names the filters that rejected a host, in the order they first did; "NoHosts" when
// there was no host to filter.
func (e *NoValidHost) Blamed() []string {
	if e.Hosts == 0 {
		return []string{"NoHosts"}
	}
	return append([]string(nil), e.order...)
}

// Select runs the filters and the RAM-spread weigher and returns the chosen host's name.
func Select(hosts []Host, r Request, filters []Filter) (string, error) {
	nvh := &NoValidHost{Hosts: len(hosts), Rejected: map[string]int{}}
	var passed []Host
	for _, h := range hosts {
		ok := true
		for _, f := range filters {
			if !f.Passes(h, r) {
				if nvh.Rejected[f.Name] == 0 {
					nvh.order = append(nvh.order, f.Name)
				}
				nvh.Rejected[f.Name]++
				ok = false
				break
			}
		}
		if ok {
			passed = append(passed, h)
		}
	}
	if len(passed) == 0 {
		return "", nvh
	}
	// A soft server group policy weighs first (Nova's ServerGroupSoft(Anti)AffinityWeigher,
	// whose multiplier outweighs the others): the most members for soft-affinity, the fewest for
	// soft-anti-affinity. Then the RAMWeigher with a positive multiplier: spread, the host with
	// the most free memory wins. Ties go to the name so that the same inputs always give the same
	// answer. One pass, each host's free memory computed once: a decision runs this over every
	// host.
	groupWeight := func(Host) int { return 0 }
	if g := r.Group; g != nil {
		switch g.Policy {
		case v1.ServerGroupSoftAffinity:
			groupWeight = func(h Host) int { return g.Members[h.Name()] }
		case v1.ServerGroupSoftAntiAffinity:
			groupWeight = func(h Host) int { return -g.Members[h.Name()] }
		}
	}
	best, bestGroup, bestFree := 0, groupWeight(passed[0]), Free(passed[0]).MemoryMiB
	for i := 1; i < len(passed); i++ {
		group, free := groupWeight(passed[i]), Free(passed[i]).MemoryMiB
		if group > bestGroup || (group == bestGroup && (free > bestFree ||
			(free == bestFree && passed[i].Name() < passed[best].Name()))) {
			best, bestGroup, bestFree = i, group, free
		}
	}
	return passed[best].Name(), nil
}
