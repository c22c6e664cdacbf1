package v1alpha1_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/test/utils"
)

// The status fields agents report; every other one is the manager's, and the agent policy
// must keep agents from writing it.
var (
	agentInstanceFields   = map[string]bool{"powerState": true, "agentReport": true, "peerReport": true}
	agentHypervisorFields = map[string]bool{"capacity": true, "reserved": true, "virtType": true, "virtTypeReason": true, "libvirtVersion": true,
		"qemuVersion": true, "hostUUID": true, "migrationURI": true, "storageRoot": true, "storageShared": true,
		"storageID": true, "storageUnavailable": true, "agentVersion": true, "networks": true, "consoleLogService": true,
		"quarantined": true, "quarantinedCount": true}
)

// TestAgentPolicyNamesEveryManagerStatusField fails when a field is added to InstanceStatus
// or HypervisorStatus without the agent confinement policy keeping agents from it (or without
// being declared an agent's field here).
func TestAgentPolicyNamesEveryManagerStatusField(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(utils.RepoRoot(), "config", "admission", "agent-node-restriction.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	policy := string(b)
	// variable is the text of one of the policy's variables.
	variable := func(name string) string {
		start := strings.Index(policy, "- name: "+name+"\n")
		if start < 0 {
			t.Fatalf("the policy has no variable %s", name)
		}
		// It ends where the next variable, or the validations, begin.
		rest := policy[start+1:]
		end := strings.Index(rest, "- name: ")
		if v := strings.Index(rest, "validations:"); v >= 0 && (end < 0 || v < end) {
			end = v
		}
		if end < 0 {
			t.Fatalf("cannot tell where the policy's variable %s ends", name)
		}
		return policy[start : start+1+end]
	}
	// An agent creates its Hypervisor with none of the administrator's settings.
	specUnset := variable("hypervisorSpecUnset")
	spec := reflect.TypeOf(v1.HypervisorSpec{})
	for i := range spec.NumField() {
		name := strings.Split(spec.Field(i).Tag.Get("json"), ",")[0]
		if !strings.Contains(specUnset, "object.spec."+name) {
			t.Errorf("HypervisorSpec.%s is an administrator's setting, yet the agent policy lets an agent set it when it creates its Hypervisor", name)
		}
	}
	for _, c := range []struct {
		status reflect.Type
		agents map[string]bool
		kept   string
	}{
		{reflect.TypeOf(v1.InstanceStatus{}), agentInstanceFields, variable("instanceStatusKept")},
		{reflect.TypeOf(v1.HypervisorStatus{}), agentHypervisorFields, variable("hypervisorManagerFieldsKept")},
	} {
		for i := range c.status.NumField() {
			name := strings.Split(c.status.Field(i).Tag.Get("json"), ",")[0]
			compared := strings.Contains(c.kept, "object.status."+name+" == oldObject.status."+name)
			switch {
			case c.agents[name] && compared:
				t.Errorf("%s.%s is the agent's, yet the policy keeps agents from changing it", c.status.Name(), name)
			case !c.agents[name] && !compared:
				t.Errorf("%s.%s is the manager's, yet the agent policy does not keep agents from changing it", c.status.Name(), name)
			}
		}
	}
}
