package storage

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRecords: task marks and owners read back what was written, say "none" when missing or
// cut short by a crash, and an owner is written once.
func TestRecords(t *testing.T) {
	n := &Node{Root: t.TempDir()}
	uid := "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e777"
	if _, ok, err := n.ReadTaskMark(uid); ok || err != nil {
		t.Fatalf("no mark yet: ok %v, err %v", ok, err)
	}
	if err := n.WriteTaskMark(uid, TaskMark{TaskID: 7, RunID: 3}); err != nil {
		t.Fatal(err)
	}
	if mark, ok, err := n.ReadTaskMark(uid); !ok || err != nil || mark != (TaskMark{TaskID: 7, RunID: 3}) {
		t.Fatalf("mark %+v, ok %v, err %v", mark, ok, err)
	}

	if err := n.WriteOwner(uid, Owner{Namespace: "ns", Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteOwner(uid, Owner{Namespace: "ns", Name: "other"}); err != nil {
		t.Fatal(err)
	}
	if owner, ok, err := n.ReadOwner(uid); !ok || err != nil || owner != (Owner{Namespace: "ns", Name: "web"}) {
		t.Fatalf("owner %+v, ok %v, err %v; the first owner stays", owner, ok, err)
	}

	dir, err := n.InstanceDir(uid)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"task.json", "owner.json"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(`{"task`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := n.ReadTaskMark(uid); ok || err != nil {
		t.Errorf("a mark cut short counts as none: ok %v, err %v", ok, err)
	}
	if _, ok, err := n.ReadOwner(uid); ok || err != nil {
		t.Errorf("an owner cut short counts as none: ok %v, err %v", ok, err)
	}
	if _, _, err := n.ReadOwner("not-a-uid"); err == nil {
		t.Error("a malformed UID is refused")
	}
}
