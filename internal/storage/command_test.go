package storage

import (
	"context"
	"testing"
	"time"
)

// A tool that outlives its context in a way a kill does not end (here a child that keeps the
// output pipe open; on a hung mount, a process stuck in the kernel) lets its caller go
// commandWaitDelay after the context ended, not when the tool is done.
func TestACommandStuckPastItsContextLetsItsCallerGo(t *testing.T) {
	defer func(was time.Duration) { commandWaitDelay = was }(commandWaitDelay)
	commandWaitDelay = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := Command(ctx, "sh", "-c", "sleep 30 & sleep 30").CombinedOutput()
	if err == nil {
		t.Fatal("the command succeeded")
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("the caller waited %s for a command whose context ended after 100ms", took)
	}
}
