package agent

import "testing"

func TestBracketIPv6Host(t *testing.T) {
	for in, want := range map[string]string{
		"qemu+tls://fd00::7/system":          "qemu+tls://[fd00::7]/system",
		"qemu+tls://root@fd00::7/system":     "qemu+tls://root@[fd00::7]/system",
		"qemu+tls://[fd00::7]/system":        "qemu+tls://[fd00::7]/system",
		"qemu+tls://[fd00::7]:16514/system":  "qemu+tls://[fd00::7]:16514/system",
		"qemu+tls://192.0.2.7/system":        "qemu+tls://192.0.2.7/system",
		"qemu+tls://node-1.example/system":   "qemu+tls://node-1.example/system",
		"qemu:///system":                     "qemu:///system",
		"qemu+unix:///system?socket=/r/sock": "qemu+unix:///system?socket=/r/sock",
		"qemu+tcp://::1":                     "qemu+tcp://[::1]",
	} {
		if got := BracketIPv6Host(in); got != want {
			t.Errorf("BracketIPv6Host(%q) = %q, want %q", in, got, want)
		}
	}
}
