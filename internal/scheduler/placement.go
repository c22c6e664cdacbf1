package scheduler

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// FlavorResources is what a flavor claims on a host.
func FlavorResources(f v1.FlavorSpec) v1.Resources {
	return v1.Resources{VCPUs: int64(f.VCPUs), MemoryMiB: int64(f.MemoryMiB), DiskGiB: int64(f.DiskGiB)}
}

// Add sums two amounts.
func Add(a, b v1.Resources) v1.Resources {
	return v1.Resources{VCPUs: a.VCPUs + b.VCPUs, MemoryMiB: a.MemoryMiB + b.MemoryMiB, DiskGiB: a.DiskGiB + b.DiskGiB}
}

// Holds says whether an instance's flavor counts against its node: everything placed on a node
// does, except shelved-offloaded instances, which Nova frees from the node.
func Holds(inst *v1.Instance) bool {
	return inst.Status.NodeName != "" && inst.Status.Flavor != nil &&
		inst.Status.VMState != v1.VMStateShelvedOffloaded && inst.Status.VMState != v1.VMStateDeleted
}

type claim struct {
	node      string
	resources v1.Resources
}

// Placement is the one place that computes what is allocated on each node. It adds the claims
// the scheduler has made but the informer cache does not show yet (kube-scheduler's "assumed
// pods"), so that many launches at once never overcommit a node however stale the cache is.
//
// Decisions run at once: each reconcile chooses a host from a snapshot, without a lock (the
// filters and the weigher over every host, the costly part), then Reserve commits the choice
// under the lock, after checking again, against the cache and every claim made meanwhile, that
// the host still fits. A choice that no longer fits is decided again.
type Placement struct {
	mu      sync.Mutex
	pending map[types.UID]claim
}

// NewPlacement returns an empty Placement.
func NewPlacement() *Placement {
	return &Placement{pending: map[types.UID]claim{}}
}

// Usage sums the allocations per node from instances, plus the claims not visible in them yet,
// leaving out the claim of self (the instance being decided for: a claim it holds from a
// decision whose write failed must not count against its new decision). It is the snapshot a
// decision starts from; Reserve checks the decision again. It retires nothing: instances may be
// an older list than the one Reserve last read.
func (p *Placement) Usage(instances []v1.Instance, self types.UID) map[string]v1.Resources {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.usage(instances, self, false)
}

// Reserve claims h for uid if h still passes every filter for r, given the instances that list
// returns now and every claim made so far; false means another decision took the room and the
// caller should decide again. The list is read under the lock, so it is at least as new as any
// list that retired a claim, and claims shown by it are retired here.
func (p *Placement) Reserve(uid types.UID, h Host, r Request, list func() ([]v1.Instance, error)) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	instances, err := list()
	if err != nil {
		return false, err
	}
	h.Used = p.usage(instances, uid, true)[h.Name()]
	if _, err := Select([]Host{h}, r, DefaultFilters); err != nil {
		return false, nil
	}
	p.pending[uid] = claim{node: h.Name(), resources: r.Resources}
	return true, nil
}

// Release drops a claim, for an instance that failed to bind or is gone.
func (p *Placement) Release(uid types.UID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, uid)
}

// usage sums the allocations per node from instances, plus the pending claims (but self's) of
// instances that do not show their node yet. With retire, claims that the instances already
// show are dropped, and so are claims of instances that are gone (an instance is always in the
// cache before it is scheduled); only a list read under the lock may retire. Call with the lock
// held.
func (p *Placement) usage(instances []v1.Instance, self types.UID, retire bool) map[string]v1.Resources {
	used := map[string]v1.Resources{}
	seen := make(map[types.UID]bool, len(instances))
	shown := map[types.UID]bool{}
	for i := range instances {
		inst := &instances[i]
		seen[inst.UID] = true
		if c, ok := p.pending[inst.UID]; ok && inst.Status.NodeName == c.node && inst.Status.Flavor != nil {
			shown[inst.UID] = true
		}
		if Holds(inst) {
			used[inst.Status.NodeName] = Add(used[inst.Status.NodeName], FlavorResources(inst.Status.Flavor.FlavorSpec))
		}
	}
	for uid, c := range p.pending {
		if retire && (shown[uid] || !seen[uid]) {
			delete(p.pending, uid)
			continue
		}
		if shown[uid] || uid == self {
			continue
		}
		used[c.node] = Add(used[c.node], c.resources)
	}
	return used
}
