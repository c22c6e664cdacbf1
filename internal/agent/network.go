package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// ParseNetworks reads the agent's --networks: comma-separated NAME=bridge:BRIDGE or
// NAME=network:LIBVIRT-NETWORK, the way Neutron's agents map provider networks to a node's
// bridges (bridge_mappings).
func ParseNetworks(flag string) ([]v1.HypervisorNetwork, error) {
	var out []v1.HypervisorNetwork
	for _, item := range strings.Split(flag, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, source, ok := strings.Cut(item, "=")
		kind, dev, ok2 := strings.Cut(source, ":")
		if !ok || !ok2 || dev == "" {
			return nil, fmt.Errorf("--networks: %q is not NAME=bridge:BRIDGE or NAME=network:LIBVIRT-NETWORK", item)
		}
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			return nil, fmt.Errorf("--networks: network name %q: %s", name, strings.Join(errs, "; "))
		}
		n := v1.HypervisorNetwork{Name: name, Source: dev}
		switch kind {
		case "bridge":
			n.Type = v1.NetworkBridge
		case "network":
			n.Type = v1.NetworkLibvirt
		default:
			return nil, fmt.Errorf("--networks: %q: the source must be bridge:NAME or network:NAME, not %s", item, kind+":")
		}
		if slices.ContainsFunc(out, func(o v1.HypervisorNetwork) bool { return o.Name == name }) {
			return nil, fmt.Errorf("--networks: network %s is named twice", name)
		}
		out = append(out, n)
	}
	return out, nil
}

// targetNICs are the instance's NICs as a live migration's target plugs them: into its own
// network of each name. A network the target lacks keeps the source's plugging, and the target's
// libvirtd refuses the migration if that does not exist there (the scheduler's NetworkFilter
// does not let it come to that).
func targetNICs(inst *v1.Instance, target []v1.HypervisorNetwork) []driver.NIC {
	var out []driver.NIC
	for _, nic := range inst.Status.Networks {
		if i := slices.IndexFunc(target, func(n v1.HypervisorNetwork) bool { return n.Name == nic.Network }); i >= 0 {
			out = append(out, driver.NIC{MACAddress: nic.MACAddress, Type: target[i].Type, Source: target[i].Source})
		}
	}
	return out
}

// A guest asks for its address by DHCP within moments of booting. The agent looks every
// addressPoll until each NIC has one, for addressWatch after it first sees the guest running
// without; then only at its resync, so that a guest that never asks costs little.
const (
	addressPoll  = 2 * time.Second
	addressWatch = 3 * time.Minute
)

// observeInterfaces puts the addresses the node sees on a running guest's NICs into its report,
// in the order of status.networks, and says how soon to look again (0: at the resync).
func (r *InstanceReconciler) observeInterfaces(ctx context.Context, inst *v1.Instance, report *v1.AgentReport) time.Duration {
	if len(inst.Status.Networks) == 0 {
		return 0
	}
	seen, err := r.Driver.InterfaceAddresses(ctx, string(inst.UID))
	if err != nil {
		// The node's ARP table may still tell; the hypervisor is asked again at the next look.
		log.FromContext(ctx).V(1).Info("cannot read the guest's addresses", "error", err.Error())
	}
	var arp map[string][]string
	if r.onBridge(inst) {
		if arp, err = r.arpTable(); err != nil {
			log.FromContext(ctx).V(1).Info("cannot read the node's ARP table", "error", err.Error())
		}
	}
	var observed []v1.ObservedInterface
	complete := true
	for _, nic := range inst.Status.Networks {
		o := v1.ObservedInterface{MACAddress: nic.MACAddress}
		if i := slices.IndexFunc(seen, func(s v1.ObservedInterface) bool { return strings.EqualFold(s.MACAddress, nic.MACAddress) }); i >= 0 {
			o.IPAddresses = seen[i].IPAddresses
		}
		for _, ip := range arp[strings.ToLower(nic.MACAddress)] {
			if !slices.Contains(o.IPAddresses, ip) {
				o.IPAddresses = append(o.IPAddresses, ip)
			}
		}
		// In a stable order, so that only a change of addresses writes status.
		slices.Sort(o.IPAddresses)
		complete = complete && len(o.IPAddresses) > 0
		observed = append(observed, o)
	}
	report.Interfaces = observed
	if (complete && err == nil) || !r.watchingAddresses(inst.UID) {
		return 0
	}
	return addressPoll
}

// onBridge says whether any of the instance's NICs is on one of the node's bridges, whose
// addresses only the node's ARP table tells.
func (r *InstanceReconciler) onBridge(inst *v1.Instance) bool {
	for _, nic := range inst.Status.Networks {
		if slices.ContainsFunc(r.Networks, func(n v1.HypervisorNetwork) bool { return n.Name == nic.Network && n.Type == v1.NetworkBridge }) {
			return true
		}
	}
	return false
}

// arpTable reads the node's neighbour table (ARPTablePath, else /proc/net/arp).
func (r *InstanceReconciler) arpTable() (map[string][]string, error) {
	path := r.ARPTablePath
	if path == "" {
		path = ProcARP
	}
	return ReadARPTable(path)
}

// watchingAddresses says whether the agent still looks often for a guest's addresses: for
// addressWatch after it first looked.
func (r *InstanceReconciler) watchingAddresses(uid types.UID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.addressWatch == nil {
		r.addressWatch = map[types.UID]time.Time{}
	}
	since, ok := r.addressWatch[uid]
	if !ok {
		since = time.Now()
		r.addressWatch[uid] = since
	}
	return time.Since(since) < addressWatch
}

// forgetAddressWatch starts the watch afresh the next time the guest runs (a boot asks anew).
func (r *InstanceReconciler) forgetAddressWatch(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.addressWatch, uid)
}
