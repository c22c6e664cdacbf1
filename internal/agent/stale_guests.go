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

// mayDestroyStaleGuest says whether a guest of inst, which lives on another node, may be
// destroyed here, where its domain is power: always when nothing runs in it; when it runs,
// only if a move from this node succeeded (or an evacuation from it is under way: the node
// was fenced), or the agent of the instance's node reports its guest running there.
func mayDestroyStaleGuest(inst *v1.Instance, me string, power v1.PowerState) bool {
	if power != v1.PowerStateRunning && power != v1.PowerStatePaused {
		return true
	}
	if mr := inst.Status.MigrationRequest; mr != nil && mr.SourceNode == me &&
		(mr.Result == v1.RequestSucceeded || mr.Result == v1.RequestAccepted) {
		return true
	}
	rep := inst.Status.AgentReport
	return rep != nil && rep.NodeName == inst.Status.NodeName && inst.Status.PowerState == v1.PowerStateRunning
}
