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
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Node is one node's storage root.
type Node struct {
	Root string
	// HTTPClient downloads images; nil means http.DefaultClient.
	HTTPClient *http.Client
	// ImageDirs are the only directories an Image's file source may name. A tenant's manifest
	// must not make the agent read any file of the node (its disks, /dev/zero).
	ImageDirs []string
	// MaxImageBytes caps an image's size; 0 means DefaultMaxImageBytes.
	MaxImageBytes int64

	locks sync.Map // sha256 -> *sync.Mutex: one download per image however many instances wait
	// sizes caches the virtual size of each base image (path -> int64). A base never changes
	// (its name is its digest, and it is read-only), so a launch storm runs qemu-img info
	// once per image instead of once per instance.
	sizes sync.Map
}

// DefaultMaxImageBytes is the largest image a node accepts unless told otherwise.
const DefaultMaxImageBytes = 64 << 30

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

// EnsureImage returns the path of the cached, verified copy of an image, fetching it first if
// needed. Bytes that do not match the digest are refused and never land in the cache.
func (n *Node) EnsureImage(ctx context.Context, spec v1.ImageSpec) (string, error) {
	if !shaPattern.MatchString(spec.SHA256) {
		return "", fmt.Errorf("image digest %q is not a sha256 hex digest", spec.SHA256)
	}
	mu, _ := n.locks.LoadOrStore(spec.SHA256, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()

	path := n.BaseImage(spec.SHA256)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	src, err := n.open(ctx, spec.Source)
	if err != nil {
		return "", err
	}
	defer func() { _ = src.Close() }()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".download-*")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	h := sha256.New()
	limit := n.MaxImageBytes
	if limit <= 0 {
		limit = DefaultMaxImageBytes
	}
	copied, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(src, limit+1))
	if err != nil {
		_ = tmp.Close()
		return "", fmt.Errorf("fetch image from %s: %w", describe(spec.Source), err)
	}
	if copied > limit {
		_ = tmp.Close()
		return "", fmt.Errorf("image from %s is larger than the node's limit of %d bytes", describe(spec.Source), limit)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != spec.SHA256 {
		return "", fmt.Errorf("image from %s has sha256 %s, want %s", describe(spec.Source), got, spec.SHA256)
	}
	if err := inspect(ctx, tmp.Name(), spec.DiskFormat); err != nil {
		return "", fmt.Errorf("image from %s: %w", describe(spec.Source), err)
	}
	if err := os.Chmod(tmp.Name(), 0o444); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	return path, nil
}

func describe(s v1.ImageSource) string {
	if s.URL != "" {
		return s.URL
	}
	return s.File
}

func (n *Node) open(ctx context.Context, s v1.ImageSource) (io.ReadCloser, error) {
	switch {
	case s.File != "":
		if !n.fileAllowed(s.File) {
			return nil, fmt.Errorf("image file %s is outside the directories this node serves images from (%s)",
				s.File, strings.Join(n.ImageDirs, ", "))
		}
		f, err := os.Open(s.File)
		if err != nil {
			return nil, fmt.Errorf("open image file: %w", err)
		}
		if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
			_ = f.Close()
			return nil, fmt.Errorf("image file %s is not a regular file", s.File)
		}
		return f, nil
	case s.URL != "":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
		if err != nil {
			return nil, fmt.Errorf("image url: %w", err)
		}
		client := n.HTTPClient
		if client == nil {
			client = http.DefaultClient
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("download image: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			_ = resp.Body.Close()
			return nil, fmt.Errorf("download image from %s: %s", s.URL, resp.Status)
		}
		return resp.Body, nil
	}
	return nil, errors.New("image has no source")
}

// fileAllowed says whether path lies inside one of the image directories, links resolved.
func (n *Node) fileAllowed(path string) bool {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false
	}
	for _, dir := range n.ImageDirs {
		d, err := filepath.EvalSymlinks(dir)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(d, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "." {
			return true
		}
	}
	return false
}

