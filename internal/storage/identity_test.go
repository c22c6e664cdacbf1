package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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

// A read of the identity file that a hung mount holds makes the root unavailable within
// probeTimeout, and while it hangs no caller starts another read: one stuck goroutine per
// root, however many tasks ask. Once the read returns, the root answers again.
func TestAHungRootIsUnavailableWithoutPilingUpReads(t *testing.T) {
	n := &Node{Root: t.TempDir()}
	id, err := n.StorageID()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Verify(id); err != nil {
		t.Fatal(err)
	}
	defer func(was time.Duration) { probeTimeout = was }(probeTimeout)
	probeTimeout = 200 * time.Millisecond
	release := make(chan struct{})
	var reads atomic.Int32
	n.identity.readFile = func(path string) ([]byte, error) {
		reads.Add(1)
		<-release // held in the kernel, as on an NFS mount whose server went away
		return os.ReadFile(path)
	}
	began := time.Now()
	for range 3 {
		if err := n.Ready(); !errors.Is(err, ErrStorageUnavailable) || !strings.Contains(err.Error(), "hung mount") {
			t.Fatalf("with the read hung: %v", err)
		}
	}
	if took := time.Since(began); took > 4*probeTimeout {
		t.Errorf("three callers took %s", took)
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d reads started while the first hung, want 1", n)
	}
	close(release)
	n.identity.readFile = nil
	if err := n.Ready(); err != nil {
		t.Errorf("once the mount answers: %v", err)
	}
}
