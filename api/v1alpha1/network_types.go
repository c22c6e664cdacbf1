package v1alpha1

// NetworkInterface is one NIC of an instance, plugged into a network that the compute nodes
// have, as a Nova server's port is on a provider network.
type NetworkInterface struct {
	// Network names the network: one the compute nodes report in their Hypervisor's
	// status.networks (a Linux bridge or a libvirt network on each node).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Network string `json:"network"`

	// MACAddress fixes the NIC's MAC address (unicast, six colon-separated hex octets). When
	// unset, kubenova assigns one once, under Neutron's prefix fa:16:3e, and keeps it in
	// status.networks for the instance's whole life.
	// +kubebuilder:validation:MaxLength=17
	// +kubebuilder:validation:Pattern=`^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$`
	// +optional
	MACAddress string `json:"macAddress,omitempty"`
}

// NICStatus is one NIC as the instance has it (the manager's): its MAC, fixed when the instance
// was created, and the addresses last seen on it.
type NICStatus struct {
	// Network the NIC is plugged into.
	Network string `json:"network"`
	// MACAddress of the NIC, the same through every operation and move.
	MACAddress string `json:"macAddress"`
	// IPAddresses the guest was last seen using on this NIC (the network's DHCP leases, or
	// ARP on the node's bridge). They stay while the instance is stopped, as its lease does.
	// +optional
	IPAddresses []string `json:"ipAddresses,omitempty"`
}

// ObservedInterface is what the agent sees of one NIC of a running guest.
type ObservedInterface struct {
	// MACAddress of the NIC.
	MACAddress string `json:"macAddress"`
	// IPAddresses seen on it.
	// +optional
	IPAddresses []string `json:"ipAddresses,omitempty"`
}

// NetworkType is how a node provides a network.
// +kubebuilder:validation:Enum=Bridge;LibvirtNetwork
type NetworkType string

const (
	// NetworkBridge is a Linux bridge on the node, which NICs are plugged into with a tap
	// device (libvirt's <interface type='bridge'>); addresses come from the node's ARP table.
	NetworkBridge NetworkType = "Bridge"
	// NetworkLibvirt is a libvirt virtual network of the node's libvirtd (<interface
	// type='network'>); addresses come from its DHCP leases.
	NetworkLibvirt NetworkType = "LibvirtNetwork"
)

// HypervisorNetwork is a network a node has (its agent's --networks).
type HypervisorNetwork struct {
	// Name instances use in spec.networks.
	Name string `json:"name"`
	// Type of the network on this node.
	Type NetworkType `json:"type"`
	// Source is the bridge's or the libvirt network's name on this node.
	Source string `json:"source"`
}
