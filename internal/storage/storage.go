// Package storage lays out a node's storage root: a content-addressed cache of base images and
// one directory per instance holding its qcow2 root disk (an overlay on a cached base) and its
// console log.
//
//	<root>/_base/<sha256>          verified base images, shared by the instances of the node
//	<root>/instances/<uid>/disk    the instance's root disk
//	<root>/instances/<uid>/console.log
package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/imagestore"
)

// Node is one node's storage root.
type Node struct {
	Root string
	// Images is the image store the node fetches images from.
	Images imagestore.Store

	locks sync.Map // sha256 -> *sync.Mutex: one fetch per image however many instances wait
	// sizes caches the virtual size of each base image (path -> int64). A base never changes
	// (its name is its digest, and it is read-only), so a launch storm runs qemu-img info
	// once per image instead of once per instance.
	sizes sync.Map

	// identity is what the last check of the root's identity found (identity.go).
	identity identityState
}

var (
	uidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	shaPattern = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// InstanceDir is the directory of one instance's files.
func (n *Node) InstanceDir(uid string) (string, error) {
	if !uidPattern.MatchString(uid) {
		return "", fmt.Errorf("%q is not an instance UID", uid)
	}
	return filepath.Join(n.Root, "instances", uid), nil
}

// RootDisk is the path of an instance's root disk.
func (n *Node) RootDisk(uid string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "disk"), nil
}

// ConsoleLog is the path of an instance's console log.
func (n *Node) ConsoleLog(uid string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "console.log"), nil
}

// BaseImage is where a verified image with this digest is cached.
func (n *Node) BaseImage(sum string) string { return filepath.Join(n.Root, "_base", sum) }

// EnsureImage returns the path of the node's cached copy of an image, fetching it from the
// image store first if needed. The image service verified the bytes it stored, and the copy is
// checked against the same digest, so a base in the cache is exactly what the image service
// made available. Knowing a digest grants nothing: the manager hands out an AppliedImage only
// for an Image that is Available. One fetch serves however many instances wait for it.
func (n *Node) EnsureImage(ctx context.Context, img v1.AppliedImage) (string, error) {
	if !shaPattern.MatchString(img.SHA256) {
		return "", fmt.Errorf("image digest %q is not a sha256 hex digest", img.SHA256)
	}
	unlock := n.lockBase(img.SHA256)
	defer unlock()

	path := n.BaseImage(img.SHA256)
	if _, err := os.Stat(path); err == nil {
		// A use keeps the base from the cache cleanup (RemoveUnusedBases) for its grace.
		now := time.Now()
		return path, os.Chtimes(path, now, now)
	}
	if n.Images == nil {
		return "", errors.New("this node has no image store configured (--image-store)")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	src, _, err := n.Images.Open(ctx, img.UID)
	if err != nil {
		return "", fmt.Errorf("fetch %s from the image store: %w", img.ImageReference, err)
	}
	defer func() { _ = src.Close() }()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".download-*")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), src); err != nil {
		_ = tmp.Close()
		return "", fmt.Errorf("fetch %s from the image store: %w", img.ImageReference, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != img.SHA256 {
		return "", fmt.Errorf("the image store's copy of %s has sha256 %s, not %s as the image service verified", img.ImageReference, got, img.SHA256)
	}
	if err := os.Chmod(tmp.Name(), 0o444); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

// lockBase serialises the fetch and the removal of one base image.
func (n *Node) lockBase(sum string) (unlock func()) {
	mu, _ := n.locks.LoadOrStore(sum, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	return mu.(*sync.Mutex).Unlock
}

// RemoveUnusedBases deletes the cached base images that no instance disk on the node is built
// on and that have not been used for grace (Nova's image cache manager, with its
// remove_unused_original_minimum_age_seconds). A base is in use while any qcow2 file in an
// instance's directory names it as its backing file. It returns the digests it removed.
func (n *Node) RemoveUnusedBases(grace time.Duration) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(n.Root, "_base"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	used, err := n.basesInUse()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		sum := e.Name()
		if !shaPattern.MatchString(sum) || used[n.BaseImage(sum)] {
			continue
		}
		gone, err := n.removeBaseIfIdle(sum, grace)
		if err != nil {
			return removed, err
		}
		if gone {
			removed = append(removed, sum)
		}
	}
	return removed, nil
}

// removeBaseIfIdle removes one base under its lock, so that a spawn fetching or touching it
// meanwhile keeps it.
func (n *Node) removeBaseIfIdle(sum string, grace time.Duration) (bool, error) {
	unlock := n.lockBase(sum)
	defer unlock()
	path := n.BaseImage(sum)
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if time.Since(st.ModTime()) < grace {
		return false, nil
	}
	// Look again under the lock: a disk made on the base since the scan keeps it.
	used, err := n.basesInUse()
	if err != nil || used[path] {
		return false, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	n.sizes.Delete(path)
	return true, nil
}

// basesInUse lists the backing files named by the qcow2 files in the instances' directories,
// quarantined ones included: a quarantined overlay without its base would hold only the
// guest's changes, useless to whoever takes it back.
func (n *Node) basesInUse() (map[string]bool, error) {
	dirs, err := n.diskDirs()
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, dir := range dirs {
		files, err := os.ReadDir(dir)
		if err != nil {
			continue // removed meanwhile
		}
		for _, f := range files {
			if !f.Type().IsRegular() {
				continue
			}
			backing, err := qcow2BackingFile(filepath.Join(dir, f.Name()))
			if err != nil {
				return nil, err
			}
			if backing != "" {
				used[backing] = true
			}
		}
	}
	return used, nil
}

// diskDirs lists every directory that may hold an instance's disks: every directory under
// instances/ (an instance's, and one an evacuation set aside as <uid>.replaced-<task>) and
// under quarantine/. Whatever its name, a directory there may hold the last copy of a
// guest's data, so a base it names stays.
func (n *Node) diskDirs() ([]string, error) {
	var dirs []string
	for _, parent := range []string{"instances", quarantineDir} {
		entries, err := os.ReadDir(filepath.Join(n.Root, parent))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(n.Root, parent, e.Name()))
			}
		}
	}
	return dirs, nil
}

