package controllers

import (
	"context"
	"fmt"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
)

// Adoption: a launch that boots the disk a node kept in quarantine for an earlier instance of
// the same namespace and name (spec.adoptQuarantinedDisk), as after a restore from Git or a
// backup that gave the Instance a new UID. The manager chooses the disk from the Hypervisors'
// reports and the scheduler places the instance only where that disk is; the agent then takes
// the disk out of the quarantine instead of making a new one (internal/agent, instance_spawn.go).

// quarantineRetry is how often an instance waiting for its quarantined disk looks again: the
// agents sweep at start and every few minutes, then report.
const quarantineRetry = 10 * time.Second

// adoptionWait is how long an instance waits for its quarantined disk before it says it is
// stuck (Stalled): three of the agents' sweeps.
const adoptionWait = 15 * time.Minute

// chooseAdoptedDisk records in status.adoptedDisk which quarantined disk the launch boots, or
// says why the instance waits (false). It is a no-op for an instance that adopts nothing, and
// forgets a choice the spec no longer asks for.
func (r *InstanceReconciler) chooseAdoptedDisk(ctx context.Context, inst *v1.Instance, st *reconcileState) (bool, error) {
	if !inst.Spec.AdoptQuarantinedDisk {
		inst.Status.AdoptedDisk = nil
		return true, nil
	}
	if inst.Status.AdoptedDisk != nil {
		return true, nil
	}
	var hvs v1.HypervisorList
	if err := r.List(ctx, &hvs); err != nil {
		return false, err
	}
	found := newestQuarantined(hvs.Items, inst.Namespace, inst.Name)
	if found == nil {
		msg := fmt.Sprintf("spec.adoptQuarantinedDisk: no node keeps a quarantined disk of instance %s/%s", inst.Namespace, inst.Name)
		if r.now().Sub(inst.CreationTimestamp.Time) < adoptionWait {
			st.waiting = &lifecycle.Refusal{Reason: v1.ReasonQuarantinedDiskNotFound,
				Message: msg + " (yet: agents look at start and every few minutes); remove the field to boot from the image instead"}
			return false, nil
		}
		// Past the agents' sweeps, a person must decide; a disk reported later is still taken.
		st.refusal = &lifecycle.Refusal{Reason: v1.ReasonQuarantinedDiskNotFound,
			Message: msg + fmt.Sprintf(" after %s of looking; remove the field to boot from the image instead", adoptionWait)}
		return false, nil
	}
	inst.Status.AdoptedDisk = found
	return true, nil
}

// newestQuarantined is the most recently quarantined disk of the instance namespace/name that
// any node reports, or nil.
func newestQuarantined(hvs []v1.Hypervisor, namespace, name string) *v1.AdoptedDisk {
	var found *v1.AdoptedDisk
	for i := range hvs {
		for _, q := range hvs[i].Status.Quarantined {
			if q.Namespace != namespace || q.Name != name {
				continue
			}
			if found == nil || found.QuarantinedSince.Before(&q.Since) ||
				(found.QuarantinedSince.Equal(&q.Since) && q.UID > found.UID) {
				found = &v1.AdoptedDisk{UID: q.UID, QuarantinedSince: q.Since}
			}
		}
	}
	return found
}
