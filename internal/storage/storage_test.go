package storage

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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
)

const uidA = "6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10"
const uidB = "7f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a11"
const uidC = "8f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a12"

func digest(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// countingStore counts the opens of an image store.
type countingStore struct {
	imagestore.Store
	opens atomic.Int32
}

func (c *countingStore) Open(ctx context.Context, key string) (io.ReadCloser, imagestore.Object, error) {
	c.opens.Add(1)
	return c.Store.Open(ctx, key)
}

// storedImage puts body into a fresh image store and returns the AppliedImage the manager would
// hand out for it.
func storedImage(t *testing.T, body []byte) (*countingStore, v1.AppliedImage) {
	t.Helper()
	dir := &imagestore.Dir{Root: t.TempDir()}
	if _, err := dir.Create("test store"); err != nil {
		t.Fatal(err)
	}
	store := &countingStore{Store: dir}
	_, sum, err := store.Put(context.Background(), imageUID, bytes.NewReader(body), nil)
	if err != nil {
		t.Fatal(err)
	}
	return store, v1.AppliedImage{ImageReference: v1.ImageReference{Name: "img"}, UID: imageUID, SHA256: sum, DiskFormat: v1.DiskFormatRaw}
}

const imageUID = "1f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a19"

// TestEnsureImageFetchesOnceForConcurrentLaunches: ten instances of one image starting at
// once cost one fetch from the image store.
func TestEnsureImageFetchesOnceForConcurrentLaunches(t *testing.T) {
	body := []byte("not really a disk, but bytes with a digest")
	store, img := storedImage(t, body)
	n := &Node{Root: t.TempDir(), Images: store}

	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := n.EnsureImage(context.Background(), img)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if store.opens.Load() != 1 {
		t.Errorf("%d fetches for ten instances of one image, want 1", store.opens.Load())
	}
	got, err := os.ReadFile(n.BaseImage(img.SHA256))
	if err != nil || string(got) != string(body) {
		t.Fatalf("cached image: %q, %v", got, err)
	}
}

// TestEnsureImageRefusesBytesThatDoNotMatch: a store copy that differs from what the image
// service verified (tampered with, or replaced) never lands in the cache.
func TestEnsureImageRefusesBytesThatDoNotMatch(t *testing.T) {
	store, img := storedImage(t, []byte("tampered"))
	img.SHA256 = digest([]byte("original"))
	n := &Node{Root: t.TempDir(), Images: store}
	_, err := n.EnsureImage(context.Background(), img)
	if err == nil || !strings.Contains(err.Error(), "not "+img.SHA256) {
		t.Fatalf("wrong bytes accepted or unclear error: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(n.Root, "_base"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.BaseImage(img.SHA256)); !os.IsNotExist(err) {
		t.Errorf("the cache holds the image under its digest after a failed verification: %v", err)
	}
	if len(entries) != 0 {
		t.Errorf("the cache kept %d files after a failed verification", len(entries))
	}
	img.UID = "2f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a19"
	if _, err := n.EnsureImage(context.Background(), img); !errors.Is(err, imagestore.ErrNotFound) {
		t.Fatalf("an image the store does not hold: %v", err)
	}
}

// TestRemoveUnusedBases: a base that a disk is built on stays; one no disk uses goes once its
// grace has passed since its last use, not before.
func TestRemoveUnusedBases(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is missing: run make libvirt")
	}
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "1M")
	body, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	store, used := storedImage(t, body)
	_, unusedSum, err := store.Put(ctx, "3f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a19", bytes.NewReader(append(body, 0)), nil)
	if err != nil {
		t.Fatal(err)
	}
	unused := v1.AppliedImage{UID: "3f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a19", SHA256: unusedSum}
	n := &Node{Root: t.TempDir(), Images: store}
	usedPath, err := n.EnsureImage(ctx, used)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.CreateRootDisk(ctx, uidA, usedPath, v1.DiskFormatQCOW2, 0); err != nil {
		t.Fatal(err)
	}
	unusedPath, err := n.EnsureImage(ctx, unused)
	if err != nil {
		t.Fatal(err)
	}

	removed, err := n.RemoveUnusedBases(time.Hour)
	if err != nil || len(removed) != 0 {
		t.Fatalf("within the grace: removed %v, %v", removed, err)
	}
	past := time.Now().Add(-2 * time.Hour)
	for _, p := range []string{usedPath, unusedPath} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	removed, err = n.RemoveUnusedBases(time.Hour)
	if err != nil || !slices.Equal(removed, []string{unused.SHA256}) {
		t.Fatalf("after the grace: removed %v, %v; want only the unused base", removed, err)
	}
	if _, err := os.Stat(usedPath); err != nil {
		t.Error("the base of a running instance's disk was removed")
	}
	// A disk an evacuation set aside (instances/<uid>.replaced-<task>) keeps its base too.
	live, _ := n.InstanceDir(uidA)
	if err := os.Rename(live, live+".replaced-7"); err != nil {
		t.Fatal(err)
	}
	if removed, err := n.RemoveUnusedBases(time.Hour); err != nil || len(removed) != 0 {
		t.Fatalf("the base of a disk set aside by an evacuation was removed: %v, %v", removed, err)
	}
	if err := os.Rename(live+".replaced-7", live); err != nil {
		t.Fatal(err)
	}
	// A quarantined disk keeps its base: without it the overlay is worth nothing.
	if err := n.QuarantineInstanceFiles(uidA, QuarantineRecord{Node: "n", Reason: "test", Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if removed, err := n.RemoveUnusedBases(time.Hour); err != nil || len(removed) != 0 {
		t.Fatalf("the base of a quarantined disk was removed: %v, %v", removed, err)
	}
	// Once its disk is gone, the used base goes too; using it again first keeps it.
	if err := n.RemoveQuarantined(uidA); err != nil {
		t.Fatal(err)
	}
	if _, err := n.EnsureImage(ctx, used); err != nil {
		t.Fatal(err)
	}
	if removed, err := n.RemoveUnusedBases(time.Hour); err != nil || len(removed) != 0 {
		t.Fatalf("a base used a moment ago was removed: %v, %v", removed, err)
	}
	if err := os.Chtimes(usedPath, past, past); err != nil {
		t.Fatal(err)
	}
	if removed, _ := n.RemoveUnusedBases(time.Hour); !slices.Equal(removed, []string{used.SHA256}) {
		t.Fatalf("removed %v, want the base no instance uses any more", removed)
	}
}

func TestRootDiskLifecycle(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img is missing: run make libvirt")
	}
	n := &Node{Root: t.TempDir()}
	base := filepath.Join(t.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	diskA, err := n.CreateRootDisk(context.Background(), uidA, base, v1.DiskFormatQCOW2, 1)
	if err != nil {
		t.Fatal(err)
	}
	info, err := exec.Command("qemu-img", "info", diskA).CombinedOutput()
	if err != nil || !strings.Contains(string(info), "backing file: "+base) || !strings.Contains(string(info), "virtual size: 1 GiB") {
		t.Fatalf("root disk is not a 1 GiB overlay on the base: %s %v", info, err)
	}
	// A second create must keep the existing disk (it holds the guest's data).
	if err := os.WriteFile(filepath.Join(filepath.Dir(diskA), "marker"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(diskA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.CreateRootDisk(context.Background(), uidA, base, v1.DiskFormatQCOW2, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(diskA), "marker")); err != nil {
		t.Errorf("a second create emptied the instance's directory: %v", err)
	}
	after, _ := os.Stat(diskA)
	if !before.ModTime().Equal(after.ModTime()) {
		t.Error("repeating CreateRootDisk rewrote an existing disk")
	}
	diskB, err := n.CreateRootDisk(context.Background(), uidB, base, v1.DiskFormatQCOW2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteInstanceFiles(uidA); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(diskA); !os.IsNotExist(err) {
		t.Error("instance A's disk survived its deletion")
	}
	if _, err := os.Stat(diskB); err != nil {
		t.Error("deleting A removed B's disk")
	}
	if _, err := os.Stat(base); err != nil {
		t.Error("deleting an instance removed its base image")
	}
	bigBase := filepath.Join(t.TempDir(), "big.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", bigBase, "2G")
	if _, err := n.CreateRootDisk(context.Background(), uidC, bigBase, v1.DiskFormatQCOW2, 1); err == nil ||
		!strings.Contains(err.Error(), "smaller than the image") {
		t.Errorf("a 1 GiB root disk over a 2 GiB image: %v", err)
	}
	if err := n.DeleteInstanceFiles("../../etc"); err == nil {
		t.Error("a path that is not a UID was accepted for deletion")
	}
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

// TestWriteConfigDrive: the drive is a FAT filesystem labelled CIDATA (cloud-init's NoCloud)
// with the files given, made once.
func TestWriteConfigDrive(t *testing.T) {
	n := &Node{Root: t.TempDir()}
	ctx := context.Background()
	path, err := n.WriteConfigDrive(ctx, uidA, map[string][]byte{
		"meta-data": []byte("instance-id: \"" + uidA + "\"\n"),
		"user-data": []byte("#cloud-config\nhostname: web\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	mtype := func(file string) string {
		cmd := exec.Command("mtype", "-i", path, "::"+file)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mtype %s: %v: %s", file, err, out)
		}
		return string(out)
	}
	if got := mtype("user-data"); got != "#cloud-config\nhostname: web\n" {
		t.Errorf("user-data = %q", got)
	}
	if got := mtype("meta-data"); !strings.Contains(got, uidA) {
		t.Errorf("meta-data = %q", got)
	}
	label, err := exec.Command("fatlabel", path).CombinedOutput()
	if err != nil || strings.TrimSpace(string(label)) != "CIDATA" {
		t.Errorf("label %q, %v; want CIDATA", label, err)
	}
	before, _ := os.Stat(path)
	if _, err := n.WriteConfigDrive(ctx, uidA, map[string][]byte{"meta-data": []byte("other")}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Stat(path); !os.SameFile(before, after) {
		t.Error("a second WriteConfigDrive replaced the drive")
	}
}
