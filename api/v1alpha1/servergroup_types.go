package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServerGroupPolicy is how a group's members are placed relative to each other (Nova's
// os-server-groups policies).
// +kubebuilder:validation:Enum=affinity;anti-affinity;soft-affinity;soft-anti-affinity
type ServerGroupPolicy string

const (
	// ServerGroupAffinity places every member on the node of the members placed before it.
	ServerGroupAffinity ServerGroupPolicy = "affinity"
	// ServerGroupAntiAffinity places at most maxServerPerHost members per node (one by default).
	ServerGroupAntiAffinity ServerGroupPolicy = "anti-affinity"
	// ServerGroupSoftAffinity prefers the node with the most members, where one fits.
	ServerGroupSoftAffinity ServerGroupPolicy = "soft-affinity"
	// ServerGroupSoftAntiAffinity prefers the node with the fewest members, where one fits.
	ServerGroupSoftAntiAffinity ServerGroupPolicy = "soft-anti-affinity"
)

// ServerGroupSpec is a group's policy. Like Nova's server groups it is fixed at creation.
// +kubebuilder:validation:XValidation:rule="!has(self.maxServerPerHost) || self.policy == 'anti-affinity'",message="maxServerPerHost is a rule of the anti-affinity policy only, as in Nova"
type ServerGroupSpec struct {
	// Policy places the members: affinity, anti-affinity (hard: an instance that cannot be
	// placed by it waits with NoValidHost), or their soft forms (preferences among the nodes
	// that fit).
	Policy ServerGroupPolicy `json:"policy"`

	// MaxServerPerHost is anti-affinity's limit of members per node (Nova's
	// rules.max_server_per_host); 1 when unset.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxServerPerHost *int32 `json:"maxServerPerHost,omitempty"`
}

// ServerGroupMember is an instance of the group and the node it is placed on.
type ServerGroupMember struct {
	// Name is the instance's.
	Name string `json:"name"`
	// NodeName is where it is placed; empty while it waits to be.
	// +optional
	NodeName string `json:"nodeName,omitempty"`
}

// ServerGroupStatus lists the members (manager).
type ServerGroupStatus struct {
	// Members are the instances that name the group, in name order.
	// +optional
	// +listType=atomic
	Members []ServerGroupMember `json:"members,omitempty"`
}

// ServerGroup places its member instances on the same node or on different ones, as Nova's
// server groups do. Instances join it at creation with spec.serverGroup; it is namespaced, as
// Nova's belong to a project.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=sg,categories=nova
// +kubebuilder:printcolumn:name="Policy",type=string,JSONPath=`.spec.policy`
// +kubebuilder:printcolumn:name="Max_Per_Host",type=integer,JSONPath=`.spec.maxServerPerHost`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ServerGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the group's policy; immutable.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a server group's policy is immutable, as in Nova: make a new group"
	Spec ServerGroupSpec `json:"spec"`

	// Status lists the members.
	// +optional
	Status ServerGroupStatus `json:"status,omitempty"`
}

// ServerGroupList is a list of ServerGroups.
// +kubebuilder:object:root=true
type ServerGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the server groups.
	Items []ServerGroup `json:"items"`
}

// MaxPerHost is the anti-affinity limit of members per node.
func (s ServerGroupSpec) MaxPerHost() int {
	if s.MaxServerPerHost == nil {
		return 1
	}
	return int(*s.MaxServerPerHost)
}

func init() {
	registerTypes(&ServerGroup{}, &ServerGroupList{})
}
