package imagestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// Info is the part of `qemu-img info --output=json` kubenova reads.
type Info struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Data struct {
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// Inspect reads a disk image's header with qemu-img.
func Inspect(ctx context.Context, path string) (Info, error) {
	var info Info
	// -U: a base image may be open read-only by running guests.
	cmd := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path)
	cmd.WaitDelay = 10 * time.Second // a qemu-img stuck on a hung mount does not die when killed
	out, err := cmd.Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			msg = strings.TrimSpace(string(ee.Stderr))
		}
		return info, fmt.Errorf("qemu-img info: %s", msg)
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return info, fmt.Errorf("qemu-img info: %w", err)
	}
	return info, nil
}

// CheckStandalone refuses an image that is not what its disk format says, or that points
// outside itself: a qcow2 with a backing file or an external data file could make a guest read
// the node's disks or another instance's, whatever its checksum (Nova's image fetch refuses
// them too). The returned error is for people.
func CheckStandalone(info Info, declared v1.DiskFormat) error {
	if declared == "" {
		declared = v1.DiskFormatQCOW2
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

// ErrCorrupt says that qemu-img check found an image's metadata inconsistent: a guest booted
// from it could read garbage, and writes to its overlay could corrupt it further.
var ErrCorrupt = errors.New("the image is corrupt")

// CheckConsistent runs qemu-img check on a qcow2 image: a header that qemu-img info reads well
// says nothing of the tables behind it, and a digest only says the bytes are the ones named.
// Leaked clusters (exit status 3) cost space, not data, and pass; corruption (2) is ErrCorrupt;
// a check that could not run (1, or any other failure) is an error to try again.
func CheckConsistent(ctx context.Context, path, format string) error {
	if format != string(v1.DiskFormatQCOW2) {
		return nil // raw images have no metadata to check
	}
	cmd := exec.CommandContext(ctx, "qemu-img", "check", "-U", "-f", format, path)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		return nil
	case errors.As(err, &ee) && ee.ExitCode() == 2:
		return fmt.Errorf("%w: qemu-img check: %s", ErrCorrupt, firstLines(string(out), 3))
	}
	return fmt.Errorf("qemu-img check: %v: %s", err, firstLines(string(out), 3))
}

// firstLines is the first n non-empty lines of s, joined by "; ".
func firstLines(s string, n int) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" && len(out) < n {
			out = append(out, line)
		}
	}
	return strings.Join(out, "; ")
}
