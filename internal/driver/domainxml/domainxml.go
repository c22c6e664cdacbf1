// Package domainxml is the one place that writes libvirt domain XML for an instance. It is
// pure Go (no cgo), so its golden-file tests run anywhere.
package domainxml

import (
	"encoding/xml"
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

// MetadataNamespace is the XML namespace of kubenova's element in a domain's <metadata>.
const MetadataNamespace = "https://kubenova.io/xmlns/instance/1"

// InstanceMetadata is kubenova's element in <metadata>: which Instance owns the domain, so an
// agent can recognise its domains (and orphans) from libvirt alone.
type InstanceMetadata struct {
	XMLName   xml.Name `xml:"https://kubenova.io/xmlns/instance/1 instance"`
	Namespace string   `xml:"namespace,attr"`
	Name      string   `xml:"name,attr"`
}

// Build returns the domain XML of a machine.
func Build(m driver.Machine) (string, error) {
	if m.UUID == "" || m.Name == "" || m.RootDisk == "" {
		return "", fmt.Errorf("machine %q lacks a uuid, name or root disk", m.Name)
	}
	if m.VCPUs < 1 || m.MemoryMiB < 1 {
		return "", fmt.Errorf("machine %q has %d vcpus and %d MiB", m.Name, m.VCPUs, m.MemoryMiB)
	}
	for i, nic := range m.NICs {
		if nic.MACAddress == "" || nic.Source == "" {
			return "", fmt.Errorf("machine %q: NIC %d lacks a MAC address or a source", m.Name, i)
		}
	}
	meta, err := xml.Marshal(InstanceMetadata{Namespace: m.Namespace, Name: m.InstanceName})
	if err != nil {
		return "", fmt.Errorf("metadata of %s: %w", m.Name, err)
	}
	virtType := string(m.VirtType)
	if virtType == "" {
		virtType = string(v1.VirtTypeQEMU)
	}
	port := uint(0)
	dom := &libvirtxml.Domain{
		Type:     virtType,
		Name:     m.Name,
		UUID:     m.UUID,
		Metadata: &libvirtxml.DomainMetadata{XML: string(meta)},
		Memory:   &libvirtxml.DomainMemory{Value: uint(m.MemoryMiB), Unit: "MiB"},
		VCPU:     &libvirtxml.DomainVCPU{Value: uint(m.VCPUs)},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "pc", Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		Features: &libvirtxml.DomainFeatureList{
			// ACPI lets the guest hear the power button (graceful shut off, soft reboot).
			ACPI: &libvirtxml.DomainFeature{},
			APIC: &libvirtxml.DomainFeatureAPIC{},
		},
		Clock: &libvirtxml.DomainClock{Offset: "utc"},
		// A guest that powers itself off or crashes stays down and is reported, as Nova expects;
		// a guest reboot is a reboot.
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks:      disks(m),
			Interfaces: interfaces(m),
			// The serial console is a pty (for `virsh console`) whose output QEMU also appends
			// to a file, the instance's console log.
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
				Log:    &libvirtxml.DomainChardevLog{File: m.ConsoleLog, Append: "on"},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "virtio"},
		},
	}
	if m.VirtType == v1.VirtTypeKVM {
		// KVM guests see the host CPU so that live migration between like hosts keeps working
		// and guests get the host's features; TCG emulates its default model.
		dom.CPU = &libvirtxml.DomainCPU{Mode: "host-passthrough"}
	}
	if m.ConsoleLog == "" {
		dom.Devices.Serials[0].Log = nil
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", fmt.Errorf("marshal domain %s: %w", m.Name, err)
	}
	return out, nil
}

// disks are the machine's disks: the root disk as vda or, under a rescue, the rescue disk as
// vda and the root disk as vdb, so that the rescue system boots and finds the broken disk
// second (Nova's rescue).
func disks(m driver.Machine) []libvirtxml.DomainDisk {
	disk := func(path, dev string) libvirtxml.DomainDisk {
		return libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}},
			Target: &libvirtxml.DomainDiskTarget{Dev: dev, Bus: "virtio"},
		}
	}
	disks := []libvirtxml.DomainDisk{disk(m.RootDisk, RootDiskTarget)}
	if m.RescueDisk != "" {
		disks = []libvirtxml.DomainDisk{disk(m.RescueDisk, RootDiskTarget), disk(m.RootDisk, SecondDiskTarget)}
	}
	if m.ConfigDrive != "" {
		// Last, so that the root disk keeps its device name in the guest.
		d := disk(m.ConfigDrive, ConfigDriveTarget)
		d.Driver.Type = "raw"
		d.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
		disks = append(disks, d)
	}
	return disks
}

