package agent

import (
	"fmt"
	"os"
	"strings"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

// DetectVirtType chooses between KVM and TCG. "kvm" and "qemu" are taken as told; "auto" uses
// KVM only where /dev/kvm opens and the node is not itself a virtual machine: nested KVM guests
// hang in early boot on many clouds (seen on kubenova's own CI machines), and a hung guest is
// worse than a slow one. Production nodes on bare metal get KVM; pass --virt-type=kvm to insist.
func DetectVirtType(flag, cpuinfoPath string) (v1.VirtType, string, error) {
	switch flag {
	case "kvm":
		return v1.VirtTypeKVM, "--virt-type=kvm", nil
	case "qemu", "tcg":
		return v1.VirtTypeQEMU, "--virt-type=" + flag, nil
	case "auto", "":
	default:
		return "", "", fmt.Errorf("--virt-type must be auto, kvm or qemu, not %q", flag)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return v1.VirtTypeQEMU, fmt.Sprintf("/dev/kvm is unusable (%v): using TCG", err), nil
	}
	_ = f.Close()
	if underHypervisor(cpuinfoPath) {
		return v1.VirtTypeQEMU, "this node is itself a virtual machine, where nested KVM guests may hang: using TCG (--virt-type=kvm overrides)", nil
	}
	return v1.VirtTypeKVM, "/dev/kvm is usable on bare metal", nil
}

// underHypervisor looks for the "hypervisor" CPU flag that virtual machines show.
func underHypervisor(cpuinfoPath string) bool {
	b, err := os.ReadFile(cpuinfoPath)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "flags") {
			for _, f := range strings.Fields(line) {
				if f == "hypervisor" {
					return true
				}
			}
			return false
		}
	}
	return false
}
