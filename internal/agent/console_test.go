package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestLastLines(t *testing.T) {
	log := []byte("one\ntwo\nthree\n")
	for n, want := range map[int]string{0: "", 1: "three\n", 2: "two\nthree\n", 3: "one\ntwo\nthree\n", 9: "one\ntwo\nthree\n"} {
		if got := string(lastLines(log, n)); got != want {
			t.Errorf("last %d lines: %q, want %q", n, got, want)
		}
	}
	if got := string(lastLines([]byte("one\ntwo"), 1)); got != "two" {
		t.Errorf("a last line without its newline: %q", got)
	}
}

// TestFollowingALogThatStartsAgain: writeTail and copyFrom hand on the offset; a log that
// shrank (written anew) is followed from its start.
func TestFollowingALogThatStartsAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	var out bytes.Buffer
	if end, err := writeTail(&out, path, 5); err != nil || end != 0 || out.Len() != 0 {
		t.Fatalf("no log yet: %d, %v, %q", end, err, out.String())
	}
	if err := os.WriteFile(path, []byte("booted count=1\nalive seq=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	end, err := writeTail(&out, path, 1)
	if err != nil || out.String() != "alive seq=1\n" {
		t.Fatalf("tail 1: %q, %v", out.String(), err)
	}
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	_, _ = f.WriteString("alive seq=2\n")
	_ = f.Close()
	out.Reset()
	if end, err = copyFrom(&out, path, end); err != nil || out.String() != "alive seq=2\n" {
		t.Fatalf("followed: %q, %v", out.String(), err)
	}
	if err := os.WriteFile(path, []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if _, err = copyFrom(&out, path, end); err != nil || out.String() != "new\n" {
		t.Fatalf("after the log started again: %q, %v", out.String(), err)
	}
}
