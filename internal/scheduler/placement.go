package scheduler

import (
	"sync"

	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

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

// Sub takes b from a.
func Sub(a, b v1.Resources) v1.Resources {
	return v1.Resources{VCPUs: a.VCPUs - b.VCPUs, MemoryMiB: a.MemoryMiB - b.MemoryMiB, DiskGiB: a.DiskGiB - b.DiskGiB}
}

// Holds says whether an instance's flavor counts against its node: everything placed on a node
// does, except a shelved-offloaded instance, which Nova frees from its node, until an unshelve
// places it anew.
func Holds(inst *v1.Instance) bool {
	st := &inst.Status
	unshelving := st.Task != nil && st.Task.Action == v1.ActionUnshelve
	return st.NodeName != "" && st.Flavor != nil && st.VMState != v1.VMStateDeleted &&
		(st.VMState != v1.VMStateShelvedOffloaded || unshelving)
}

// Claim is what an instance holds on one node.
type Claim struct {
	Node      string
	Resources v1.Resources
}

// Claims lists what an instance holds, node by node: its flavor on its node (Holds), and on the
// target of a migration in flight too, as Nova's placement holds a migration's allocation on
// both hosts until the move is over. A resize holds the new flavor on its target and the old
// one on its source until it is confirmed or reverted (both on one node resized in place).
func Claims(inst *v1.Instance) []Claim {
	if !Holds(inst) {
		return nil
	}
	res := FlavorResources(inst.Status.Flavor.FlavorSpec)
	claims := []Claim{{Node: inst.Status.NodeName, Resources: res}}
	if target := MigrationTarget(inst); target != "" && target != inst.Status.NodeName {
		claims = append(claims, Claim{Node: target, Resources: res})
	}
	if other, ok := ResizeOther(inst); ok {
		claims = append(claims, other)
	}
	return claims
}

// ResizeOther is what a resize holds besides the instance's node and flavor: the new flavor on
// the target while the instance is still on its source, the old flavor on the source once it
// runs on the target. On one node, it is the flavor the instance does not have now.
func ResizeOther(inst *v1.Instance) (Claim, bool) {
	rs := inst.Status.Resize
	if rs == nil || inst.Status.Flavor == nil {
		return Claim{}, false
	}
	oldRes, newRes := FlavorResources(rs.OldFlavor.FlavorSpec), FlavorResources(rs.Flavor.FlavorSpec)
	switch node := inst.Status.NodeName; {
	case rs.SourceNode == rs.TargetNode:
		if inst.Status.Flavor.Name == rs.Flavor.Name && FlavorResources(inst.Status.Flavor.FlavorSpec) == newRes {
			return Claim{Node: node, Resources: oldRes}, true
		}
		return Claim{Node: node, Resources: newRes}, true
	case node == rs.SourceNode:
		return Claim{Node: rs.TargetNode, Resources: newRes}, true
	case node == rs.TargetNode:
		return Claim{Node: rs.SourceNode, Resources: oldRes}, true
	}
	return Claim{}, false
}

// MigrationTarget is the node a migration in flight moves the instance to; "" when none.
func MigrationTarget(inst *v1.Instance) string {
	if t := inst.Status.Task; t != nil && t.Migration != nil {
		return t.Migration.TargetNode
	}
	return ""
}

// Involves says whether an instance concerns a node other than its own: the target of a move
// in flight, the peer of its task, or the source that keeps its disk until a resize is
// confirmed or reverted. That node must neither destroy its files nor forget its claim.
func Involves(inst *v1.Instance, node string) bool {
	if node == "" {
		return false
	}
	if MigrationTarget(inst) == node {
		return true
	}
	if t := inst.Status.Task; t != nil && t.PeerNode == node {
		return true
	}
	rs := inst.Status.Resize
	return rs != nil && (rs.SourceNode == node || rs.TargetNode == node)
}

type claim struct {
	node      string
	resources v1.Resources
	// key is the reservation pod that carries the claim (ReservationKey).
	key ReservationKey
	// owner is the instance, for waking it when its reservation is admitted.
	owner types.NamespacedName
	// group is the instance's server group (GroupKey), if any.
	group string
	// decidedOn is the resourceVersion of the instance the decision was made from.
	decidedOn string
}

// claims are what one instance holds: one claim per node.
type claims []claim

// Placement is the one place that knows what is allocated on each node. It keeps a running sum
// per node, fed by the manager's Instance informer (Observe, Forget), so that a decision costs
// in proportion to the nodes, not to the instances; and it adds the claims the scheduler has
// made but the informer does not show yet (kube-scheduler's "assumed pods"), so that many
// launches at once never overcommit a node however far the informer lags.
//
// Decisions run at once: each reconcile chooses a host from a snapshot (Usage) without a lock,
// the filters and the weigher over every host being the costly part; then Reserve commits the
// choice under the lock after checking again that the host still fits, given every claim made
// meanwhile. A choice that no longer fits is decided again.
type Placement struct {
	mu sync.Mutex
	// observed is each instance the informer shows holding resources, and where.
	observed map[types.UID]claims
	// used sums observed per node.
	used map[string]v1.Resources
	// groups counts observed members per server group and node.
	groups map[string]map[string]int
	// overheadMiB sums per node the memory overhead of the guests observed there.
	overheadMiB map[string]int64
	// reserved sums observed claims per reservation pod.
	reserved map[ReservationKey]Reserved
	// pending are decisions the informer does not show yet.
	pending map[types.UID]claim
	synced  func() bool
	// onChange, when set, hears of every reservation whose sum may have changed; it is called
	// without the lock held.
	onChange func(keys []ReservationKey)
}

// NewPlacement returns an empty Placement.
func NewPlacement() *Placement {
	return &Placement{observed: map[types.UID]claims{}, used: map[string]v1.Resources{}, groups: map[string]map[string]int{},
		overheadMiB: map[string]int64{}, reserved: map[ReservationKey]Reserved{}, pending: map[types.UID]claim{}}
}

// OnReservationChange sets what hears of reservations whose sums may have changed (the
// ReservationReconciler's queue).
func (p *Placement) OnReservationChange(f func(keys []ReservationKey)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.onChange = f
}

// tell passes keys to onChange; call without the lock.
func (p *Placement) tell(f func([]ReservationKey), keys []ReservationKey) {
	if f != nil && len(keys) > 0 {
		f(keys)
	}
}

// Observe records what the informer shows of an instance now. A pending claim that the
// instance shows is retired: from now on the instance itself counts.
func (p *Placement) Observe(inst *v1.Instance) {
	p.mu.Lock()
	before := p.observed[inst.UID]
	p.unobserve(inst.UID)
	var held claims
	group := GroupKey(inst)
	owner := types.NamespacedName{Namespace: inst.Namespace, Name: inst.Name}
	for i, c := range Claims(inst) {
		// The first claim is the instance's own node; the others are the far ends of moves.
		key := ReservationKey{Namespace: inst.Namespace, Node: c.Node}
		if i > 0 {
			key = ReservationKey{Node: c.Node, Moves: true}
		}
		held = append(held, claim{node: c.Node, resources: c.Resources, group: group, key: key, owner: owner})
		p.used[c.Node] = Add(p.used[c.Node], c.Resources)
		p.overheadMiB[c.Node] += MemoryOverheadMiB(c.Resources)
		p.reserved[key] = p.reserved[key].plus(ReservedFor(c.Resources))
		if group != "" {
			if p.groups[group] == nil {
				p.groups[group] = map[string]int{}
			}
			p.groups[group][c.Node]++
		}
	}
	if len(held) > 0 {
		p.observed[inst.UID] = held
	}
	// A version other than the one the decision was made from shows the decision's write: any
	// other write to the instance in between makes that one fail (it is made over the version
	// it read), and its claim is released then. (Without this, an instance resized on its own
	// node would retire its claim with the first event of its old version.)
	var changed []ReservationKey
	if c, ok := p.pending[inst.UID]; ok && inst.Status.Flavor != nil && inst.ResourceVersion != c.decidedOn &&
		(inst.Status.NodeName == c.node || Involves(inst, c.node)) {
		delete(p.pending, inst.UID)
		changed = append(changed, c.key)
	}
	if !sameClaims(before, held) {
		for _, c := range append(before, held...) {
			changed = append(changed, c.key)
		}
	}
	f := p.onChange
	p.mu.Unlock()
	p.tell(f, changed)
}

// sameClaims says whether two lists of claims hold the same amounts on the same reservations.
func sameClaims(a, b claims) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].key != b[i].key || a[i].resources != b[i].resources {
			return false
		}
	}
	return true
}