// qcow2BackingFile reads the backing file name from a qcow2 header; "" for a file that is not a
// qcow2 or has none. Reading 20 bytes is cheaper than a qemu-img per disk, every few minutes.
func qcow2BackingFile(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	var hdr [20]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return "", nil // too short to be a qcow2
	}
	if string(hdr[:4]) != "QFI\xfb" {
		return "", nil
	}
	offset, size := binary.BigEndian.Uint64(hdr[8:16]), binary.BigEndian.Uint32(hdr[16:20])
	if offset == 0 || size == 0 || size > 4096 {
		return "", nil
	}
	name := make([]byte, size)
	if _, err := f.ReadAt(name, int64(offset)); err != nil {
		return "", fmt.Errorf("read the backing file name of %s: %w", path, err)
	}
	return string(name), nil
}

// CreateRootDisk makes an instance's root disk, a qcow2 overlay on a cached base image, sized to
// sizeGiB (0 keeps the image's size). An existing disk is kept as it is: it holds the guest's
// data, so repeating a spawn never wipes it.
func (n *Node) CreateRootDisk(ctx context.Context, uid, base string, format v1.DiskFormat, sizeGiB int32) (string, error) {
	disk, err := n.RootDisk(uid)
	if err != nil {
		return "", err
	}
	return disk, n.CreateDisk(ctx, disk, base, format, sizeGiB)
}

