package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// hostInfoOnly answers HostInfo and nothing else (any other call panics on the nil interface).
type hostInfoOnly struct {
	driver.Driver
	info  driver.HostInfo
	err   error
	calls int
}

func (h *hostInfoOnly) HostInfo(context.Context) (driver.HostInfo, error) {
	h.calls++
	return h.info, h.err
}

func TestChooseVirtType(t *testing.T) {
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	metal := filepath.Join(dir, "metal")
	for path, flags := range map[string]string{vm: "fpu vme hypervisor lahf_lm", metal: "fpu vme vmx lahf_lm"} {
		if err := os.WriteFile(path, []byte("processor: 0\nflags\t\t: "+flags+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !underHypervisor(vm) || underHypervisor(metal) || underHypervisor(filepath.Join(dir, "missing")) {
		t.Errorf("hypervisor flag: vm %v, metal %v, missing %v", underHypervisor(vm), underHypervisor(metal),
			underHypervisor(filepath.Join(dir, "missing")))
	}
	ctx := context.Background()

	// Told: libvirtd is never asked.
	for flag, want := range map[string]v1.VirtType{"kvm": v1.VirtTypeKVM, "qemu": v1.VirtTypeQEMU, "tcg": v1.VirtTypeQEMU} {
		c, err := NewVirtTypeChooser(flag, vm)
		if err != nil {
			t.Fatal(err)
		}
		down := &hostInfoOnly{err: errors.New("libvirtd is down")}
		if got, why, err := c.Choose(ctx, down); err != nil || got != want || down.calls != 0 {
			t.Errorf("--virt-type=%s: %s (%s), %v, %d HostInfo calls; want %s and none", flag, got, why, err, down.calls, want)
		}
	}
	if _, err := NewVirtTypeChooser("xen", metal); err == nil {
		t.Error("an unknown virt type was accepted")
	}

	// auto: what libvirtd offers, and whether the node is a VM.
	for _, tc := range []struct {
		name    string
		kvm     bool
		cpuinfo string
		want    v1.VirtType
		because string
	}{
		{"no KVM offered", false, metal, v1.VirtTypeQEMU, "offers no KVM"},
		{"KVM on bare metal", true, metal, v1.VirtTypeKVM, "bare metal"},
		{"KVM offered inside a VM", true, vm, v1.VirtTypeQEMU, "virtual machine"},
	} {
		c, err := NewVirtTypeChooser("auto", tc.cpuinfo)
		if err != nil {
			t.Fatal(err)
		}
		host := &hostInfoOnly{info: driver.HostInfo{KVM: tc.kvm}}
		got, why, err := c.Choose(ctx, host)
		if err != nil || got != tc.want || !strings.Contains(why, tc.because) {
			t.Errorf("%s: %s (%q), %v; want %s because %q", tc.name, got, why, err, tc.want, tc.because)
		}
		// Decided once: later calls do not ask again.
		if _, _, err := c.Choose(ctx, host); err != nil || host.calls != 1 {
			t.Errorf("%s: %d HostInfo calls after two Choose, want 1 (%v)", tc.name, host.calls, err)
		}
	}

	// auto while libvirtd does not answer: nothing is chosen, and the next call asks again.
	c, err := NewVirtTypeChooser("auto", metal)
	if err != nil {
		t.Fatal(err)
	}
	host := &hostInfoOnly{err: errors.New("libvirtd is down")}
	if got, _, err := c.Choose(ctx, host); err == nil || got != "" {
		t.Errorf("with libvirtd down: %q, %v; want an error and no choice", got, err)
	}
	host.err, host.info = nil, driver.HostInfo{KVM: true}
	if got, _, err := c.Choose(ctx, host); err != nil || got != v1.VirtTypeKVM || host.calls != 2 {
		t.Errorf("once libvirtd answers: %s, %v, %d HostInfo calls; want kvm, asked again", got, err, host.calls)
	}
}
