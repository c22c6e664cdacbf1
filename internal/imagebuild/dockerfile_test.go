package imagebuild

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The repository's Dockerfile, read as imagebuild replays it: the manager's and the agent's
// stages give what the Dockerfile says, and nothing in them is skipped.
func TestTheDockerfilesStagesAsReplayed(t *testing.T) {
	manager, err := ParseStage("../../Dockerfile", "manager")
	if err != nil {
		t.Fatal(err)
	}
	want := &Stage{
		Name: "manager", Suite: "bookworm", Packages: []string{"qemu-utils", "ca-certificates"},
		Copies: []CopyFromBuild{{Binary: "manager", Dest: "/manager"}},
		User:   "65532:65532", Entrypoint: []string{"/manager"},
	}
	if !reflect.DeepEqual(manager, want) {
		t.Errorf("manager stage: got %+v, want %+v", manager, want)
	}
	agent, err := ParseStage("../../Dockerfile", "agent")
	if err != nil {
		t.Fatal(err)
	}
	want = &Stage{
		Name: "agent", Suite: "bookworm",
		Packages: []string{"libvirt0", "qemu-utils", "dosfstools", "mtools", "ca-certificates"},
		Copies:   []CopyFromBuild{{Binary: "agent", Dest: "/agent"}},
		User:     "0:0", Entrypoint: []string{"/agent"},
	}
	if !reflect.DeepEqual(agent, want) {
		t.Errorf("agent stage: got %+v, want %+v", agent, want)
	}
}

// A stage with an instruction imagebuild would not replay is refused, naming it.
func TestAStageItCannotReplayIsRefused(t *testing.T) {
	for _, tc := range []struct{ name, stage, wantErr string }{
		{"ENV", "ENV FOO=bar", "ENV: an instruction imagebuild does not replay"},
		{"other RUN", "RUN useradd kubenova", "only apt-get update && apt-get install"},
		{"COPY from the context", "COPY config/ /etc/kubenova/", "only COPY --from=build"},
		{"shell-form ENTRYPOINT", "ENTRYPOINT /manager --x", "only the exec form"},
		{"another base", "", "only Debian 12 bases"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := "FROM debian:12-slim AS x\n"
			if tc.stage == "" {
				from = "FROM alpine:3 AS x\n"
			}
			path := filepath.Join(t.TempDir(), "Dockerfile")
			text := from + tc.stage + "\nENTRYPOINT [\"/x\"]\n"
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ParseStage(path, "x")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// Continuation lines are one instruction; comments between stages are skipped.
func TestContinuationLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "Dockerfile")
	text := "FROM golang:1 AS build\nRUN make\n# the image\nFROM debian:12-slim AS x\nRUN apt-get update && \\\n  apt-get install -y a \\\n  b && rm -rf /var/lib/apt/lists/*\nENTRYPOINT [\"/x\"]\nFROM debian:12 AS y\nRUN other\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := ParseStage(path, "x")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st.Packages, []string{"a", "b"}) {
		t.Errorf("packages %v, want [a b]", st.Packages)
	}
}
