package imagestore

import (
	"context"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

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

func TestImportVerifiesAndStores(t *testing.T) {
	images := t.TempDir()
	plain := filepath.Join(images, "plain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", plain, "16M")
	im := &Importer{Store: newDir(t), SourceDirs: []string{images}}
	spec := fileSpec(t, plain, v1.DiskFormatQCOW2)
	got, err := im.Import(context.Background(), keyA, spec)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(plain)
	if got.SHA256 != spec.SHA256 || got.Size != st.Size() || got.Info.Format != "qcow2" || got.Info.VirtualSize != 16<<20 {
		t.Fatalf("Import = %+v", got)
	}
	if _, err := im.Store.Stat(context.Background(), keyA); err != nil {
		t.Fatal(err)
	}
}

// TestImportRefusesBadImages: every way an Image can be wrong ends in an ImportError with a
// reason and a message a person understands, and nothing in the store.
func TestImportRefusesBadImages(t *testing.T) {
	images := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim-disk")
	qemuImg(t, "create", "-q", "-f", "raw", victim, "1M")
	backed := filepath.Join(images, "backed.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", victim, backed)
	withDataFile := filepath.Join(images, "data-file.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+victim+".data", withDataFile, "1M")
	plain := filepath.Join(images, "plain.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", plain, "1M")
	corrupt := filepath.Join(images, "corrupt.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", corrupt, "1M")
	corruptL1(t, corrupt)
	notAnImage := filepath.Join(images, "notes.txt")
	if err := os.WriteFile(notAnImage, []byte("just text"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", outside, "1M")
	if err := os.Symlink(outside, filepath.Join(images, "link.qcow2")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	wrongSum := fileSpec(t, plain, v1.DiskFormatQCOW2)
	wrongSum.SHA256 = digest([]byte("something else"))

	cases := []struct {
		name      string
		spec      v1.ImageSpec
		reason    string
		retryable bool
		says      string
	}{
		{"a wrong checksum", wrongSum, ReasonChecksumMismatch, false, "not " + wrongSum.SHA256},
		{"a qcow2 backed by another disk", fileSpec(t, backed, v1.DiskFormatQCOW2), ReasonInvalidImage, false, "backing file"},
		{"a qcow2 with an external data file", fileSpec(t, withDataFile, v1.DiskFormatQCOW2), ReasonInvalidImage, false, "external data file"},
		{"a qcow2 declared raw", fileSpec(t, plain, v1.DiskFormatRaw), ReasonInvalidImage, false, "is qcow2, not raw"},
		{"a qcow2 whose digest matches but whose tables are corrupt", fileSpec(t, corrupt, v1.DiskFormatQCOW2), ReasonCorruptImage, false, "corrupt"},
		{"text declared qcow2", fileSpec(t, notAnImage, v1.DiskFormatQCOW2), ReasonInvalidImage, false, "is raw, not qcow2"},
		{"a file outside the source directories", fileSpec(t, outside, v1.DiskFormatQCOW2), ReasonSourceNotAllowed, false, "outside the directories"},
		{"a link out of the source directories", v1.ImageSpec{Source: v1.ImageSource{File: filepath.Join(images, "link.qcow2")},
			SHA256: wrongSum.SHA256}, ReasonSourceNotAllowed, false, "outside the directories"},
		{"a device", v1.ImageSpec{Source: v1.ImageSource{File: "/dev/zero"}, SHA256: digest(nil)}, ReasonSourceNotAllowed, false, "outside the directories"},
		{"a missing file", v1.ImageSpec{Source: v1.ImageSource{File: filepath.Join(images, "missing.qcow2")}, SHA256: digest(nil)},
			ReasonSourceUnreachable, true, "no such file"},
		{"a url that answers 404", v1.ImageSpec{Source: v1.ImageSource{URL: srv.URL + "/img"}, SHA256: digest(nil)},
			ReasonSourceUnreachable, true, "404 Not Found"},
		{"a url that answers nothing", v1.ImageSpec{Source: v1.ImageSource{URL: closed.URL + "/img"}, SHA256: digest(nil)},
			ReasonSourceUnreachable, true, "connection refused"},
	}
	store := newDir(t)
	im := &Importer{Store: store, SourceDirs: []string{images}}
	for _, c := range cases {
		_, err := im.Import(context.Background(), keyA, c.spec)
		var ie *ImportError
		if !errors.As(err, &ie) {
			t.Errorf("%s: got %v, want an ImportError", c.name, err)
			continue
		}
		if ie.Reason != c.reason || ie.Retryable != c.retryable || !strings.Contains(ie.Message, c.says) {
			t.Errorf("%s: got %s (retryable %v): %s; want %s (retryable %v) saying %q", c.name, ie.Reason, ie.Retryable, ie.Message,
				c.reason, c.retryable, c.says)
		}
	}
	entries, err := os.ReadDir(filepath.Join(store.Root, "images"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("the store holds %d entries after only bad imports", len(entries))
	}

	devices := &Importer{Store: store, SourceDirs: []string{"/dev"}}
	if _, err := devices.Import(context.Background(), keyA, v1.ImageSpec{Source: v1.ImageSource{File: "/dev/zero"}, SHA256: digest(nil)}); err == nil ||
		!strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a device inside a source directory: %v", err)
	}
}

func TestImportEnforcesTheSizeLimit(t *testing.T) {
	body := make([]byte, 4096)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	defer srv.Close()
	im := &Importer{Store: newDir(t), MaxBytes: 1024}
	_, err := im.Import(context.Background(), keyA, v1.ImageSpec{Source: v1.ImageSource{URL: srv.URL}, SHA256: digest(body), DiskFormat: v1.DiskFormatRaw})
	var ie *ImportError
	if !errors.As(err, &ie) || ie.Reason != ReasonImageTooLarge {
		t.Fatalf("got %v", err)
	}
}

// corruptL1 points the first entry of a qcow2's L1 table at an L2 table far past the file's
// end: qemu-img info still reads the header well; qemu-img check finds two errors.
func corruptL1(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	header := make([]byte, 48)
	if _, err := f.ReadAt(header, 0); err != nil {
		t.Fatal(err)
	}
	l1 := binary.BigEndian.Uint64(header[40:48])
	entry := make([]byte, 8)
	binary.BigEndian.PutUint64(entry, 1<<63|0x7fff0000)
	if _, err := f.WriteAt(entry, int64(l1)); err != nil {
		t.Fatal(err)
	}
}
