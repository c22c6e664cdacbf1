package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/kubenova/kubenova/api/v1alpha1"
)

func TestParseNetworks(t *testing.T) {
	got, err := ParseNetworks(" provider=bridge:br0, nat=network:default ,")
	if err != nil {
		t.Fatal(err)
	}
	want := []v1.HypervisorNetwork{{Name: "provider", Type: v1.NetworkBridge, Source: "br0"}, {Name: "nat", Type: v1.NetworkLibvirt, Source: "default"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got, err := ParseNetworks(""); err != nil || len(got) != 0 {
		t.Errorf("empty: %+v, %v", got, err)
	}
	for _, bad := range []string{"provider", "provider=br0", "provider=bridge:", "Provider=bridge:br0", "p=vlan:7", "p=bridge:a,p=bridge:b"} {
		if _, err := ParseNetworks(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

// TestNetworkConfigNamesEachNICByItsMAC: cloud-init finds each NIC by its MAC and names it in
// the order of spec.networks.
func TestNetworkConfigNamesEachNICByItsMAC(t *testing.T) {
	got := string(networkConfig([]v1.NICStatus{{Network: "provider", MACAddress: "fa:16:3e:00:00:01"}, {Network: "storage", MACAddress: "fa:16:3e:00:00:02"}}))
	want := strings.Join([]string{
		"version: 2",
		"ethernets:",
		"  eth0:",
		"    match:",
		`      macaddress: "fa:16:3e:00:00:01"`,
		"    set-name: eth0",
		"    dhcp4: true",
		"  eth1:",
		"    match:",
		`      macaddress: "fa:16:3e:00:00:02"`,
		"    set-name: eth1",
		"    dhcp4: true",
		"",
	}, "\n")
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestReadARPTableKeepsCompleteEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "arp")
	table := `IP address       HW type     Flags       HW address            Mask     Device
10.254.110.174   0x1         0x2         FA:16:3E:58:68:B8     *        knbr6d19ddd5
10.254.110.175   0x1         0x0         00:00:00:00:00:00     *        knbr6d19ddd5
10.254.110.176   0x1         0x2         fa:16:3e:58:68:b8     *        knbr6d19ddd5
192.0.2.1        0x1         0x6         02:fc:00:00:00:05     *        eth0
`
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadARPTable(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"fa:16:3e:58:68:b8": {"10.254.110.174", "10.254.110.176"}, "02:fc:00:00:00:05": {"192.0.2.1"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
