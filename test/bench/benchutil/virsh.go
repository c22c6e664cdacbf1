package benchutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/uuid"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
	"github.com/kubenova/kubenova/internal/driver/domainxml"
	"github.com/kubenova/kubenova/test/utils"
)

// BootLine is what the test guest prints on its console once it has booted.
const BootLine = "kubenova-test-guest: booted count=1"

// VirshGuest is a test guest run with virsh alone, the baseline kubenova is measured against.
type VirshGuest struct {
	host       utils.Host
	name, dir  string
	ConsoleLog string
}

// VirshLaunch boots the test guest on h the way an operator would without kubenova, with the
// domain XML kubenova writes: qemu-img create of the root disk (the agent makes one too), virsh
// define, virsh start. It returns once virsh start has. No Instance owns the domain (its
// metadata names none), so the agent's orphan cleanup leaves it alone.
func VirshLaunch(ctx context.Context, h utils.Host) (*VirshGuest, error) {
	guest, _, err := utils.GuestImage()
	if err != nil {
		return nil, err
	}
	id := uuid.NewString()
	g := &VirshGuest{host: h, name: "baseline-" + id, dir: filepath.Join(h.StorageRoot, "baseline", id)}
	if err := os.MkdirAll(g.dir, 0o755); err != nil {
		return nil, err
	}
	disk := filepath.Join(g.dir, "disk")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", guest, disk, "1G").CombinedOutput(); err != nil {
		return g, fmt.Errorf("%w: %s", err, out)
	}
	g.ConsoleLog = filepath.Join(g.dir, "console.log")
	m := driver.Machine{UUID: id, Name: g.name, VCPUs: 1, MemoryMiB: 256, RootDisk: disk, ConsoleLog: g.ConsoleLog, VirtType: v1.VirtTypeQEMU}
	x, err := domainxml.Build(m)
	if err != nil {
		return g, err
	}
	xmlPath := filepath.Join(g.dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(x), 0o644); err != nil {
		return g, err
	}
	if out, err := h.Virsh(ctx, "define", xmlPath); err != nil {
		return g, fmt.Errorf("%w: %s", err, out)
	}
	if out, err := h.Virsh(ctx, "start", g.name); err != nil {
		return g, fmt.Errorf("%w: %s", err, out)
	}
	return g, nil
}

// Remove destroys and undefines the domain and deletes its files.
func (g *VirshGuest) Remove(ctx context.Context) {
	_, _ = g.host.Virsh(ctx, "destroy", g.name)
	_, _ = g.host.Virsh(ctx, "undefine", g.name)
	_ = os.RemoveAll(g.dir)
}

// Booted says whether the console log at path shows the test guest's boot line.
func Booted(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	return strings.Contains(string(b), BootLine), err
}
