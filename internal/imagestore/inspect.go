package imagestore

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

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
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path).Output()
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
