package domainxml

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
	"github.com/kubenova/kubenova/internal/driver"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func machine(virt v1.VirtType) driver.Machine {
	return driver.Machine{
		UUID: "6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10", Name: "kubenova-6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10",
		Namespace: "default", InstanceName: "web", VCPUs: 2, MemoryMiB: 512,
		RootDisk:   "/var/lib/kubenova/instances/6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10/disk",
		ConsoleLog: "/var/lib/kubenova/instances/6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10/console.log",
		VirtType:   virt,
	}
}

// rescued is m booted from a rescue disk, its root disk second.
func rescued(m driver.Machine) driver.Machine {
	m.RescueDisk = "/var/lib/kubenova/instances/6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10/disk.rescue"
	return m
}

// withConfigDrive is m with a cloud-init drive.
func withConfigDrive(m driver.Machine) driver.Machine {
	m.ConfigDrive = "/var/lib/kubenova/instances/6f1c1a52-3b0e-4d55-9a43-1f7b2f0b9a10/config-drive.img"
	return m
}

// withNICs is m with a NIC on a bridge and one on a libvirt network.
func withNICs(m driver.Machine) driver.Machine {
	m.NICs = []driver.NIC{
		{MACAddress: "fa:16:3e:12:34:56", Type: v1.NetworkBridge, Source: "br-provider"},
		{MACAddress: "52:54:00:ab:cd:ef", Type: v1.NetworkLibvirt, Source: "default"},
	}
	return m
}

func TestGolden(t *testing.T) {
	for _, c := range []struct {
		golden string
		m      driver.Machine
	}{
		{"tcg.xml", machine(v1.VirtTypeQEMU)},
		{"kvm.xml", machine(v1.VirtTypeKVM)},
		{"rescue.xml", rescued(machine(v1.VirtTypeQEMU))},
		{"config-drive.xml", withConfigDrive(rescued(machine(v1.VirtTypeQEMU)))},
		{"nics.xml", withNICs(withConfigDrive(machine(v1.VirtTypeQEMU)))},
	} {
		got, err := Build(c.m)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata", c.golden)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./internal/driver/domainxml -update to create it)", err)
		}
		if got != string(want) {
			t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", c.golden, got, want)
		}
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	x, err := Build(machine(v1.VirtTypeQEMU))
	if err != nil {
		t.Fatal(err)
	}
	meta, ok := ParseMetadata(x)
	if !ok || meta.Namespace != "default" || meta.Name != "web" {
		t.Fatalf("metadata %+v, %v", meta, ok)
	}
	if _, ok := ParseMetadata(`<domain type="qemu"><name>other</name></domain>`); ok {
		t.Error("a domain without kubenova metadata was taken for one of ours")
	}
}

func TestRefusesIncompleteMachines(t *testing.T) {
	m := machine(v1.VirtTypeQEMU)
	m.RootDisk = ""
	if _, err := Build(m); err == nil {
		t.Error("built a domain without a root disk")
	}
	m = machine(v1.VirtTypeQEMU)
	m.MemoryMiB = 0
	if _, err := Build(m); err == nil {
		t.Error("built a domain without memory")
	}
	m = withNICs(machine(v1.VirtTypeQEMU))
	m.NICs[1].MACAddress = ""
	if _, err := Build(m); err == nil {
		t.Error("built a domain with a NIC that has no MAC")
	}
}

func TestBackupCopiesTheRootDiskToAStandaloneQCOW2(t *testing.T) {
	got, err := Backup("/var/lib/kubenova/instances/u/snapshot's.qcow2")
	if err != nil {
		t.Fatal(err)
	}
	want := `<domainbackup mode="push">
  <disks>
    <disk type="file" name="vda" backup="yes">
      <driver type="qcow2"></driver>
      <target file="/var/lib/kubenova/instances/u/snapshot&#39;s.qcow2"></target>
    </disk>
  </disks>
</domainbackup>`
	if got != want {
		t.Errorf("Backup =\n%s\nwant\n%s", got, want)
	}
	if _, err := Backup(""); err == nil {
		t.Error("a backup without a target was accepted")
	}
}

// TestReplugInterfacesMovesOnlyTheNICs: a live migration's target plugs each NIC into its own
// bridge or libvirt network; nothing else of the domain changes, and a domain whose NICs are
// plugged as the target wants is left byte for byte.
func TestReplugInterfacesMovesOnlyTheNICs(t *testing.T) {
	m := withNICs(withConfigDrive(machine(v1.VirtTypeQEMU)))
	x, err := Build(m)
	if err != nil {
		t.Fatal(err)
	}
	same, changed, err := ReplugInterfaces(x, m.NICs)
	if err != nil || changed || same != x {
		t.Fatalf("plugged as wanted: changed %v, err %v", changed, err)
	}
	target := []driver.NIC{
		{MACAddress: "FA:16:3E:12:34:56", Type: v1.NetworkBridge, Source: "br-other"},
		{MACAddress: "52:54:00:ab:cd:ef", Type: v1.NetworkBridge, Source: "br-nat"},
	}
	got, changed, err := ReplugInterfaces(x, target)
	if err != nil || !changed {
		t.Fatalf("replug: changed %v, err %v", changed, err)
	}
	want := m
	want.NICs = []driver.NIC{{MACAddress: "fa:16:3e:12:34:56", Type: v1.NetworkBridge, Source: "br-other"}, target[1]}
	wantXML, err := Build(want)
	if err != nil {
		t.Fatal(err)
	}
	if got != wantXML {
		t.Errorf("replugged XML differs from the domain built with the target's NICs:\n--- got\n%s\n--- want\n%s", got, wantXML)
	}
}
