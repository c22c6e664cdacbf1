package agent

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcARP is the node's IPv4 neighbour table as the kernel lists it.
const ProcARP = "/proc/net/arp"

// atfComplete is the flag of a neighbour entry whose hardware address is known (ATF_COM).
const atfComplete = 0x2

// ReadARPTable reads a neighbour table in /proc/net/arp's format and returns the addresses of
// its complete entries by MAC (lower case). This is how the agent sees the addresses of guests
// on a bridge: the node learns them as soon as a guest speaks to it. (libvirt's own ARP source
// fails on libvirt 9.0 with "wrong nlmsg len", and reads the same table.)
func ReadARPTable(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	out := map[string][]string{}
	lines := bufio.NewScanner(f)
	first := true
	for lines.Scan() {
		if first { // the header
			first = false
			continue
		}
		fields := strings.Fields(lines.Text())
		if len(fields) < 6 {
			continue
		}
		ip, flagText, mac := fields[0], fields[2], strings.ToLower(fields[3])
		flags, err := strconv.ParseUint(strings.TrimPrefix(flagText, "0x"), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("%s: flags %q: %w", path, flagText, err)
		}
		if flags&atfComplete == 0 || mac == "00:00:00:00:00:00" {
			continue
		}
		out[mac] = append(out[mac], ip)
	}
	return out, lines.Err()
}