// Forget drops an instance that is gone, with any claim it held.
func (p *Placement) Forget(uid types.UID) {
	p.mu.Lock()
	changed := p.keysOf(uid)
	p.unobserve(uid)
	delete(p.pending, uid)
	f := p.onChange
	p.mu.Unlock()
	p.tell(f, changed)
}

// keysOf lists the reservations an instance's claims, observed and pending, count in. Call with
// p.mu held.
func (p *Placement) keysOf(uid types.UID) []ReservationKey {
	var keys []ReservationKey
	for _, c := range p.observed[uid] {
		keys = append(keys, c.key)
	}
	if c, ok := p.pending[uid]; ok {
		keys = append(keys, c.key)
	}
	return keys
}

// unobserve takes an instance's observed allocation out of the sums. Call with p.mu held.
func (p *Placement) unobserve(uid types.UID) {
	held, ok := p.observed[uid]
	if !ok {
		return
	}
	delete(p.observed, uid)
	for _, c := range held {
		if c.group != "" {
			if p.groups[c.group][c.node]--; p.groups[c.group][c.node] <= 0 {
				delete(p.groups[c.group], c.node)
			}
			if len(p.groups[c.group]) == 0 {
				delete(p.groups, c.group)
			}
		}
		if p.overheadMiB[c.node] -= MemoryOverheadMiB(c.resources); p.overheadMiB[c.node] <= 0 {
			delete(p.overheadMiB, c.node)
		}
		if r := p.reserved[c.key].minus(ReservedFor(c.resources)); r == (Reserved{}) {
			delete(p.reserved, c.key)
		} else {
			p.reserved[c.key] = r
		}
		left := Sub(p.used[c.node], c.resources)
		if left == (v1.Resources{}) {
			delete(p.used, c.node)
			continue
		}
		p.used[c.node] = left
	}
}

