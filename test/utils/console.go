package utils

import (
	"os"
	"regexp"
	"strconv"
)

// Console is what the test guest printed on its serial console (its log keeps every boot of
// the instance). hack/README.md lists the lines the guest prints.
type Console string

// The test guest's numbered lines.
var (
	// BootCount matches "booted count=N", printed once per boot.
	BootCount = regexp.MustCompile(`booted count=(\d+)`)
	// AliveSeq matches "alive seq=K", printed every 5 seconds of guest time.
	AliveSeq = regexp.MustCompile(`alive seq=(\d+)`)
	// bootloaderBanner is the first line of every boot, before the kernel and the boot line.
	bootloaderBanner = regexp.MustCompile(`(?m)^SYSLINUX `)
)

// ReadConsole reads a console log; a log not written yet is empty.
func ReadConsole(path string) (Console, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return "", nil
	}
	return Console(b), err
}

// Last returns the number of the last line matching re, or 0.
func (c Console) Last(re *regexp.Regexp) int {
	m := re.FindAllStringSubmatch(string(c), -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// SinceLastBoot is what the guest printed since its last boot line. A guest that is booting
// again (its bootloader printed, its boot line not yet) has printed nothing of that boot: what
// its previous boot printed must not pass for it (a guest still in its bootloader does not
// hear the power button).
func (c Console) SinceLastBoot() Console {
	idx := BootCount.FindAllStringIndex(string(c), -1)
	if len(idx) == 0 {
		return c
	}
	after := idx[len(idx)-1][1]
	if banners := bootloaderBanner.FindAllStringIndex(string(c), -1); len(banners) > 0 && banners[len(banners)-1][0] > after {
		return ""
	}
	return c[after:]
}

// BetweenLastTwoBoots is what the guest printed in its boot before the last one.
func (c Console) BetweenLastTwoBoots() Console {
	idx := BootCount.FindAllStringIndex(string(c), -1)
	if len(idx) < 2 {
		return ""
	}
	return c[idx[len(idx)-2][1]:idx[len(idx)-1][0]]
}

// Listening says whether the guest has printed an alive line since boot number boots: it
// watches its ACPI power button from then on.
func (c Console) Listening(boots int) bool {
	return c.Last(BootCount) >= boots && AliveSeq.MatchString(string(c.SinceLastBoot()))
}

// Boots is how many times the guest booted in this log.
func (c Console) Boots() int {
	return len(BootCount.FindAllStringIndex(string(c), -1))
}