// CreateDisk makes a qcow2 overlay on a cached base image at path, sized to sizeGiB (0 keeps
// the image's size), unless a disk is there already.
func (n *Node) CreateDisk(ctx context.Context, path, base string, format v1.DiskFormat, sizeGiB int32) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if format == "" {
		format = v1.DiskFormatQCOW2
	}
	if sizeGiB > 0 {
		// A root disk smaller than the image would cut the guest's filesystem short; Nova
		// refuses it too (FlavorDiskSmallerThanImage).
		size, err := n.virtualSize(ctx, base)
		if err != nil {
			return err
		}
		if want := int64(sizeGiB) << 30; size > want {
			return fmt.Errorf("the flavor's %d GiB root disk is smaller than the image (%d bytes)", sizeGiB, size)
		}
	}
	tmp := path + ".creating"
	_ = os.Remove(tmp)
	args := []string{"create", "-q", "-f", "qcow2", "-F", string(format), "-b", base, tmp}
	if sizeGiB > 0 {
		args = append(args, fmt.Sprintf("%dG", sizeGiB))
	}
	if out, err := Command(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("qemu-img create root disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	// The rename makes the disk appear whole or not at all, whatever line we die on.
	return os.Rename(tmp, path)
}

// virtualSize is the virtual size of a base image, read once for the cache's own bases.
func (n *Node) virtualSize(ctx context.Context, base string) (int64, error) {
	if size, ok := n.sizes.Load(base); ok {
		return size.(int64), nil
	}
	info, err := imagestore.Inspect(ctx, base)
	if err != nil {
		return 0, err
	}
	if filepath.Dir(base) == filepath.Join(n.Root, "_base") {
		n.sizes.Store(base, info.VirtualSize)
	}
	return info.VirtualSize, nil
}

// ConfigDrive is the path of an instance's cloud-init NoCloud drive.
func (n *Node) ConfigDrive(uid string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "config-drive.img"), nil
}

// configDriveBytes is the size of a config drive: room for user data up to cloud-init's
// practical limit, and small enough to make in milliseconds.
const configDriveBytes = 4 << 20

// WriteConfigDrive makes the instance's cloud-init NoCloud drive, a FAT filesystem labelled
// CIDATA holding the files named in files (meta-data, user-data), unless it exists. It
// appears whole or not at all.
func (n *Node) WriteConfigDrive(ctx context.Context, uid string, files map[string][]byte) (string, error) {
	path, err := n.ConfigDrive(uid)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	tmp := path + ".creating"
	_ = os.Remove(tmp)
	defer func() { _ = os.Remove(tmp) }()
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		return "", err
	}
	if err := os.Truncate(tmp, configDriveBytes); err != nil {
		return "", err
	}
	if out, err := Command(ctx, "mkfs.vfat", "-n", "CIDATA", tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.vfat: %w: %s", err, strings.TrimSpace(string(out)))
	}
	staging, err := os.MkdirTemp(filepath.Dir(path), ".config-drive-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(staging) }()
	names := make([]string, 0, len(files))
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(staging, name), content, 0o644); err != nil {
			return "", err
		}
		names = append(names, filepath.Join(staging, name))
	}
	args := append([]string{"-i", tmp}, names...)
	cmd := Command(ctx, "mcopy", append(args, "::")...)
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mcopy: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return path, os.Rename(tmp, path)
}

// SnapshotFile is where a snapshot of the instance's root disk is made before its upload.
func (n *Node) SnapshotFile(uid string) (string, error) {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "snapshot.qcow2"), nil
}

// ConvertStandalone writes a standalone qcow2 copy of disk (its backing chain flattened) to
// target: the snapshot of an instance whose domain does not run, so that nothing writes the
// disk meanwhile. The copy appears whole or not at all.
func (n *Node) ConvertStandalone(ctx context.Context, disk, target string) error {
	tmp := target + ".converting"
	_ = os.Remove(tmp)
	// -U: a suspended domain's disk may still carry QEMU's lock.
	if out, err := Command(ctx, "qemu-img", "convert", "-q", "-U", "-O", "qcow2", disk, tmp).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return os.Rename(tmp, target)
}