// EventHandler feeds Observe and Forget from an Instance informer.
func (p *Placement) EventHandler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if inst, ok := obj.(*v1.Instance); ok {
				p.Observe(inst)
			}
		},
		UpdateFunc: func(_, obj any) {
			if inst, ok := obj.(*v1.Instance); ok {
				p.Observe(inst)
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if inst, ok := obj.(*v1.Instance); ok {
				p.Forget(inst.UID)
			}
		},
	}
}

// SetSynced tells Placement how to know that its informer has delivered every instance that
// existed when it started; until then no decision may be made.
func (p *Placement) SetSynced(synced func() bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.synced = synced
}

// Synced says whether Placement knows every instance (always, when no informer feeds it).
func (p *Placement) Synced() bool {
	p.mu.Lock()
	synced := p.synced
	p.mu.Unlock()
	return synced == nil || synced()
}

// Usage is the allocation per node: what the informer shows plus the claims it does not show
// yet, leaving out the claim of self (the instance being decided for: a claim it holds from a
// decision whose write failed must not count against its new decision). It is the snapshot a
// decision starts from; Reserve checks the decision again.
func (p *Placement) Usage(self types.UID) map[string]v1.Resources {
	p.mu.Lock()
	defer p.mu.Unlock()
	used := make(map[string]v1.Resources, len(p.used))
	for node, r := range p.used {
		used[node] = r
	}
	for uid, c := range p.pending {
		if uid != self {
			used[c.node] = Add(used[c.node], c.resources)
		}
	}
	return used
}

// OverheadUsage is, per node, the memory overhead of the guests Usage counts (self left out).
func (p *Placement) OverheadUsage(self types.UID) map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	overhead := make(map[string]int64, len(p.overheadMiB))
	for node, o := range p.overheadMiB {
		overhead[node] = o
	}
	for uid, c := range p.pending {
		if uid != self {
			overhead[c.node] += MemoryOverheadMiB(c.resources)
		}
	}
	return overhead
}

