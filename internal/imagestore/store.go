// Package imagestore is kubenova's image service storage, Glance's backend: verified image bytes
// kept under keys (an image's UID) in a place the manager and every node reach. Store is the
// interface; Dir is its filesystem backend, a directory on shared storage (NFS, CephFS) in
// production and a local directory in `make dev` and the tests.
package imagestore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// ErrNotFound is returned for a key the store does not hold.
var ErrNotFound = errors.New("not in the image store")

// ErrUnavailable is returned while the store cannot say what it holds: its directory is not
// the store (an NFS mount not there yet shows an empty directory) or another store. Nothing
// must conclude from it that an image is gone.
var ErrUnavailable = errors.New("the image store is unavailable")

// Object is what the store knows of the bytes under one key.
type Object struct {
	Key  string
	Size int64
}

// Store keeps image bytes under keys. A key's bytes appear whole or not at all: a reader never
// sees a half-written image, whatever line a writer dies on.
type Store interface {
	// Put stores what r yields under key and returns its size and sha256. check runs on the
	// complete bytes (at a local path, with their sha256) before they become visible; its
	// error refuses them. An existing key is replaced.
	Put(ctx context.Context, key string, r io.Reader, check Check) (Object, string, error)
	// Open reads the bytes under key.
	Open(ctx context.Context, key string) (io.ReadCloser, Object, error)
	// Verify hashes the bytes under key and runs check on them at a local path: how the image
	// service verifies what another process uploaded.
	Verify(ctx context.Context, key string, check Check) (Object, string, error)
	// Stat says what the store holds under key, or ErrNotFound.
	Stat(ctx context.Context, key string) (Object, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// Check inspects the complete bytes of a Put before they become visible.
type Check func(path, sha256 string) error

// keyPattern: a key is a Kubernetes UID (or another lower-case name), never a path.
var keyPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Dir is the filesystem backend: one file per key under Root/images.
//
//	<root>/kubenova-image-store    the store's identity, written once by Create
//	<root>/images/<key>            the bytes, read-only
//	<root>/images/.put-<key>-*     a Put in progress (or cut short)
//
// Every call first reads the identity file: without it the directory is not the store (not
// mounted yet, most likely), and the call fails with ErrUnavailable instead of reporting a key
// missing or writing into the wrong filesystem.
type Dir struct {
	Root string
	// ID is the identity the store must have; empty accepts any store Create made.
	ID string
}

// IdentityFile is the name of the file under Root that holds the store's identity.
const IdentityFile = "kubenova-image-store"

// Identify returns the identity of the store at Root, or ErrUnavailable.
func (d *Dir) Identify() (string, error) {
	b, err := os.ReadFile(filepath.Join(d.Root, IdentityFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s has no %s (is it mounted?)", ErrUnavailable, d.Root, IdentityFile)
	} else if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrUnavailable, filepath.Join(d.Root, IdentityFile))
	}
	return id, nil
}

// available fails with ErrUnavailable unless Root holds the store (the one of ID, if set).
func (d *Dir) available() error {
	id, err := d.Identify()
	if err != nil {
		return err
	}
	if d.ID != "" && id != d.ID {
		return fmt.Errorf("%w: %s holds image store %s, not %s", ErrUnavailable, d.Root, id, d.ID)
	}
	return nil
}

// Create makes Root a store with identity id, unless it is one already; it returns the
// identity Root has. Only the first start of an installation may call it: later, an empty
// Root is an unmounted store, not a new one.
func (d *Dir) Create(id string) (string, error) {
	if got, err := d.Identify(); err == nil {
		return got, nil
	}
	if err := os.MkdirAll(d.Root, 0o755); err != nil {
		return "", err
	}
	f, err := os.OpenFile(filepath.Join(d.Root, IdentityFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if errors.Is(err, fs.ErrExist) {
		return d.Identify() // another process created it meanwhile
	} else if err != nil {
		return "", err
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return id, syncDir(d.Root)
}

var _ Store = (*Dir)(nil)

// sharedDirMode is the mode of the store's directories: the manager (uid 65532) and the agents
// (root) both write there, so they are group-writable and pass the group of the store's root on
// to what is made in them (setgid). The installation makes the root the manager's group's with
// the same mode; whoever makes a directory below it first, the other can still write there.
const sharedDirMode = fs.ModeDir | fs.ModeSetgid | 0o775

// makeSharedDir makes dir with sharedDirMode, or gives it that mode if its maker was another
// process that may not have (the umask takes group write away from a new directory).
func makeSharedDir(dir string) error {
	if err := os.MkdirAll(dir, sharedDirMode.Perm()|fs.ModeSetgid); err != nil {
		return err
	}
	info, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if info.Mode()&(fs.ModeSetgid|fs.ModePerm) == sharedDirMode&(fs.ModeSetgid|fs.ModePerm) {
		return nil
	}
	if err := os.Chmod(dir, sharedDirMode&(fs.ModeSetgid|fs.ModePerm)); err != nil {
		return fmt.Errorf("make %s group-writable for the manager and the agents: %w", dir, err)
	}
	return nil
}

func (d *Dir) path(key string) (string, error) {
	if !keyPattern.MatchString(key) {
		return "", fmt.Errorf("%q is not an image store key", key)
	}
	return filepath.Join(d.Root, "images", key), nil
}

// Put writes to a temporary name in the same directory, hashes while it writes, syncs, lets
// check inspect the complete file, and only then renames it into place.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, check Check) (Object, string, error) {
	path, err := d.path(key)
	if err != nil {
		return Object{}, "", err
	}
	if err := d.available(); err != nil {
		return Object{}, "", err
	}
	dir := filepath.Dir(path)
	if err := makeSharedDir(dir); err != nil {
		return Object{}, "", err
	}
	tmp, err := os.CreateTemp(dir, ".put-"+key+"-*")
	if err != nil {
		return Object{}, "", err
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // a no-op once renamed
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(tmp, h), readerWithContext{ctx, r})
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Object{}, "", fmt.Errorf("write image %s to the store: %w", key, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if check != nil {
		if err := check(tmp.Name(), sum); err != nil {
			return Object{}, "", err
		}
	}
	if err := os.Chmod(tmp.Name(), 0o444); err != nil {
		return Object{}, "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return Object{}, "", err
	}
	if err := syncDir(dir); err != nil {
		return Object{}, "", err
	}
	return Object{Key: key, Size: size}, sum, nil
}

// Open opens the bytes under key.
func (d *Dir) Open(_ context.Context, key string) (io.ReadCloser, Object, error) {
	path, err := d.path(key)
	if err != nil {
		return nil, Object{}, err
	}
	if err := d.available(); err != nil {
		return nil, Object{}, err
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Object{}, fmt.Errorf("image %s: %w", key, ErrNotFound)
	} else if err != nil {
		return nil, Object{}, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, Object{}, err
	}
	return f, Object{Key: key, Size: st.Size()}, nil
}

// Verify hashes the stored file and lets check inspect it in place.
func (d *Dir) Verify(ctx context.Context, key string, check Check) (Object, string, error) {
	r, obj, err := d.Open(ctx, key)
	if err != nil {
		return Object{}, "", err
	}
	defer func() { _ = r.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, readerWithContext{ctx, r}); err != nil {
		return Object{}, "", fmt.Errorf("read image %s from the store: %w", key, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if check != nil {
		path, _ := d.path(key)
		if err := check(path, sum); err != nil {
			return Object{}, "", err
		}
	}
	return obj, sum, nil
}

// Stat says what is stored under key.
func (d *Dir) Stat(_ context.Context, key string) (Object, error) {
	path, err := d.path(key)
	if err != nil {
		return Object{}, err
	}
	if err := d.available(); err != nil {
		return Object{}, err
	}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Object{}, fmt.Errorf("image %s: %w", key, ErrNotFound)
	} else if err != nil {
		return Object{}, err
	}
	return Object{Key: key, Size: st.Size()}, nil
}

// Delete removes the bytes under key.
func (d *Dir) Delete(_ context.Context, key string) error {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	if err := d.available(); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete image %s from the store: %w", key, err)
	}
	return nil
}

// RemoveStalePuts deletes what Puts cut short left behind: temporary files older than age.
// The age keeps it off the Puts of other processes that run now (an agent uploading a
// snapshot while the manager starts).
func (d *Dir) RemoveStalePuts(age time.Duration) error {
	if err := d.available(); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(d.Root, "images"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".put-") {
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < age {
			continue
		}
		if err := os.Remove(filepath.Join(d.Root, "images", e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	return f.Sync()
}

// readerWithContext stops a copy when its context ends.
type readerWithContext struct {
	ctx context.Context
	r   io.Reader
}

func (r readerWithContext) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
