// Package benchutil holds what kubenova's bench commands share: polling, medians and the way
// figures are printed.
package benchutil

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"time"
)

// Poll checks cond every 20 ms until it holds, fails or the timeout passes.
func Poll(timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Median is the middle one of d (the upper middle for an even count).
func Median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// Ms renders a duration to the millisecond.
func Ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// Run runs a command and returns its combined output.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
