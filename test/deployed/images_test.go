package deployed

import (
	"archive/tar"
	"bufio"
	"errors"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kubenova/kubenova/internal/imagebuild"
	"github.com/kubenova/kubenova/test/utils"
)

// The images make images built without an engine are the ones the Dockerfile describes: the
// stage's user and entrypoint, its binaries at their paths and executable, and each package
// its apt-get line installs installed per the image's own dpkg database.
func TestTheImagesAreTheDockerfiles(t *testing.T) {
	for _, target := range []string{"manager", "agent"} {
		t.Run(target, func(t *testing.T) {
			want, err := imagebuild.ParseStage(filepath.Join(utils.RepoRoot(), "Dockerfile"), target)
			if err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(images[target], nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Config.User != want.User {
				t.Errorf("user %q, the Dockerfile's %q", cfg.Config.User, want.User)
			}
			if !reflect.DeepEqual(cfg.Config.Entrypoint, want.Entrypoint) {
				t.Errorf("entrypoint %q, the Dockerfile's %q", cfg.Config.Entrypoint, want.Entrypoint)
			}
			if cfg.OS != "linux" || cfg.Architecture != "amd64" {
				t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
			}

			executables := map[string]bool{}
			var dpkgStatus string
			fs := mutate.Extract(img)
			defer func() { _ = fs.Close() }()
			tr := tar.NewReader(fs)
			for {
				hdr, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				name := "/" + strings.TrimPrefix(hdr.Name, "./")
				if hdr.Typeflag == tar.TypeReg && hdr.Mode&0o111 != 0 {
					executables[name] = true
				}
				if name == "/var/lib/dpkg/status" {
					b, err := io.ReadAll(tr)
					if err != nil {
						t.Fatal(err)
					}
					dpkgStatus = string(b)
				}
			}
			for _, c := range want.Copies {
				if !executables[c.Dest] {
					t.Errorf("%s is not an executable file of the image", c.Dest)
				}
			}
			installed := installedPackages(dpkgStatus)
			for _, p := range want.Packages {
				if !installed[p] {
					t.Errorf("package %s, which the Dockerfile installs, is not installed in the image", p)
				}
			}
		})
	}
}

// installedPackages reads a dpkg status file: the packages whose status is "install ok
// installed".
func installedPackages(status string) map[string]bool {
	installed := map[string]bool{}
	var name string
	sc := bufio.NewScanner(strings.NewReader(status))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "Package: "); ok {
			name = v
		}
		if line == "Status: install ok installed" && name != "" {
			installed[name] = true
		}
	}
	return installed
}
