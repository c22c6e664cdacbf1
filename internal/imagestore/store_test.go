package imagestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func digest(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

const keyA = "6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10"

// newDir returns a store created in a fresh directory.
func newDir(t *testing.T) *Dir {
	t.Helper()
	d := &Dir{Root: t.TempDir()}
	if _, err := d.Create("store at " + d.Root); err != nil {
		t.Fatal(err)
	}
	return d
}

// A directory without the store's identity (an NFS mount not there yet) is not an empty
// store: every call fails with ErrUnavailable, and nothing is written into it.
func TestUnmountedStoreIsUnavailableNotEmpty(t *testing.T) {
	ctx := context.Background()
	mounted := newDir(t)
	if _, _, err := mounted.Put(ctx, keyA, strings.NewReader("bytes"), nil); err != nil {
		t.Fatal(err)
	}
	id, err := mounted.Identify()
	if err != nil {
		t.Fatal(err)
	}

	unmounted := &Dir{Root: t.TempDir(), ID: id}
	calls := map[string]func() error{
		"Put":  func() error { _, _, err := unmounted.Put(ctx, keyA, strings.NewReader("bytes"), nil); return err },
		"Open": func() error { _, _, err := unmounted.Open(ctx, keyA); return err },
		"Stat": func() error { _, err := unmounted.Stat(ctx, keyA); return err },
		"Verify": func() error {
			_, _, err := unmounted.Verify(ctx, keyA, nil)
			return err
		},
		"Delete":          func() error { return unmounted.Delete(ctx, keyA) },
		"RemoveStalePuts": func() error { return unmounted.RemoveStalePuts(0) },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
			t.Errorf("%s on an unmounted store: %v, want ErrUnavailable", name, err)
		}
	}
	if entries, err := os.ReadDir(unmounted.Root); err != nil || len(entries) != 0 {
		t.Errorf("the unmounted directory got %v (%v)", entries, err)
	}

	// Another store mounted where this one should be is not this one either.
	other := newDir(t)
	other.ID = id
	if _, err := other.Stat(ctx, keyA); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Stat on another store: %v, want ErrUnavailable", err)
	}
	// The store itself, with its identity expected, answers.
	mounted.ID = id
	if _, err := mounted.Stat(ctx, keyA); err != nil {
		t.Errorf("Stat on the store: %v", err)
	}
	// Create keeps an identity made before.
	if got, err := mounted.Create("another"); err != nil || got != id {
		t.Errorf("Create on a store: %q, %v; want %q", got, err, id)
	}
}

func TestPutThenOpenStatDelete(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	body := []byte("image bytes")
	obj, sum, err := d.Put(ctx, keyA, bytes.NewReader(body), nil)
	if err != nil {
		t.Fatal(err)
	}
	if obj.Size != int64(len(body)) || sum != digest(body) {
		t.Fatalf("Put = %+v, %s; want size %d and the bytes' digest", obj, sum, len(body))
	}
	r, got, err := d.Open(ctx, keyA)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	_ = r.Close()
	if !bytes.Equal(b, body) || got.Size != obj.Size {
		t.Fatalf("Open read %q (%+v)", b, got)
	}
	if err := d.Delete(ctx, keyA); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Stat(ctx, keyA); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after Delete: %v, want ErrNotFound", err)
	}
	if err := d.Delete(ctx, keyA); err != nil {
		t.Fatalf("deleting a missing key: %v", err)
	}
	for _, bad := range []string{"../etc", "", "A", "a/b", strings.Repeat("a", 64)} {
		if _, _, err := d.Put(ctx, bad, bytes.NewReader(nil), nil); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
}

