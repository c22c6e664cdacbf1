package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

const uidA = "6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10"
const uidB = "7f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a11"
const uidC = "8f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a12"

func digest(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestEnsureImageDownloadsOnceAndVerifies(t *testing.T) {
	body := []byte("not really a disk, but bytes with a digest")
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	n := &Node{Root: t.TempDir()}
	spec := v1.ImageSpec{Source: v1.ImageSource{URL: srv.URL + "/img"}, SHA256: digest(body), DiskFormat: v1.DiskFormatRaw}

	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := n.EnsureImage(context.Background(), spec)
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
	if hits.Load() != 1 {
		t.Errorf("%d downloads for ten instances of one image, want 1", hits.Load())
	}
	got, err := os.ReadFile(n.BaseImage(spec.SHA256))
	if err != nil || string(got) != string(body) {
		t.Fatalf("cached image: %q, %v", got, err)
	}
}

func TestEnsureImageRefusesWrongBytes(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "img")
	if err := os.WriteFile(src, []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := &Node{Root: filepath.Join(dir, "root"), ImageDirs: []string{dir}}
	want := digest([]byte("original"))
	_, err := n.EnsureImage(context.Background(), v1.ImageSpec{Source: v1.ImageSource{File: src}, SHA256: want})
	if err == nil || !strings.Contains(err.Error(), "has sha256") {
		t.Fatalf("wrong bytes accepted or unclear error: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(n.Root, "_base"))
	if len(entries) != 0 {
		t.Errorf("the cache kept %d files after a failed verification", len(entries))
	}
}

func TestEnsureImageReportsHTTPErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	n := &Node{Root: t.TempDir()}
	_, err := n.EnsureImage(context.Background(), v1.ImageSpec{Source: v1.ImageSource{URL: srv.URL}, SHA256: digest(nil)})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("got %v, want the HTTP status", err)
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
	before, _ := os.Stat(diskA)
	if _, err := n.CreateRootDisk(context.Background(), uidA, base, v1.DiskFormatQCOW2, 1); err != nil {
		t.Fatal(err)
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

func fileSpec(t *testing.T, path string, format v1.DiskFormat) v1.ImageSpec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return v1.ImageSpec{Source: v1.ImageSource{File: path}, SHA256: digest(b), DiskFormat: format}
}

// TestEnsureImageRefusesDangerousImages: the checksum is the tenant's own, so it proves nothing
// about what the bytes point at.
func TestEnsureImageRefusesDangerousImages(t *testing.T) {
	images := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim-disk")
	qemuImg(t, "create", "-q", "-f", "raw", victim, "1M")
	backed := filepath.Join(images, "backed.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", victim, backed)
	plain := filepath.Join(images, "plain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", plain, "1M")
	outside := filepath.Join(t.TempDir(), "outside.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", outside, "1M")
	n := &Node{Root: t.TempDir(), ImageDirs: []string{images}}
	ctx := context.Background()

	cases := []struct {
		name string
		spec v1.ImageSpec
		want string
	}{
		{"a qcow2 backed by another disk", fileSpec(t, backed, v1.DiskFormatQCOW2), "backing file"},
		{"a qcow2 declared raw", fileSpec(t, plain, v1.DiskFormatRaw), "is qcow2, not raw"},
		{"a file outside the image directories", fileSpec(t, outside, v1.DiskFormatQCOW2), "outside the directories"},
		{"a device", v1.ImageSpec{Source: v1.ImageSource{File: "/dev/zero"}, SHA256: digest(nil)}, "outside the directories"},
	}
	for _, c := range cases {
		_, err := n.EnsureImage(ctx, c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error saying %q", c.name, err, c.want)
		}
	}
	if _, err := n.EnsureImage(ctx, fileSpec(t, plain, v1.DiskFormatQCOW2)); err != nil {
		t.Errorf("a standalone qcow2 was refused: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(n.Root, "_base"))
	if len(entries) != 1 {
		t.Errorf("the cache holds %d entries, want only the accepted image", len(entries))
	}

	devices := &Node{Root: t.TempDir(), ImageDirs: []string{"/dev"}}
	if _, err := devices.EnsureImage(ctx, v1.ImageSpec{Source: v1.ImageSource{File: "/dev/zero"}, SHA256: digest(nil)}); err == nil ||
		!strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a device inside an image directory: %v", err)
	}
}

func TestEnsureImageEnforcesTheSizeLimit(t *testing.T) {
	body := make([]byte, 4096)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	defer srv.Close()
	n := &Node{Root: t.TempDir(), MaxImageBytes: 1024}
	_, err := n.EnsureImage(context.Background(), v1.ImageSpec{Source: v1.ImageSource{URL: srv.URL}, SHA256: digest(body), DiskFormat: v1.DiskFormatRaw})
	if err == nil || !strings.Contains(err.Error(), "larger than the node's limit") {
		t.Fatalf("got %v", err)
	}
}
