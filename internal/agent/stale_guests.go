package agent

import (
	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// A guest of an instance that lives on another node is stale here, but destroying a running
// one is irreversible: libvirt can end a live migration with an error while the guest runs on
// both sides, or only on the target, and nothing on this node tells which. So a running (or
// paused) guest is destroyed only with a record that the instance's guest is elsewhere; one
// without it is kept, and said, for a person to decide. (Nova likewise never reaps a live
// instance's domain because its database names another host.)

// ReasonStaleGuestKept is the reason of the Event about a guest kept that way.
const ReasonStaleGuestKept = "StaleGuestKept"

// staleGuestAction is what becomes of a guest of an instance recorded on another node.
type staleGuestAction int

const (
	// destroyStaleGuest: nothing runs in it, or a record says the guest runs elsewhere.
	destroyStaleGuest staleGuestAction = iota
	// keepStaleGuest: it may be the guest's only running copy; a person decides.
	keepStaleGuest
	// pauseStaleGuest: the instance is in Error because its guest ran on two nodes after a
	// failed live migration (the manager's verdict, ReasonGuestOnTwoNodes): this copy, the
	// one not recorded, stops writing to its disk but keeps its memory, for a person to
	// look at before the instance is repaired on its recorded node.
	pauseStaleGuest
)

// staleGuestActionFor says what becomes of a guest of inst, which lives on another node, here,
// where its domain is power. A guest that does not run is destroyed; one that runs is kept
// (paused once the manager found the guest on two nodes) unless a move from this node
// succeeded (or an evacuation from it is under way: the node was fenced), or the agent of
// the instance's node reports its guest running there.
func staleGuestActionFor(inst *v1.Instance, me string, power v1.PowerState) staleGuestAction {
	if power != v1.PowerStateRunning && power != v1.PowerStatePaused {
		return destroyStaleGuest
	}
	if f := inst.Status.Fault; inst.Status.VMState == v1.VMStateError && f != nil && f.Reason == v1.ReasonGuestOnTwoNodes {
		if power == v1.PowerStateRunning {
			return pauseStaleGuest
		}
		return keepStaleGuest
	}
	if mr := inst.Status.MigrationRequest; mr != nil && mr.SourceNode == me &&
		(mr.Result == v1.RequestSucceeded || mr.Result == v1.RequestAccepted) {
		return destroyStaleGuest
	}
	if rep := inst.Status.AgentReport; rep != nil && rep.NodeName == inst.Status.NodeName && inst.Status.PowerState == v1.PowerStateRunning {
		return destroyStaleGuest
	}
	return keepStaleGuest
}
