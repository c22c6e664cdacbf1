package utils

import "testing"

// A guest booting again has printed nothing of its new boot yet, whatever the previous printed.
func TestSinceLastBootStartsAtTheBootloader(t *testing.T) {
	settled := Console("SYSLINUX 6.04\nkubenova-test-guest: booted count=3\nkubenova-test-guest: alive seq=1\n")
	if !settled.Listening(3) {
		t.Error("a guest that printed an alive line since its boot line listens")
	}
	rebooting := settled + "\nSYSLINUX 6.04\n"
	if got := rebooting.SinceLastBoot(); got != "" {
		t.Errorf("a guest in its bootloader printed %q since its last boot", got)
	}
	if rebooting.Listening(3) {
		t.Error("a guest in its bootloader does not hear the power button")
	}
	booted := rebooting + "kubenova-test-guest: booted count=4\nkubenova-test-guest: alive seq=1\n"
	if !booted.Listening(4) || booted.SinceLastBoot().Last(AliveSeq) != 1 {
		t.Errorf("after the next boot line: %q", booted.SinceLastBoot())
	}
}
