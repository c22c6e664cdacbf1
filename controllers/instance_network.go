package controllers

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/lifecycle"
	"github.com/kubenova/kubenova/internal/scheduler"
)

// macPrefix is the first half of the MACs kubenova assigns: Neutron's default base_mac, which
// OpenStack operators recognise.
var macPrefix = [3]byte{0xfa, 0x16, 0x3e}

// assignNetworks fixes the MACs of a new instance's NICs in status.networks, once and before it
// is placed: an explicit one from spec, or a new one no other instance has. The agent builds
// every domain of the instance, wherever and whenever, from these, so the guest keeps its MACs
// (and with them its DHCP addresses) through every operation. spec.networks cannot change.
func (r *InstanceReconciler) assignNetworks(ctx context.Context, inst *v1.Instance, st *reconcileState) (*ctrl.Result, error) {
	// Only before placement: a placed instance's domain has its MACs already.
	if len(inst.Spec.Networks) == 0 || len(inst.Status.Networks) > 0 || inst.Status.NodeName != "" ||
		inst.Status.VMState != v1.VMStateBuilding {
		return nil, nil
	}
	used, err := r.macsInUse(ctx, inst)
	if err != nil {
		return nil, err
	}
	var nics []v1.NICStatus
	for i, nic := range inst.Spec.Networks {
		mac := strings.ToLower(nic.MACAddress)
		if mac == "" {
			if mac, err = newMAC(used); err != nil {
				return nil, err
			}
		} else if owner, taken := used[mac]; taken {
			// It waits: the MAC is free again once its owner is deleted.
			st.waiting = &lifecycle.Refusal{Action: v1.ActionLaunch, Reason: v1.ReasonMACInUse,
				Message: fmt.Sprintf("spec.networks[%d].macAddress %s is the MAC of instance %s; delete this instance and create it with another MAC (or none: kubenova assigns one), or delete %s", i, mac, owner, owner)}
			return &ctrl.Result{RequeueAfter: r.backoff(inst.UID)}, nil
		}
		used[mac] = inst.Namespace + "/" + inst.Name
		nics = append(nics, v1.NICStatus{Network: nic.Network, MACAddress: mac})
	}
	inst.Status.Networks = nics
	return nil, nil
}

// macsInUse are the MACs of every other instance, by owner: those assigned, and those asked for
// by instances older than self, so that of two instances that ask for one MAC the younger
// waits, never both.
func (r *InstanceReconciler) macsInUse(ctx context.Context, self *v1.Instance) (map[string]string, error) {
	var list v1.InstanceList
	if err := r.List(ctx, &list); err != nil {
		return nil, err
	}
	used := map[string]string{}
	for i := range list.Items {
		other := &list.Items[i]
		if other.UID == self.UID {
			continue
		}
		for _, nic := range other.Status.Networks {
			used[strings.ToLower(nic.MACAddress)] = other.Namespace + "/" + other.Name
		}
		if len(other.Status.Networks) > 0 || !olderThan(other, self) {
			continue
		}
		for _, nic := range other.Spec.Networks {
			if nic.MACAddress != "" {
				used[strings.ToLower(nic.MACAddress)] = other.Namespace + "/" + other.Name
			}
		}
	}
	return used, nil
}

// olderThan orders instances by creation, then by UID.
func olderThan(a, b *v1.Instance) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.UID < b.UID
}

// newMAC draws a MAC under macPrefix that used does not hold.
func newMAC(used map[string]string) (string, error) {
	for range 64 {
		var tail [3]byte
		if _, err := rand.Read(tail[:]); err != nil {
			return "", err
		}
		mac := fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", macPrefix[0], macPrefix[1], macPrefix[2], tail[0], tail[1], tail[2])
		if _, taken := used[mac]; !taken {
			return mac, nil
		}
	}
	return "", fmt.Errorf("no free MAC address under %02x:%02x:%02x after 64 draws", macPrefix[0], macPrefix[1], macPrefix[2])
}

// networksMissing says which of the instance's networks no node reports, or nil when every one
// is somewhere: a NIC on a network that exists nowhere waits as NetworkNotFound rather than as
// a NoValidHost that blames every node.
func (r *InstanceReconciler) networksMissing(ctx context.Context, inst *v1.Instance) (*lifecycle.Refusal, error) {
	want := scheduler.NetworksOf(inst)
	if len(want) == 0 {
		return nil, nil
	}
	var hvs v1.HypervisorList
	if err := r.List(ctx, &hvs); err != nil {
		return nil, err
	}
	var missing []string
	for _, name := range want {
		if !slices.ContainsFunc(hvs.Items, func(hv v1.Hypervisor) bool { return scheduler.HasNetwork(&hv, name) }) {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	return &lifecycle.Refusal{Reason: v1.ReasonNetworkNotFound,
		Message: fmt.Sprintf("no node has network %s: no Hypervisor reports it in status.networks (the agents' --networks); "+
			"fix spec.networks or give nodes that network", strings.Join(missing, ", "))}, nil
}

// syncAddresses copies the addresses that the agent of the instance's node sees on its NICs
// into status.networks, and sums them up in status.addresses as `nova list` does. Addresses a
// NIC had stay until the agent sees others: a stopped guest keeps its lease.
func (r *InstanceReconciler) syncAddresses(_ context.Context, inst *v1.Instance, _ *reconcileState) (*ctrl.Result, error) {
	if len(inst.Status.Networks) == 0 {
		return nil, nil
	}
	if report := inst.Status.AgentReport; report != nil && report.NodeName == inst.Status.NodeName {
		for i := range inst.Status.Networks {
			nic := &inst.Status.Networks[i]
			j := slices.IndexFunc(report.Interfaces, func(o v1.ObservedInterface) bool { return strings.EqualFold(o.MACAddress, nic.MACAddress) })
			if j >= 0 && len(report.Interfaces[j].IPAddresses) > 0 {
				nic.IPAddresses = sortAddresses(report.Interfaces[j].IPAddresses)
			}
		}
	}
	var parts []string
	for _, nic := range inst.Status.Networks {
		if len(nic.IPAddresses) > 0 {
			parts = append(parts, nic.Network+"="+strings.Join(nic.IPAddresses, ","))
		}
	}
	inst.Status.Addresses = strings.Join(parts, ";")
	return nil, nil
}

// sortAddresses orders addresses IPv4 first, then by value, so that status does not change
// with the order the node lists them in.
func sortAddresses(in []string) []string {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b string) int {
		pa, ea := netip.ParseAddr(a)
		pb, eb := netip.ParseAddr(b)
		if ea != nil || eb != nil {
			return strings.Compare(a, b)
		}
		if pa.Is4() != pb.Is4() {
			if pa.Is4() {
				return -1
			}
			return 1
		}
		return pa.Compare(pb)
	})
	return out
}
