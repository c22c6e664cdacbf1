package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ImageFile is a file of the host put into an image at dest.
type ImageFile struct {
	Source, Dest string
}

// ImageSpec is one image: an optional root filesystem tarball, files on top, and the config.
type ImageSpec struct {
	Rootfs     string // "" for an image from scratch
	Files      []ImageFile
	User       string
	Entrypoint []string
	Env        []string
}

// DebianPath is the PATH of Debian's own images (debian:12-slim), so that the entrypoint's
// children find qemu-img and the rest where the Dockerfile's image has them.
const DebianPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Build assembles spec into an image for linux/amd64.
func Build(spec ImageSpec) (v1.Image, error) {
	var layers []v1.Layer
	if spec.Rootfs != "" {
		l, err := tarball.LayerFromFile(spec.Rootfs, tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	if len(spec.Files) > 0 {
		data, err := filesLayer(spec.Files)
		if err != nil {
			return nil, err
		}
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}, tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.User = spec.User
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Env = spec.Env
	return mutate.ConfigFile(img, cfg)
}

// filesLayer is a layer tarball of files, each at its destination with its parent directories,
// executable, owned by root, with one fixed time.
func filesLayer(files []ImageFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	for _, f := range files {
		if !path.IsAbs(f.Dest) || path.Clean(f.Dest) != f.Dest {
			return nil, fmt.Errorf("destination %q: not a clean absolute path", f.Dest)
		}
		rel := strings.TrimPrefix(f.Dest, "/")
		for dir := path.Dir(rel); dir != "."; dir = path.Dir(dir) {
			if dirs[dir] {
				break
			}
			dirs[dir] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		data, err := os.ReadFile(f.Source)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(data)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img tagged tag as a docker-archive tarball (what `docker save` writes and
// `ctr images import` reads), by way of a temporary file so that a reader never sees half.
func WriteArchive(out, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	tmp := out + ".partial"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}
