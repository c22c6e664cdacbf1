package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The root's ID is made once, at the node's first start; afterwards a root without it (not
// mounted) or with another (another filesystem) is refused and nothing is written into it.
func TestStorageRootIsCheckedAgainstItsRecord(t *testing.T) {
	mounted := &Node{Root: t.TempDir()}
	if err := mounted.Ready(); !errors.Is(err, ErrStorageUnverified) {
		t.Fatalf("Ready before any check: %v", err)
	}
	recorded, err := mounted.Verify("")
	if err != nil || recorded == "" {
		t.Fatalf("first start: %q, %v", recorded, err)
	}
	if err := mounted.Ready(); err != nil {
		t.Fatalf("Ready after the first start: %v", err)
	}
	if id, err := mounted.Verify(recorded); err != nil || id != recorded {
		t.Fatalf("the recorded root: %q, %v", id, err)
	}

	unmounted := &Node{Root: t.TempDir()}
	if _, err := unmounted.Verify(recorded); !errors.Is(err, ErrStorageUnavailable) {
		t.Errorf("an empty root with a record: %v, want ErrStorageUnavailable", err)
	}
	if err := unmounted.Ready(); !errors.Is(err, ErrStorageUnavailable) {
		t.Errorf("Ready of a refused root: %v", err)
	}
	if entries, _ := os.ReadDir(unmounted.Root); len(entries) != 0 {
		t.Errorf("the refused root got %v", entries)
	}

	other := &Node{Root: t.TempDir()}
	if _, err := other.StorageID(); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Verify(recorded); !errors.Is(err, ErrStorageUnavailable) {
		t.Errorf("another filesystem's root: %v, want ErrStorageUnavailable", err)
	}

	// The mount goes away after the check: the next Ready notices, without another Verify.
	if err := os.Remove(filepath.Join(mounted.Root, storageIDFile)); err != nil {
		t.Fatal(err)
	}
	if err := mounted.Ready(); !errors.Is(err, ErrStorageUnavailable) {
		t.Errorf("Ready once the ID is gone: %v", err)
	}
	if _, err := mounted.Verify(recorded); !errors.Is(err, ErrStorageUnavailable) {
		t.Errorf("Verify once the ID is gone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mounted.Root, storageIDFile)); !os.IsNotExist(err) {
		t.Errorf("Verify with a record wrote an ID: %v", err)
	}
}
