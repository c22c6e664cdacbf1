package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// VirtTypeChooser holds the libvirt domain type the node's guests run with: KVM or TCG
// ("qemu"). --virt-type=kvm or qemu is taken as told. "auto", the default, is decided the first
// time the node's libvirtd answers, by what it offers: KVM only where libvirtd offers KVM guests
// (it, not the agent, opens /dev/kvm, so the agent's container needs no device) and the node is
// not itself a virtual machine, where nested KVM guests hang in early boot on many clouds (seen
// on kubenova's own CI machines), and a hung guest is worse than a slow one. The choice is
// reported in the Hypervisor's status with its reason.
type VirtTypeChooser struct {
	flag        string
	cpuinfoPath string

	mu     sync.Mutex
	chosen v1.VirtType
	why    string
}

// ReasonVirtTypeChosen is the Event on a Hypervisor whose agent chose, or changed, the virt type.
const ReasonVirtTypeChosen = "VirtTypeChosen"

// NewVirtTypeChooser checks --virt-type; cpuinfoPath is /proc/cpuinfo but in tests.
func NewVirtTypeChooser(flag, cpuinfoPath string) (*VirtTypeChooser, error) {
	c := &VirtTypeChooser{flag: flag, cpuinfoPath: cpuinfoPath}
	switch flag {
	case "kvm":
		c.chosen, c.why = v1.VirtTypeKVM, "--virt-type=kvm"
	case "qemu", "tcg":
		c.chosen, c.why = v1.VirtTypeQEMU, "--virt-type="+flag
	case "auto", "":
	default:
		return nil, fmt.Errorf("--virt-type must be auto, kvm or qemu, not %q", flag)
	}
	return c, nil
}

// FixedVirtType is a chooser that always answers t (tests, the simulated fleet).
func FixedVirtType(t v1.VirtType) *VirtTypeChooser {
	return &VirtTypeChooser{chosen: t, why: "fixed"}
}

// Choose returns the node's virt type and why, asking drv for its host's capabilities the first
// time if --virt-type is auto. An error means libvirtd did not answer: nothing is chosen yet. A
// nil chooser is auto, asking every time.
func (c *VirtTypeChooser) Choose(ctx context.Context, drv driver.Driver) (v1.VirtType, string, error) {
	if c == nil {
		c = &VirtTypeChooser{flag: "auto", cpuinfoPath: "/proc/cpuinfo"}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.chosen != "" {
		return c.chosen, c.why, nil
	}
	info, err := drv.HostInfo(ctx)
	if err != nil {
		return "", "", fmt.Errorf("choose KVM or TCG: %w", err)
	}
	c.chosen, c.why = c.fromHost(info)
	return c.chosen, c.why, nil
}

// fromHost is "auto"'s rule.
func (c *VirtTypeChooser) fromHost(info driver.HostInfo) (v1.VirtType, string) {
	if !info.KVM {
		return v1.VirtTypeQEMU, "auto: the node's libvirtd offers no KVM guests (no usable /dev/kvm there), so guests run with TCG"
	}
	if underHypervisor(c.cpuinfoPath) {
		return v1.VirtTypeQEMU, "auto: this node is itself a virtual machine, where nested KVM guests may hang, so guests run with TCG (--virt-type=kvm overrides)"
	}
	return v1.VirtTypeKVM, "auto: the node's libvirtd offers KVM guests and the node is bare metal"
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
