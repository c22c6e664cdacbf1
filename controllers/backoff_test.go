package controllers

import (
	"testing"
	"time"
)

func TestAttemptsBackOffPerObjectUpToTheLimit(t *testing.T) {
	var a attempts
	var got []time.Duration
	for range 6 {
		got = append(got, a.failed("x", 5*time.Second, time.Minute))
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v, want %v", got, want)
		}
	}
	if d := a.failed("y", 5*time.Second, time.Minute); d != 5*time.Second {
		t.Errorf("another object starts at %s, want 5s", d)
	}
	a.forget("x")
	if d := a.failed("x", 5*time.Second, time.Minute); d != 5*time.Second {
		t.Errorf("after forget: %s, want 5s", d)
	}
}
