package agent

import (
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestDetectVirtType(t *testing.T) {
	dir := t.TempDir()
	vm := filepath.Join(dir, "vm")
	metal := filepath.Join(dir, "metal")
	for path, flags := range map[string]string{vm: "fpu vme hypervisor lahf_lm", metal: "fpu vme vmx lahf_lm"} {
		if err := os.WriteFile(path, []byte("processor: 0\nflags\t\t: "+flags+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The CPU flag is read whether or not this machine's /dev/kvm works.
	if !underHypervisor(vm) || underHypervisor(metal) || underHypervisor(filepath.Join(dir, "missing")) {
		t.Errorf("hypervisor flag: vm %v, metal %v, missing %v", underHypervisor(vm), underHypervisor(metal),
			underHypervisor(filepath.Join(dir, "missing")))
	}

	if got, _, _ := DetectVirtType("kvm", vm); got != v1.VirtTypeKVM {
		t.Errorf("--virt-type=kvm gave %s", got)
	}
	if got, _, _ := DetectVirtType("qemu", metal); got != v1.VirtTypeQEMU {
		t.Errorf("--virt-type=qemu gave %s", got)
	}
	if _, _, err := DetectVirtType("xen", metal); err == nil {
		t.Error("an unknown virt type was accepted")
	}
	if got, why, _ := DetectVirtType("auto", vm); got != v1.VirtTypeQEMU {
		t.Errorf("auto inside a VM gave %s (%s), want qemu", got, why)
	}
	_, kvmErr := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	got, why, _ := DetectVirtType("auto", metal)
	if kvmErr == nil && got != v1.VirtTypeKVM {
		t.Errorf("auto on metal with a usable /dev/kvm gave %s (%s)", got, why)
	}
	if kvmErr != nil && got != v1.VirtTypeQEMU {
		t.Errorf("auto without /dev/kvm gave %s (%s)", got, why)
	}
}
