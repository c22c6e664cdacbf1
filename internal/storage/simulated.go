package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// SimulatedDisks stands in for a node's image cache and disk making on a simulated node (the
// agent's --driver=fake): it fetches nothing and writes an empty file where the root disk
// would be, so that everything else the agent does (owner records, task marks, the orphan
// cleanup) runs as on a real node while the bench measures the control plane, not qemu-img.
type SimulatedDisks struct {
	Node *Node
	// Capacity is the disk the node reports, in GiB.
	Capacity int64
}

// EnsureImage checks the digest as a real node would and returns a path that is never read.
func (s *SimulatedDisks) EnsureImage(_ context.Context, img v1.AppliedImage) (string, error) {
	if !shaPattern.MatchString(img.SHA256) {
		return "", fmt.Errorf("image digest %q is not a sha256 hex digest", img.SHA256)
	}
	return s.Node.BaseImage(img.SHA256), nil
}

// CreateRootDisk writes an empty root disk, keeping one that exists.
func (s *SimulatedDisks) CreateRootDisk(ctx context.Context, uid, base string, format v1.DiskFormat, sizeGiB int32) (string, error) {
	disk, err := s.Node.RootDisk(uid)
	if err != nil {
		return "", err
	}
	return disk, s.CreateDisk(ctx, disk, base, format, sizeGiB)
}

// CreateDisk writes an empty disk at path, keeping one that exists.
func (s *SimulatedDisks) CreateDisk(_ context.Context, path, _ string, _ v1.DiskFormat, _ int32) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// CapacityGiB is the configured capacity.
func (s *SimulatedDisks) CapacityGiB() (int64, error) { return s.Capacity, nil }
