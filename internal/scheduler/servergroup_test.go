package scheduler

import (
	"fmt"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// inGroup is small() as a member of group "ns/g" with policy, whose other members are counted
// per node in members.
func inGroup(policy v1.ServerGroupPolicy, maxPerHost int, members map[string]int) Request {
	r := small()
	r.Group = &GroupRequest{Key: "ns/g", Policy: policy, MaxPerHost: maxPerHost, Members: members}
	return r
}

func TestServerGroupPolicies(t *testing.T) {
	hosts := func() []Host {
		return []Host{host("a", 8, 8192, 10), host("b", 8, 4096, 10), host("c", 8, 2048, 10)}
	}
	cases := []struct {
		name    string
		req     Request
		want    string // "" = no valid host
		blamed  string
		dropped string // a host made unschedulable first
	}{
		{"affinity: the first member goes where the RAM weigher says", inGroup(v1.ServerGroupAffinity, 0, nil), "a", "", ""},
		{"affinity: the others go where the members are", inGroup(v1.ServerGroupAffinity, 0, map[string]int{"c": 1}), "c", "", ""},
		{"affinity: never elsewhere", inGroup(v1.ServerGroupAffinity, 0, map[string]int{"c": 2}), "", "ServerGroupAffinityFilter", "c"},
		{"anti-affinity: not beside a member", inGroup(v1.ServerGroupAntiAffinity, 1, map[string]int{"a": 1}), "b", "", ""},
		{"anti-affinity: no node without a member", inGroup(v1.ServerGroupAntiAffinity, 1, map[string]int{"a": 1, "b": 1, "c": 1}), "", "ServerGroupAntiAffinityFilter", ""},
		{"anti-affinity: max_server_per_host 2", inGroup(v1.ServerGroupAntiAffinity, 2, map[string]int{"a": 1, "b": 2, "c": 2}), "a", "", ""},
		{"soft-affinity: the node with the most members, over more free RAM", inGroup(v1.ServerGroupSoftAffinity, 0, map[string]int{"b": 1, "c": 2}), "c", "", ""},
		{"soft-affinity: elsewhere when the members' node is out", inGroup(v1.ServerGroupSoftAffinity, 0, map[string]int{"c": 2}), "a", "", "c"},
		{"soft-anti-affinity: the node with the fewest members", inGroup(v1.ServerGroupSoftAntiAffinity, 0, map[string]int{"a": 2, "b": 1}), "c", "", ""},
		{"soft-anti-affinity: beside members when every node has some", inGroup(v1.ServerGroupSoftAntiAffinity, 0, map[string]int{"a": 2, "b": 1, "c": 3}), "b", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hs := hosts()
			for i := range hs {
				if hs[i].Name() == tc.dropped {
					hs[i].Node.Spec.Unschedulable = true
				}
			}
			got, err := Select(hs, tc.req, DefaultFilters)
			if tc.want == "" {
				nvh, ok := err.(*NoValidHost)
				if !ok || nvh.Rejected[tc.blamed] == 0 {
					t.Fatalf("got %q, %v; want no valid host, blaming %s", got, err, tc.blamed)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// member is an instance of group g in namespace ns, placed on node.
func member(uid, node string) *v1.Instance {
	return &v1.Instance{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Namespace: "ns"},
		Spec: v1.InstanceSpec{ServerGroup: "g"},
		Status: v1.InstanceStatus{NodeName: node, VMState: v1.VMStateActive,
			Flavor: &v1.AppliedFlavor{Name: "m1", FlavorSpec: v1.FlavorSpec{VCPUs: 1, MemoryMiB: 512, DiskGiB: 1}}}}
}

// The placement counts a group's members per node from the informer and from claims it does
// not show yet, leaves the instance being decided for out, and counts a member moving on both
// of its nodes.
func TestPlacementCountsGroupMembers(t *testing.T) {
	p := NewPlacement()
	p.Observe(member("m1", "a"))
	p.Observe(member("m2", "a"))
	other := member("x", "b")
	other.Spec.ServerGroup = "other"
	p.Observe(other)
	moving := member("m3", "b")
	moving.Status.Task = &v1.Task{Action: v1.ActionLiveMigrate, Migration: &v1.MigrationTask{TargetNode: "c"}}
	p.Observe(moving)
	if !p.Reserve("m4", "", host("d", 8, 8192, 10), inGroup(v1.ServerGroupAntiAffinity, 1, nil)) {
		t.Fatal("d has no member: m4 fits there")
	}
	got := p.GroupMembers("m1", "ns/g")
	want := map[string]int{"a": 1, "b": 1, "c": 1, "d": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("members seen by m1: %v, want %v (itself out, m3 on both ends of its move, m4's claim)", got, want)
	}
	p.Forget("m2")
	if got := p.GroupMembers("m1", "ns/g")["a"]; got != 0 {
		t.Fatalf("after m2 went, m1 sees %d other members on a, want 0", got)
	}
}

// Concurrent launches of an anti-affinity group, each deciding from the same snapshot in which
// no member is placed: Reserve, which counts the members again, puts no two on one node.
func TestConcurrentAntiAffinityDecisionsNeverShareANode(t *testing.T) {
	p := NewPlacement()
	hosts := []Host{host("a", 8, 8192, 10), host("b", 8, 8192, 10), host("c", 8, 8192, 10)}
	var wg, chosen sync.WaitGroup
	chosen.Add(5)
	placed := make(chan string, 5)
	for i := range 5 {
		wg.Add(1)
		go func(uid types.UID) {
			defer wg.Done()
			for round := 0; ; round++ {
				r := inGroup(v1.ServerGroupAntiAffinity, 1, p.GroupMembers(uid, "ns/g"))
				node, err := Select(hosts, r, DefaultFilters)
				if round == 0 {
					chosen.Done()
					chosen.Wait()
				}
				if err != nil {
					return
				}
				for _, h := range hosts {
					if h.Name() == node && p.Reserve(uid, "", h, r) {
						placed <- node
						return
					}
				}
			}
		}(types.UID(fmt.Sprint("i", i)))
	}
	wg.Wait()
	close(placed)
	seen := map[string]bool{}
	for node := range placed {
		if seen[node] {
			t.Fatalf("two members of an anti-affinity group placed on %s", node)
		}
		seen[node] = true
	}
	if len(seen) != 3 {
		t.Fatalf("%d members placed on 3 nodes, want 3", len(seen))
	}
}