// Reserve claims h for uid if h still passes every filter for r, given every allocation and
// claim known now; false means another decision took the room and the caller should decide
// again. decidedOn is the resourceVersion of the instance the decision was made from.
func (p *Placement) Reserve(uid types.UID, decidedOn string, h Host, r Request) bool {
	p.mu.Lock()
	h.Used, h.OverheadMiB = p.used[h.Name()], p.overheadMiB[h.Name()]
	for other, c := range p.pending {
		if other != uid && c.node == h.Name() {
			h.Used = Add(h.Used, c.resources)
			h.OverheadMiB += MemoryOverheadMiB(c.resources)
		}
	}
	if r.Group != nil {
		g := *r.Group
		g.Members = p.groupMembers(uid, g.Key)
		r.Group = &g
	}
	if _, err := Select([]Host{h}, r, DefaultFilters); err != nil {
		p.mu.Unlock()
		return false
	}
	key := ReservationKey{Namespace: r.Owner.Namespace, Node: h.Name()}
	if r.Move {
		key = ReservationKey{Node: h.Name(), Moves: true}
	}
	c := claim{node: h.Name(), resources: r.Resources, decidedOn: decidedOn, key: key, owner: r.Owner}
	if r.Group != nil {
		c.group = r.Group.Key
	}
	changed := []ReservationKey{key}
	if old, ok := p.pending[uid]; ok && old.key != key {
		changed = append(changed, old.key)
	}
	p.pending[uid] = c
	f := p.onChange
	p.mu.Unlock()
	p.tell(f, changed)
	return true
}

// PendingNode is the node of uid's claim that the informer does not show yet, "" when none: a
// launch that waits for its reservation keeps the node it was given.
func (p *Placement) PendingNode(uid types.UID) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pending[uid].node
}

// Reservation is what a reservation pod must carry: the claims the informer shows and those it
// does not show yet.
func (p *Placement) Reservation(key ReservationKey) Reserved {
	p.mu.Lock()
	defer p.mu.Unlock()
	sum := p.reserved[key]
	for _, c := range p.pending {
		if c.key == key {
			sum = sum.plus(ReservedFor(c.resources))
		}
	}
	return sum
}

// HomeReservations is, node by node, what namespace's instances hold (Reservation of each of its
// home keys).
func (p *Placement) HomeReservations(namespace string) map[string]Reserved {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]Reserved{}
	for key, r := range p.reserved {
		if !key.Moves && key.Namespace == namespace {
			out[key.Node] = out[key.Node].plus(r)
		}
	}
	for _, c := range p.pending {
		if !c.key.Moves && c.key.Namespace == namespace {
			out[c.key.Node] = out[c.key.Node].plus(ReservedFor(c.resources))
		}
	}
	return out
}

// WaitingOn lists the instances whose pending claims count in a reservation: those a change of
// its pod may let go on.
func (p *Placement) WaitingOn(key ReservationKey) []types.NamespacedName {
	p.mu.Lock()
	defer p.mu.Unlock()
	var owners []types.NamespacedName
	for _, c := range p.pending {
		if c.key == key && c.owner.Name != "" {
			owners = append(owners, c.owner)
		}
	}
	return owners
}

// GroupMembers counts, node by node, the members of server group key other than self: what the
// informer shows and the claims it does not show yet. It is the snapshot a decision starts from;
// Reserve counts again.
func (p *Placement) GroupMembers(self types.UID, key string) map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.groupMembers(self, key)
}

// groupMembers is GroupMembers with p.mu held.
func (p *Placement) groupMembers(self types.UID, key string) map[string]int {
	members := make(map[string]int, len(p.groups[key]))
	for node, n := range p.groups[key] {
		members[node] = n
	}
	for _, c := range p.observed[self] {
		if c.group == key {
			if members[c.node]--; members[c.node] <= 0 {
				delete(members, c.node)
			}
		}
	}
	for uid, c := range p.pending {
		if uid != self && c.group == key {
			members[c.node]++
		}
	}
	return members
}

// GroupKey names an instance's server group (namespace/name), or "" when it has none.
func GroupKey(inst *v1.Instance) string {
	if inst.Spec.ServerGroup == "" {
		return ""
	}
	return inst.Namespace + "/" + inst.Spec.ServerGroup
}

// Release drops a claim, for an instance whose placement was not written.
func (p *Placement) Release(uid types.UID) {
	p.mu.Lock()
	var changed []ReservationKey
	if c, ok := p.pending[uid]; ok {
		changed = append(changed, c.key)
	}
	delete(p.pending, uid)
	f := p.onChange
	p.mu.Unlock()
	p.tell(f, changed)
}
