package imagebuild

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// rootfsRecipe names how a root filesystem tarball is made; a change to the steps below changes
// it, so that a cached tarball of an older recipe is never taken.
const rootfsRecipe = "debootstrap-minbase-v1"

// pruned are the paths of a fresh debootstrap that an image does not need: apt's downloaded
// package lists and archives (as the Dockerfile's rm -rf /var/lib/apt/lists/* does), the
// documentation that debian:12-slim leaves out, and /dev, which the container runtime provides.
var pruned = []string{
	"var/lib/apt/lists", "var/cache/apt/archives", "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin",
	"usr/share/doc", "usr/share/man", "usr/share/info", "dev", "var/log/bootstrap.log",
}

// RootfsTarball returns a tarball of a Debian root filesystem of suite with packages installed,
// made by debootstrap from mirror, or the copy cacheDir holds from an earlier run of the same
// recipe, suite, mirror and packages.
func RootfsTarball(ctx context.Context, cacheDir, mirror, suite string, packages []string) (string, error) {
	pkgs := slices.Clone(packages)
	slices.Sort(pkgs)
	sum := sha256.Sum256([]byte(strings.Join(append([]string{rootfsRecipe, mirror, suite}, pkgs...), "\n")))
	out := filepath.Join(cacheDir, fmt.Sprintf("%s-%s.tar", suite, hex.EncodeToString(sum[:8])))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(cacheDir, "debootstrap-")
	if err != nil {
		return "", err
	}
	defer func() { _ = os.RemoveAll(work) }()
	root := filepath.Join(work, "root")
	args := []string{"--variant=minbase"}
	if len(pkgs) > 0 {
		args = append(args, "--include="+strings.Join(pkgs, ","))
	}
	args = append(args, suite, root, mirror)
	if err := run(ctx, "debootstrap", args...); err != nil {
		return "", err
	}
	for _, p := range pruned {
		if err := os.RemoveAll(filepath.Join(root, p)); err != nil {
			return "", err
		}
	}
	// The directories the runtime mounts over must exist; /dev is made empty again.
	if err := os.Mkdir(filepath.Join(root, "dev"), 0o755); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(root, "var/lib/apt/lists/partial"), 0o755); err != nil {
		return "", err
	}
	// One fixed time on every file, in name order: the same packages give the same layer. GNU
	// tar keeps the numeric owners, modes, links and extended attributes that packages set.
	tmp := out + ".partial"
	if err := run(ctx, "tar", "--numeric-owner", "--xattrs", "--sort=name", "--mtime=@0",
		"-C", root, "-cf", tmp, "."); err != nil {
		return "", err
	}
	return out, os.Rename(tmp, out)
}

func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}
