// Command imagebuild assembles kubenova's container images where no container engine and no
// registry can be reached (the CI machines): a Debian root filesystem made by debootstrap with
// the packages a Dockerfile stage installs, the binaries `make build` made in place of the
// stage's COPY --from=build, and the stage's user and entrypoint. It writes a docker-archive
// tarball that `ctr images import` loads into a node's containerd. With --scratch it makes an
// image of the given files alone (the test nodes' pause image).
//
//	imagebuild --dockerfile Dockerfile --target agent --bin bin --tag kubenova/agent:dev --out bin/images/agent.tar
//	imagebuild --scratch --file bin/pause=/pause --entrypoint /pause --user 65535:65535 --tag kubenova.local/pause:1 --out bin/images/pause.tar
//
// The Dockerfile stays the way to build the images with an engine; imagebuild refuses a stage
// with an instruction it cannot replay, so the two ways cannot part unnoticed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kubenova/kubenova/internal/imagebuild"
)

type fileFlags []imagebuild.ImageFile

func (f *fileFlags) String() string { return fmt.Sprint(*f) }

func (f *fileFlags) Set(v string) error {
	src, dest, ok := strings.Cut(v, "=")
	if !ok || src == "" || dest == "" {
		return fmt.Errorf("%q: want SOURCE=/DEST", v)
	}
	*f = append(*f, imagebuild.ImageFile{Source: src, Dest: dest})
	return nil
}

func main() {
	var (
		dockerfile = flag.String("dockerfile", "Dockerfile", "the Dockerfile whose stage to replay")
		target     = flag.String("target", "", "the Dockerfile stage to replay")
		binDir     = flag.String("bin", "bin", "where make build put the stage's binaries")
		scratch    = flag.Bool("scratch", false, "an image of the --file files alone, with no root filesystem")
		entrypoint = flag.String("entrypoint", "", "with --scratch: the entrypoint")
		user       = flag.String("user", "", "with --scratch: the user (uid:gid)")
		tag        = flag.String("tag", "", "the image's name and tag")
		out        = flag.String("out", "", "the docker-archive tarball to write")
		mirror     = flag.String("mirror", "http://deb.debian.org/debian", "the Debian mirror debootstrap installs from")
		cacheDir   = flag.String("cache", defaultCacheDir(), "where root filesystem tarballs are kept between runs")
		files      fileFlags
	)
	flag.Var(&files, "file", "with --scratch: SOURCE=/DEST, a file to put in the image (repeatable)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := buildOne(ctx, options{
		dockerfile: *dockerfile, target: *target, binDir: *binDir, scratch: *scratch,
		entrypoint: *entrypoint, user: *user, tag: *tag, out: *out, mirror: *mirror,
		cacheDir: *cacheDir, files: files,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

type options struct {
	dockerfile, target, binDir                   string
	scratch                                      bool
	entrypoint, user, tag, out, mirror, cacheDir string
	files                                        []imagebuild.ImageFile
}

func buildOne(ctx context.Context, o options) error {
	if o.tag == "" || o.out == "" {
		return fmt.Errorf("--tag and --out are required")
	}
	spec, err := specFor(ctx, o)
	if err != nil {
		return err
	}
	img, err := imagebuild.Build(spec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	if err := imagebuild.WriteArchive(o.out, o.tag, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", o.tag, digest, o.out)
	return nil
}

func specFor(ctx context.Context, o options) (imagebuild.ImageSpec, error) {
	if o.scratch {
		if o.entrypoint == "" || len(o.files) == 0 {
			return imagebuild.ImageSpec{}, fmt.Errorf("--scratch needs --entrypoint and at least one --file")
		}
		return imagebuild.ImageSpec{Files: o.files, User: o.user, Entrypoint: []string{o.entrypoint}}, nil
	}
	if o.target == "" {
		return imagebuild.ImageSpec{}, fmt.Errorf("--target is required (or --scratch)")
	}
	st, err := imagebuild.ParseStage(o.dockerfile, o.target)
	if err != nil {
		return imagebuild.ImageSpec{}, err
	}
	rootfs, err := imagebuild.RootfsTarball(ctx, o.cacheDir, o.mirror, st.Suite, st.Packages)
	if err != nil {
		return imagebuild.ImageSpec{}, err
	}
	spec := imagebuild.ImageSpec{Rootfs: rootfs, User: st.User, Entrypoint: st.Entrypoint, Env: []string{imagebuild.DebianPath}}
	for _, c := range st.Copies {
		spec.Files = append(spec.Files, imagebuild.ImageFile{Source: filepath.Join(o.binDir, c.Binary), Dest: c.Dest})
	}
	return spec, nil
}

// defaultCacheDir keeps root filesystems out of the checkout, so that a clean clone on the same
// machine (CI's) finds them, as it finds Go's module and build caches.
func defaultCacheDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "kubenova", "rootfs")
	}
	return filepath.Join(os.TempDir(), "kubenova-rootfs")
}
