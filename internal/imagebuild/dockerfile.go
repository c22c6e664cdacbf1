// Package imagebuild assembles container images without a registry or a container engine: it
// replays a Dockerfile stage of kubenova's (Debian packages, binaries, user, entrypoint) on a root
// filesystem made by debootstrap, and writes docker-archive tarballs (hack/imagebuild, make images).
package imagebuild

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Stage is what a final Dockerfile stage of kubenova's asks for, in the terms imagebuild can
// replay without a container engine: a Debian suite and its packages, binaries from the build
// stage, a user and an entrypoint.
type Stage struct {
	Name       string
	Suite      string   // the Debian suite of the FROM line (bookworm for debian:12-slim)
	Packages   []string // what its apt-get install lines install
	Copies     []CopyFromBuild
	User       string
	Entrypoint []string
}

// CopyFromBuild is a COPY --from=build of one file the build stage writes to /out: make build
// writes the same binary, under the same name, into its bin directory.
type CopyFromBuild struct {
	Binary string // the file's name in /out (and in bin/)
	Dest   string // where the image has it
}

// debianSuites maps the Debian base images kubenova's Dockerfile may start from to their suite.
var debianSuites = map[string]string{
	"debian:12": "bookworm", "debian:12-slim": "bookworm",
	"debian:bookworm": "bookworm", "debian:bookworm-slim": "bookworm",
}

var (
	fromLine   = regexp.MustCompile(`^FROM\s+(\S+)\s+AS\s+(\S+)$`)
	aptInstall = regexp.MustCompile(`apt-get install ([^&;|]*)`)
	copyBuild  = regexp.MustCompile(`^COPY\s+--from=build\s+/out/([A-Za-z0-9._-]+)\s+(/\S+)$`)
)

// ParseStage reads the stage named target of the Dockerfile at path. Every instruction of that
// stage must be one imagebuild replays; any other is an error, so that the Dockerfile and the
// images built without an engine cannot part ways unnoticed.
func ParseStage(path, target string) (*Stage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st *Stage
	for _, line := range logicalLines(string(data)) {
		if m := fromLine.FindStringSubmatch(line); m != nil {
			if st != nil {
				break // the next stage begins
			}
			if m[2] != target {
				continue
			}
			suite, ok := debianSuites[m[1]]
			if !ok {
				return nil, fmt.Errorf("stage %s starts FROM %s: only Debian 12 bases can be replayed", target, m[1])
			}
			st = &Stage{Name: target, Suite: suite}
			continue
		}
		if st == nil {
			continue
		}
		if err := st.apply(line); err != nil {
			return nil, fmt.Errorf("%s, stage %s: %w", path, target, err)
		}
	}
	if st == nil {
		return nil, fmt.Errorf("%s has no stage %q", path, target)
	}
	if len(st.Entrypoint) == 0 {
		return nil, fmt.Errorf("%s, stage %s: no ENTRYPOINT", path, target)
	}
	return st, nil
}

func (st *Stage) apply(line string) error {
	keyword, rest, _ := strings.Cut(line, " ")
	rest = strings.TrimSpace(rest)
	switch keyword {
	case "RUN":
		installs := aptInstall.FindAllStringSubmatch(rest, -1)
		if len(installs) == 0 || !strings.HasPrefix(rest, "apt-get update") {
			return fmt.Errorf("RUN %q: only apt-get update && apt-get install can be replayed", rest)
		}
		for _, m := range installs {
			for _, word := range strings.Fields(m[1]) {
				if !strings.HasPrefix(word, "-") {
					st.Packages = append(st.Packages, word)
				}
			}
		}
	case "COPY":
		m := copyBuild.FindStringSubmatch(line)
		if m == nil {
			return fmt.Errorf("%q: only COPY --from=build /out/FILE /PATH can be replayed", line)
		}
		st.Copies = append(st.Copies, CopyFromBuild{Binary: m[1], Dest: m[2]})
	case "USER":
		st.User = rest
	case "ENTRYPOINT":
		if err := json.Unmarshal([]byte(rest), &st.Entrypoint); err != nil {
			return fmt.Errorf("ENTRYPOINT %s: only the exec form (a JSON array) can be replayed: %w", rest, err)
		}
	default:
		return fmt.Errorf("%s: an instruction imagebuild does not replay", keyword)
	}
	return nil
}

// logicalLines joins continuation lines and drops comments and blank lines.
func logicalLines(text string) []string {
	var lines []string
	var cur strings.Builder
	for _, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont)
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		if s := strings.Join(strings.Fields(cur.String()), " "); s != "" {
			lines = append(lines, s)
		}
		cur.Reset()
	}
	return lines
}
