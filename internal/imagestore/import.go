package imagestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// DefaultMaxImageBytes is the largest image the image service imports unless told otherwise.
const DefaultMaxImageBytes = 64 << 30

// Reasons an import fails, as the Image's conditions carry them.
const (
	// ReasonSourceUnreachable: the url did not answer with the image, or the file cannot be
	// read. The import is tried again, since the source may come back.
	ReasonSourceUnreachable = "SourceUnreachable"
	// ReasonSourceNotAllowed: the file lies outside the directories the image service imports
	// from.
	ReasonSourceNotAllowed = "SourceNotAllowed"
	// ReasonChecksumMismatch: the bytes do not have spec.sha256.
	ReasonChecksumMismatch = "ChecksumMismatch"
	// ReasonInvalidImage: the bytes are not a standalone image of spec.diskFormat.
	ReasonInvalidImage = "InvalidImage"
	// ReasonImageTooLarge: the image is larger than the image service accepts.
	ReasonImageTooLarge = "ImageTooLarge"
	// ReasonInspectFailed: qemu-img could not read the image (it failed to run, or the file
	// could not be read). Tried again: a passing failure must not condemn an image.
	ReasonInspectFailed = "InspectFailed"
	// ReasonCorruptImage: qemu-img check found the image's tables inconsistent, whatever its
	// digest says.
	ReasonCorruptImage = "CorruptImage"
)

// ImportError is a failed import: a reason for the Image's conditions, a message for people,
// and whether trying again may help.
type ImportError struct {
	Reason    string
	Message   string
	Retryable bool
}

func (e *ImportError) Error() string { return e.Message }

// Importer is the image service's import: it copies an image from its source into the store,
// verifying that the bytes have the digest the Image names and are a standalone image of its
// format. Nothing else makes an image available: knowing a digest grants nothing.
type Importer struct {
	Store Store
	// SourceDirs are the only directories a file source may name: a tenant's manifest must not
	// make the image service read any file it can reach (its credentials, /dev/zero).
	SourceDirs []string
	// HTTPClient downloads url sources; nil means http.DefaultClient.
	HTTPClient *http.Client
	// MaxBytes caps an image's size; 0 means DefaultMaxImageBytes.
	MaxBytes int64
}

// Imported is what an import found.
type Imported struct {
	Object
	SHA256 string
	Info   Info
}

// Import stores the image's bytes under key. Errors that concern the image are *ImportError.
func (im *Importer) Import(ctx context.Context, key string, spec v1.ImageSpec) (Imported, error) {
	src, err := im.open(ctx, spec.Source)
	if err != nil {
		return Imported{}, err
	}
	defer func() { _ = src.Close() }()
	limit := im.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxImageBytes
	}
	var info Info
	from := describe(spec.Source)
	counted := &countingReader{r: io.LimitReader(src, limit+1)}
	obj, sum, err := im.Store.Put(ctx, key, counted, func(path, got string) error {
		if counted.n > limit {
			return &ImportError{Reason: ReasonImageTooLarge,
				Message: fmt.Sprintf("the image at %s is larger than the image service's limit of %d bytes", from, limit)}
		}
		if got != spec.SHA256 {
			return &ImportError{Reason: ReasonChecksumMismatch,
				Message: fmt.Sprintf("the image at %s has sha256 %s, not %s as spec.sha256 says", from, got, spec.SHA256)}
		}
		var err error
		if info, err = Inspect(ctx, path); err != nil {
			return &ImportError{Reason: ReasonInspectFailed, Retryable: true,
				Message: fmt.Sprintf("qemu-img could not read the image from %s: %v", from, err)}
		}
		if err := CheckStandalone(info, spec.DiskFormat); err != nil {
			return &ImportError{Reason: ReasonInvalidImage, Message: err.Error()}
		}
		if err := CheckConsistent(ctx, path, info.Format); errors.Is(err, ErrCorrupt) {
			return &ImportError{Reason: ReasonCorruptImage, Message: fmt.Sprintf("the image from %s: %v", from, err)}
		} else if err != nil {
			return &ImportError{Reason: ReasonInspectFailed, Retryable: true,
				Message: fmt.Sprintf("qemu-img could not check the image from %s: %v", from, err)}
		}
		return nil
	})
	if err != nil {
		var ie *ImportError
		if !errors.As(err, &ie) && counted.readErr != nil {
			// The source broke off mid-copy.
			return Imported{}, &ImportError{Reason: ReasonSourceUnreachable, Retryable: true,
				Message: fmt.Sprintf("reading the image from %s failed: %v", from, counted.readErr)}
		}
		return Imported{}, err
	}
	return Imported{Object: obj, SHA256: sum, Info: info}, nil
}

func (im *Importer) open(ctx context.Context, s v1.ImageSource) (io.ReadCloser, error) {
	switch {
	case s.File != "":
		if !im.fileAllowed(s.File) {
			return nil, &ImportError{Reason: ReasonSourceNotAllowed,
				Message: fmt.Sprintf("file %s is outside the directories the image service imports from (%s)",
					s.File, strings.Join(im.SourceDirs, ", "))}
		}
		f, err := os.Open(s.File)
		if err != nil {
			return nil, &ImportError{Reason: ReasonSourceUnreachable, Retryable: true,
				Message: fmt.Sprintf("cannot read the image file: %v", err)}
		}
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			_ = f.Close()
			return nil, &ImportError{Reason: ReasonSourceNotAllowed, Message: fmt.Sprintf("%s is not a regular file", s.File)}
		}
		return f, nil
	case s.URL != "":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
		if err != nil {
			return nil, &ImportError{Reason: ReasonSourceUnreachable, Message: fmt.Sprintf("bad url: %v", err)}
		}
		c := im.HTTPClient
		if c == nil {
			c = http.DefaultClient
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, &ImportError{Reason: ReasonSourceUnreachable, Retryable: true,
				Message: fmt.Sprintf("downloading the image failed: %v", err)}
		}
		if resp.StatusCode != http.StatusOK {
			_ = resp.Body.Close()
			return nil, &ImportError{Reason: ReasonSourceUnreachable, Retryable: true,
				Message: fmt.Sprintf("downloading the image from %s failed: the server answered %s", s.URL, resp.Status)}
		}
		return resp.Body, nil
	}
	return nil, &ImportError{Reason: ReasonSourceUnreachable, Message: "the image has no source"}
}

// fileAllowed says whether path lies inside one of the source directories, links resolved.
func (im *Importer) fileAllowed(path string) bool {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		// Judge the path as written; opening it then says it is missing.
		real = filepath.Clean(path)
	}
	for _, dir := range im.SourceDirs {
		if dir == "" {
			continue
		}
		d, err := filepath.EvalSymlinks(dir)
		if err != nil {
			d = filepath.Clean(dir)
		}
		if rel, err := filepath.Rel(d, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "." {
			return true
		}
	}
	return false
}

func describe(s v1.ImageSource) string {
	if s.URL != "" {
		return s.URL
	}
	return s.File
}

// countingReader counts what it reads and keeps its read error, so that a source that breaks
// off mid-copy is told apart from a store that failed.
type countingReader struct {
	r       io.Reader
	n       int64
	readErr error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.readErr = err
	}
	return n, err
}