// interfaces are the machine's NICs: virtio, with the MAC the instance keeps for its life, and
// without an option ROM (the guest boots from its disk, never from the network, and QEMU then
// needs no iPXE firmware on the node).
func interfaces(m driver.Machine) []libvirtxml.DomainInterface {
	var out []libvirtxml.DomainInterface
	for _, nic := range m.NICs {
		iface := libvirtxml.DomainInterface{
			MAC:   &libvirtxml.DomainInterfaceMAC{Address: nic.MACAddress},
			Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			ROM:   &libvirtxml.DomainROM{Enabled: "no"},
		}
		if nic.Type == v1.NetworkLibvirt {
			iface.Source = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: nic.Source}}
		} else {
			iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: nic.Source}}
		}
		out = append(out, iface)
	}
	return out
}

// ReplugInterfaces returns a domain's XML with each NIC plugged as nics says (found by MAC), and
// whether anything changed: a live migration's target may name its bridges otherwise. Only
// the interfaces' sources change; the rest of the XML is left as it is when nothing does.
func ReplugInterfaces(domainXML string, nics []driver.NIC) (string, bool, error) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(domainXML); err != nil {
		return "", false, fmt.Errorf("parse domain: %w", err)
	}
	if dom.Devices == nil {
		return domainXML, false, nil
	}
	changed := false
	for i := range dom.Devices.Interfaces {
		iface := &dom.Devices.Interfaces[i]
		if iface.MAC == nil {
			continue
		}
		for _, nic := range nics {
			if !strings.EqualFold(nic.MACAddress, iface.MAC.Address) {
				continue
			}
			switch {
			case nic.Type == v1.NetworkLibvirt && (iface.Source == nil || iface.Source.Network == nil || iface.Source.Network.Network != nic.Source):
				iface.Source = &libvirtxml.DomainInterfaceSource{Network: &libvirtxml.DomainInterfaceSourceNetwork{Network: nic.Source}}
				changed = true
			case nic.Type != v1.NetworkLibvirt && (iface.Source == nil || iface.Source.Bridge == nil || iface.Source.Bridge.Bridge != nic.Source):
				iface.Source = &libvirtxml.DomainInterfaceSource{Bridge: &libvirtxml.DomainInterfaceSourceBridge{Bridge: nic.Source}}
				changed = true
			}
		}
	}
	if !changed {
		return domainXML, false, nil
	}
	out, err := dom.Marshal()
	if err != nil {
		return "", false, fmt.Errorf("marshal domain: %w", err)
	}
	return out, true, nil
}

// ParseMetadata reads kubenova's element from a domain's XML; ok is false for domains that
// kubenova did not define.
func ParseMetadata(domainXML string) (InstanceMetadata, bool) {
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(domainXML); err != nil || dom.Metadata == nil {
		return InstanceMetadata{}, false
	}
	var meta InstanceMetadata
	// The metadata element may hold other applications' elements too; find ours.
	dec := xml.NewDecoder(strings.NewReader(dom.Metadata.XML))
	for {
		tok, err := dec.Token()
		if err != nil {
			return InstanceMetadata{}, false
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == MetadataNamespace && se.Name.Local == "instance" {
			if err := dec.DecodeElement(&meta, &se); err != nil {
				return InstanceMetadata{}, false
			}
			return meta, true
		}
	}
}

// The guest devices of the disks: the boot disk first (the root disk, or a rescue disk), then
// the root disk under a rescue, then the config drive (which the guest names after the others,
// whatever libvirt calls it).
const (
	RootDiskTarget    = "vda"
	SecondDiskTarget  = "vdb"
	ConfigDriveTarget = "vdz"
)

// Backup returns the XML of a push-mode backup that copies the root disk, flattened into a
// standalone qcow2, to target.
func Backup(target string) (string, error) {
	if target == "" {
		return "", fmt.Errorf("a backup needs a target file")
	}
	b := libvirtxml.DomainBackup{Push: &libvirtxml.DomainBackupPush{Disks: &libvirtxml.DomainBackupPushDisks{
		Disks: []libvirtxml.DomainBackupPushDisk{{
			Name: RootDiskTarget, Backup: "yes",
			Driver: &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"},
			Target: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: target}},
		}},
	}}}
	return b.Marshal()
}
