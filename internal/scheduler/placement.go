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
type Placement struct {
	mu      sync.Mutex
	pending map[types.UID]claim
}

// NewPlacement returns an empty Placement.
func NewPlacement() *Placement {
	return &Placement{pending: map[types.UID]claim{}}
}

// Lock serialises the read-decide-claim sequence of one scheduling decision.
func (p *Placement) Lock() { p.mu.Lock() }

// Unlock ends a scheduling decision.
func (p *Placement) Unlock() { p.mu.Unlock() }

// Assume records a claim made but not yet visible in instances. Call with the lock held.
func (p *Placement) Assume(uid types.UID, node string, r v1.Resources) {
	p.pending[uid] = claim{node: node, resources: r}
}

// Release drops a claim, for an instance that failed to bind or is gone. It takes the lock.
func (p *Placement) Release(uid types.UID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.pending, uid)
}

// Usage sums the allocations per node from instances, plus the pending claims of instances
// that do not show their node yet. Claims that the instances already show are dropped, and so
// are claims of instances that are gone (an instance is always in the cache before it is
// scheduled). Call with the lock held.
func (p *Placement) Usage(instances []v1.Instance) map[string]v1.Resources {
	used := map[string]v1.Resources{}
	seen := map[types.UID]bool{}
	for i := range instances {
		inst := &instances[i]
		seen[inst.UID] = true
		if c, ok := p.pending[inst.UID]; ok && inst.Status.NodeName == c.node && inst.Status.Flavor != nil {
			delete(p.pending, inst.UID)
		}
		if Holds(inst) {
			used[inst.Status.NodeName] = Add(used[inst.Status.NodeName], FlavorResources(inst.Status.Flavor.FlavorSpec))
		}
	}
	for uid, c := range p.pending {
		if !seen[uid] {
			delete(p.pending, uid)
			continue
		}
		used[c.node] = Add(used[c.node], c.resources)
	}
	return used
}