// TestPutIsAtomic: bytes that check refuses, or a Put cut short, never become visible, and
// what an earlier Put stored stays readable meanwhile.
func TestPutIsAtomic(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	if _, _, err := d.Put(ctx, keyA, strings.NewReader("old"), nil); err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("refused")
	var checkedSum string
	_, _, err := d.Put(ctx, keyA, strings.NewReader("new"), func(path, sum string) error {
		checkedSum = sum
		// While the new bytes wait for their check, readers see the old ones.
		r, _, err := d.Open(ctx, keyA)
		if err != nil {
			return err
		}
		defer func() { _ = r.Close() }()
		if b, _ := io.ReadAll(r); string(b) != "old" {
			t.Errorf("a reader saw %q before the new bytes were checked", b)
		}
		if b, _ := os.ReadFile(path); string(b) != "new" {
			t.Errorf("check saw %q at %s", b, path)
		}
		return refuse
	})
	if !errors.Is(err, refuse) {
		t.Fatalf("Put = %v, want the check's error", err)
	}
	if checkedSum != digest([]byte("new")) {
		t.Errorf("check was given sha256 %s", checkedSum)
	}
	assertOnly(t, d, "old")

	// A source that fails halfway leaves nothing but the old bytes.
	broken := io.MultiReader(strings.NewReader("half"), errReader{errors.New("connection reset")})
	if _, _, err := d.Put(ctx, keyA, broken, nil); err == nil {
		t.Fatal("a broken source was stored")
	}
	assertOnly(t, d, "old")

	// A cancelled Put stops.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := d.Put(cctx, keyA, strings.NewReader("late"), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled Put: %v", err)
	}
	assertOnly(t, d, "old")
}

// TestReadersNeverSeeAHalfWrittenImage replaces an image again and again while readers read
// it: each reader gets one whole version, never a mix or a prefix.
func TestReadersNeverSeeAHalfWrittenImage(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	versions := [][]byte{bytes.Repeat([]byte("a"), 1<<20), bytes.Repeat([]byte("b"), 1<<20)}
	if _, _, err := d.Put(ctx, keyA, bytes.NewReader(versions[0]), nil); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, _, err := d.Open(ctx, keyA)
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(r)
			_ = r.Close()
			if !bytes.Equal(b, versions[0]) && !bytes.Equal(b, versions[1]) {
				t.Errorf("a reader saw %d bytes that are neither version", len(b))
				return
			}
			reads++
		}
	}()
	for i := 0; i < 20; i++ {
		if _, _, err := d.Put(ctx, keyA, bytes.NewReader(versions[i%2]), nil); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if reads == 0 {
		t.Fatal("the reader never read")
	}
}

func TestRemoveStalePutsKeepsRecentOnes(t *testing.T) {
	d := newDir(t)
	dir := filepath.Join(d.Root, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, recent := filepath.Join(dir, ".put-a-1"), filepath.Join(dir, ".put-b-2")
	for _, f := range []string{old, recent} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveStalePuts(time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Error("a stale Put survived")
	}
	if _, err := os.Stat(recent); err != nil {
		t.Error("a Put in progress was removed")
	}
}

func assertOnly(t *testing.T, d *Dir, want string) {
	t.Helper()
	r, _, err := d.Open(context.Background(), keyA)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	if b, _ := io.ReadAll(r); string(b) != want {
		t.Errorf("the store holds %q, want %q", b, want)
	}
	entries, _ := os.ReadDir(filepath.Join(d.Root, "images"))
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("the store directory holds %v, want only the key", names)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// The manager (uid 65532) and the agents (root) share the store. Installed as the README says
// (the root owned by the manager's uid and group, mode 2775), a directory an agent makes first is
// still one the manager can write and delete in: it takes the root's group and is
// group-writable.
func TestADirectoryTheAgentMakesIsTheManagersToWriteIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it plays the agent (root) and the manager (uid 65532)")
	}
	const manager = 65532
	root := t.TempDir()
	if err := os.Chown(root, manager, manager); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o775|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parent is root's and 0700: open the way to root for the manager's process.
	if err := os.Chmod(filepath.Dir(root), 0o755); err != nil {
		t.Fatal(err)
	}
	d := &Dir{Root: root}
	if _, err := d.Create("store at " + root); err != nil {
		t.Fatal(err)
	}
	// The agent, root with a umask of 022, stores the first image.
	if _, _, err := d.Put(context.Background(), keyA, bytes.NewReader([]byte("snapshot")), nil); err != nil {
		t.Fatal(err)
	}
	images := filepath.Join(root, "images")
	info, err := os.Stat(images)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode()&(os.ModeSetgid|os.ModePerm) != os.ModeSetgid|0o775 {
		t.Errorf("images/ has mode %v, want setgid and 0775", info.Mode())
	}
	// The manager writes a file there and deletes the agent's image.
	cmd := exec.Command("/bin/sh", "-c", `touch "$1/manager-was-here" && rm -f "$1/`+keyA+`"`, "sh", images)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: manager, Gid: manager}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the manager cannot write in images/ the agent made: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(images, keyA)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the agent's image is still there after the manager removed it: %v", err)
	}
}