// Uploaded says whether the image store holds key already.
func (n *Node) Uploaded(ctx context.Context, key string) (bool, error) {
	if n.Images == nil {
		return false, errors.New("this node has no image store configured (--image-store)")
	}
	_, err := n.Images.Stat(ctx, key)
	if errors.Is(err, imagestore.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Upload puts a snapshot file into the image store under key, refusing anything that is not a
// standalone qcow2, and returns its size and sha256.
func (n *Node) Upload(ctx context.Context, key, path string) (imagestore.Object, string, error) {
	if n.Images == nil {
		return imagestore.Object{}, "", errors.New("this node has no image store configured (--image-store)")
	}
	f, err := os.Open(path)
	if err != nil {
		return imagestore.Object{}, "", err
	}
	defer func() { _ = f.Close() }()
	return n.Images.Put(ctx, key, f, func(path, _ string) error {
		info, err := imagestore.Inspect(ctx, path)
		if err != nil {
			return err
		}
		return imagestore.CheckStandalone(info, v1.DiskFormatQCOW2)
	})
}

// DeleteInstanceFiles removes one instance's directory and nothing else: never the image
// cache, never another instance's files.
func (n *Node) DeleteInstanceFiles(uid string) error {
	dir, err := n.InstanceDir(uid)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("delete files of instance %s: %w", uid, err)
	}
	return nil
}

// InstanceUIDs lists the instances that have files on this node.
func (n *Node) InstanceUIDs() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(n.Root, "instances"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var uids []string
	for _, e := range entries {
		if e.IsDir() && uidPattern.MatchString(e.Name()) {
			uids = append(uids, e.Name())
		}
	}
	return uids, nil
}

// RemoveStaleDownloads deletes the partial downloads of an agent that died mid-download: those
// untouched for olderThan (a download in progress writes its file all the time). Call it at
// start, before any download of this agent runs.
func (n *Node) RemoveStaleDownloads(olderThan time.Duration) error {
	stale, err := filepath.Glob(filepath.Join(n.Root, "_base", ".download-*"))
	if err != nil {
		return err
	}
	for _, f := range stale {
		// On shared storage another node's agent may be writing one right now.
		if info, err := os.Stat(f); err != nil || time.Since(info.ModTime()) < olderThan {
			continue
		}
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// CapacityGiB is the size of the filesystem holding the storage root.
func (n *Node) CapacityGiB() (int64, error) {
	if err := os.MkdirAll(n.Root, 0o755); err != nil {
		return 0, err
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.Root, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", n.Root, err)
	}
	return int64(st.Blocks) * st.Bsize >> 30, nil
}

// DiskVirtualSize reads the virtual size of a qcow2 disk from its header.
func DiskVirtualSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer func() { _ = f.Close() }()
	var hdr [32]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return 0, fmt.Errorf("%s is not a qcow2 disk: %w", path, err)
	}
	if string(hdr[:4]) != "QFI\xfb" {
		return 0, fmt.Errorf("%s is not a qcow2 disk", path)
	}
	return int64(binary.BigEndian.Uint64(hdr[24:32])), nil
}

// CreateBlankDisk makes an empty standalone qcow2 of sizeBytes at path, for a block migration
// to copy a disk into. An existing file is replaced: it can only be a copy cut short.
func (n *Node) CreateBlankDisk(ctx context.Context, path string, sizeBytes int64) error {
	if sizeBytes <= 0 {
		return fmt.Errorf("a disk of %d bytes", sizeBytes)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".creating"
	_ = os.Remove(tmp)
	if out, err := Command(ctx, "qemu-img", "create", "-q", "-f", "qcow2", tmp, fmt.Sprint(sizeBytes)).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("qemu-img create: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return os.Rename(tmp, path)
}

// commandWaitDelay is how long a command whose context ended may take to exit once killed (a
// variable for tests).
var commandWaitDelay = 10 * time.Second

// Command is exec.CommandContext for the node's storage tools (qemu-img, cp, mkfs): a tool
// stuck in the kernel on a hung mount does not die when killed, and without a WaitDelay its
// Wait, and the worker that called it, would wait as long as the mount hangs. With it, the
// call returns commandWaitDelay after its context ended, the tool left behind.
func Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = commandWaitDelay
	return cmd
}
