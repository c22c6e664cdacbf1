package novacli

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestServerGroupCreateListDelete(t *testing.T) {
	h := newHarness(t)
	if err := h.run("server-group-create", "db", "anti-affinity", "--max-server-per-host", "2"); err != nil {
		t.Fatal(err)
	}
	if err := h.run("server-group-create", "cache", "soft-affinity"); err != nil {
		t.Fatal(err)
	}
	c, _ := h.opts.newClient()
	got := &v1.ServerGroup{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: "db"}, got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Policy != v1.ServerGroupAntiAffinity || got.Spec.MaxServerPerHost == nil || *got.Spec.MaxServerPerHost != 2 {
		t.Fatalf("created %+v, want anti-affinity with at most 2 per host", got.Spec)
	}
	got.Status.Members = []v1.ServerGroupMember{{Name: "db-0", NodeName: "node-1"}, {Name: "db-1"}}
	got.CreationTimestamp = metav1.NewTime(testNow.Add(-time.Hour))
	if err := c.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}

	h.out.Reset()
	if err := h.run("server-group-list"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(h.out.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "cache") || !strings.Contains(lines[1], "soft-affinity") ||
		!strings.Contains(lines[2], "anti-affinity, max_server_per_host=2") || !strings.Contains(lines[2], "db-0@node-1,db-1@-") {
		t.Fatalf("server-group-list printed:\n%s", h.out)
	}

	if err := h.run("server-group-delete", "cache"); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: "cache"}, &v1.ServerGroup{}); err == nil {
		t.Fatal("server-group-delete left the group")
	}
}

func TestServerGroupCreateRefusesWhatNovaRefuses(t *testing.T) {
	for _, args := range [][]string{
		{"server-group-create", "g", "spread"},
		{"server-group-create", "g", "affinity", "--max-server-per-host", "2"},
	} {
		h := newHarness(t)
		err := h.run(args...)
		if err == nil {
			t.Fatalf("%v was accepted", args)
		}
		c, _ := h.opts.newClient()
		var list v1.ServerGroupList
		if lerr := c.List(context.Background(), &list); lerr != nil || len(list.Items) != 0 {
			t.Fatalf("%v: refused (%v) but created %d groups (%v)", args, err, len(list.Items), lerr)
		}
	}
}

func TestShowNamesTheServerGroup(t *testing.T) {
	inst := sampleInstance("web")
	inst.Spec.ServerGroup = "db"
	h := newHarness(t, inst)
	if err := h.run("show", "web"); err != nil {
		t.Fatal(err)
	}
	if !regexpServerGroup.MatchString(h.out.String()) {
		t.Fatalf("show printed no serverGroup line:\n%s", h.out)
	}
}

var regexpServerGroup = regexp.MustCompile(`(?m)^serverGroup\s+db$`)
