package libvirt

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// TestBackupDiskCopiesARunningGuestsDisk: the copy is a standalone qcow2 of the whole disk,
// made while the guest keeps running (same run, never paused), and it boots.
func TestBackupDiskCopiesARunningGuestsDisk(t *testing.T) {
	ctx := context.Background()
	d, err := New(hostURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	m := machine(t, "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e0b1")
	defer func() { _ = d.Destroy(ctx, m.UUID) }()
	if err := d.Spawn(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the guest's boot line", 90*time.Second, func() (bool, error) {
		b, err := os.ReadFile(m.ConsoleLog)
		return strings.Contains(string(b), "kubenova-test-guest: booted count=1"), ignoreMissing(err)
	})
	before, err := d.State(ctx, m.UUID)
	if err != nil {
		t.Fatal(err)
	}

	target := filepath.Join(filepath.Dir(m.RootDisk), "snapshot.qcow2")
	if err := os.WriteFile(target, []byte("left by an agent that died"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.BackupDisk(ctx, m.UUID, target); err != nil {
		t.Fatal(err)
	}
	after, err := d.State(ctx, m.UUID)
	if err != nil || after.Power != v1.PowerStateRunning || after.RunID != before.RunID {
		t.Fatalf("the guest did not keep running through the backup: %+v -> %+v (%v)", before, after, err)
	}
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", target).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
		Backing     string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.Backing != "" || info.VirtualSize != 48<<20 {
		t.Fatalf("the copy is %+v; want a standalone 48 MiB qcow2", info)
	}

	// The copy boots: a second domain on it finds the first boot's count on its disk.
	copyM := machine(t, "0c6b1b7e-52a3-4d8f-9c59-0d5ad0b5e0b2")
	copyM.RootDisk = target
	defer func() { _ = d.Destroy(ctx, copyM.UUID) }()
	if err := d.Spawn(ctx, copyM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the copy's boot line", 90*time.Second, func() (bool, error) {
		b, err := os.ReadFile(copyM.ConsoleLog)
		return strings.Contains(string(b), "kubenova-test-guest: booted count=2"), ignoreMissing(err)
	})

	if err := d.PowerOff(ctx, m.UUID); err != nil {
		t.Fatal(err)
	}
	if err := d.BackupDisk(ctx, m.UUID, target+".2"); err == nil {
		t.Error("a backup of a domain that is not running succeeded")
	}
}

// ignoreMissing hides a missing file (not written yet) from waitFor.
func ignoreMissing(err error) error {
	if os.IsNotExist(err) {
		return nil
	}
	return err
}
