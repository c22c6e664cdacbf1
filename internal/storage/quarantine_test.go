package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A quarantine cut short after its record was written finishes on the next call and keeps the
// first record; a directory already moved is left alone; nothing is ever deleted.
func TestQuarantineInstanceFilesResumes(t *testing.T) {
	n := &Node{Root: t.TempDir()}
	const uid = "00000000-0000-4000-8000-0000000000aa"
	dir, _ := n.InstanceDir(uid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "disk"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	first := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// The crash: the record is there, the directory was not moved yet.
	if err := writeFileWhole(filepath.Join(dir, quarantineRecordFile), QuarantineRecord{UID: uid, Node: "a", Reason: "first", Since: first}); err != nil {
		t.Fatal(err)
	}
	if err := n.QuarantineInstanceFiles(uid, QuarantineRecord{Node: "b", Reason: "second", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := n.QuarantineInstanceFiles(uid, QuarantineRecord{Node: "b", Reason: "third", Since: time.Now()}); err != nil {
		t.Fatalf("a directory already in quarantine: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the instance directory is still in place: %v", err)
	}
	held, err := n.QuarantinedInstances()
	if err != nil || len(held) != 1 {
		t.Fatalf("quarantine: %+v, %v", held, err)
	}
	q := held[0]
	if q.Reason != "first" || q.Node != "a" || !q.Since.Equal(first) {
		t.Errorf("the first record is kept, got %+v", q.QuarantineRecord)
	}
	if b, err := os.ReadFile(filepath.Join(q.Path, "disk")); err != nil || string(b) != "data" {
		t.Errorf("quarantined disk: %q, %v", b, err)
	}
	if err := n.RemoveQuarantined("../instances"); err == nil {
		t.Error("RemoveQuarantined took a path that is not a UID")
	}
	if err := n.RemoveQuarantined(uid); err != nil {
		t.Fatal(err)
	}
	if held, err := n.QuarantinedInstances(); err != nil || len(held) != 0 {
		t.Errorf("after removal: %+v, %v", held, err)
	}
}

// Adoption moves the quarantined disk into the new instance's directory in one rename, keeps
// the record beside it, resumes after a crash at any point, and says when the disk is gone.
func TestAdoptQuarantined(t *testing.T) {
	n := &Node{Root: t.TempDir()}
	const from, to = "00000000-0000-4000-8000-0000000000aa", "00000000-0000-4000-8000-0000000000bb"
	dir, _ := n.InstanceDir(from)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"disk", "console.log"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(f+" data"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.QuarantineInstanceFiles(from, QuarantineRecord{Namespace: "ns", Name: "web", Node: "a", Reason: "gone", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteOwner(to, Owner{Namespace: "ns", Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if err := n.AdoptQuarantined(from, to); err != nil {
		t.Fatal(err)
	}
	disk, _ := n.RootDisk(to)
	if b, err := os.ReadFile(disk); err != nil || string(b) != "disk data" {
		t.Fatalf("adopted disk: %q, %v", b, err)
	}
	// A run cut short and repeated adopts nothing more and loses nothing.
	if err := n.AdoptQuarantined(from, to); err != nil {
		t.Fatalf("adopting again: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.Root, quarantineDir, from)); !os.IsNotExist(err) {
		t.Errorf("the emptied quarantined directory is still there: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(disk), adoptedRecordFile))
	if err != nil || !strings.Contains(string(b), `"name":"web"`) {
		t.Errorf("adopted.json: %s, %v", b, err)
	}
	const other = "00000000-0000-4000-8000-0000000000cc"
	if err := n.AdoptQuarantined(from, other); !errors.Is(err, ErrQuarantinedDiskGone) {
		t.Errorf("adopting a disk no longer in quarantine: %v", err)
	}
}