// imageInfo is the part of `qemu-img info --output=json` that inspect reads.
type imageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Data struct {
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// inspect refuses images that are not what they claim, or that point outside themselves: a
// qcow2 with a backing file or an external data file could make a guest read the node's disks
// or another instance's, whatever its checksum (Nova's image fetch refuses them too).
func inspect(ctx context.Context, path string, declared v1.DiskFormat) error {
	if declared == "" {
		declared = v1.DiskFormatQCOW2
	}
	info, err := readInfo(ctx, path)
	if err != nil {
		return err
	}
	if info.Format != string(declared) {
		return fmt.Errorf("the image is %s, not %s as its diskFormat says", info.Format, declared)
	}
	if info.BackingFilename != "" {
		return fmt.Errorf("the image has a backing file (%s); images must be standalone", info.BackingFilename)
	}
	if info.FormatSpecific.Data.DataFile != "" {
		return fmt.Errorf("the image has an external data file (%s); images must be standalone", info.FormatSpecific.Data.DataFile)
	}
	return nil
}

func readInfo(ctx context.Context, path string) (imageInfo, error) {
	var info imageInfo
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", path).Output()
	if err != nil {
		return info, fmt.Errorf("qemu-img info: %w", err)
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return info, fmt.Errorf("qemu-img info: %w", err)
	}
	return info, nil
}

// CreateRootDisk makes an instance's root disk, a qcow2 overlay on a cached base image, sized to
// sizeGiB (0 keeps the image's size). An existing disk is kept as it is: it holds the guest's
// data, so repeating a spawn never wipes it.
func (n *Node) CreateRootDisk(ctx context.Context, uid, base string, format v1.DiskFormat, sizeGiB int32) (string, error) {
	disk, err := n.RootDisk(uid)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(disk); err == nil {
		return disk, nil
	}
	if err := os.MkdirAll(filepath.Dir(disk), 0o755); err != nil {
		return "", err
	}
	if format == "" {
		format = v1.DiskFormatQCOW2
	}
	if sizeGiB > 0 {
		// A root disk smaller than the image would cut the guest's filesystem short; Nova
		// refuses it too (FlavorDiskSmallerThanImage).
		size, err := n.virtualSize(ctx, base)
		if err != nil {
			return "", err
		}
		if want := int64(sizeGiB) << 30; size > want {
			return "", fmt.Errorf("the flavor's %d GiB root disk is smaller than the image (%d bytes)", sizeGiB, size)
		}
	}
	tmp := disk + ".creating"
	_ = os.Remove(tmp)
	args := []string{"create", "-q", "-f", "qcow2", "-F", string(format), "-b", base, tmp}
	if sizeGiB > 0 {
		args = append(args, fmt.Sprintf("%dG", sizeGiB))
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("qemu-img create root disk: %w: %s", err, strings.TrimSpace(string(out)))
	}
	// The rename makes the disk appear whole or not at all, whatever line we die on.
	if err := os.Rename(tmp, disk); err != nil {
		return "", err
	}
	return disk, nil
}

// virtualSize is the virtual size of a base image, read once for the cache's own bases.
func (n *Node) virtualSize(ctx context.Context, base string) (int64, error) {
	if size, ok := n.sizes.Load(base); ok {
		return size.(int64), nil
	}
	info, err := readInfo(ctx, base)
	if err != nil {
		return 0, err
	}
	if filepath.Dir(base) == filepath.Join(n.Root, "_base") {
		n.sizes.Store(base, info.VirtualSize)
	}
	return info.VirtualSize, nil
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

// RemoveStaleDownloads deletes the partial downloads of an agent that died mid-download. Call
// it at start, before any download runs.
func (n *Node) RemoveStaleDownloads() error {
	stale, err := filepath.Glob(filepath.Join(n.Root, "_base", ".download-*"))
	if err != nil {
		return err
	}
	for _, f := range stale {
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
