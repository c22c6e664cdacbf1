package utils

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ImageTag is the name and tag a docker-archive tarball holds (its manifest.json's first
// RepoTags entry): what `make images` tagged the image with, and what the node's containerd
// knows it by after the import.
func ImageTag(tarball string) (string, error) {
	f, err := os.Open(tarball)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s has no manifest.json: not a docker-archive tarball", tarball)
		}
		if err != nil {
			return "", err
		}
		if hdr.Name != "manifest.json" {
			continue
		}
		var manifest []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
			return "", fmt.Errorf("%s: manifest.json: %w", tarball, err)
		}
		if len(manifest) == 0 || len(manifest[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s: manifest.json names no tag", tarball)
		}
		return manifest[0].RepoTags[0], nil
	}
}

// Deploy installs kubenova as `make deploy` does (kubectl apply --server-side -k), through an
// overlay of config/default that sets the images and the test flags and nothing else. The
// agents' flags: the hosts' provider network, and their listeners
// on the node's own address, since the nodes share this machine's network namespace (on
// separate machines the defaults, every address, do). The manager's: the reservation pods'
// image, the nodes' own pause image (no registry serves the default here).
func (c *Cluster) Deploy(ctx context.Context, managerImage, agentImage, pauseImage string) error {
	dir := filepath.Join(c.WorkDir, "deploy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base, err := filepath.Rel(dir, filepath.Join(RepoRoot(), "config", "default"))
	if err != nil {
		return err
	}
	agentArgs := []string{"--networks=" + c.Network.Name + "=bridge:" + c.Network.Bridge,
		"--health-probe-bind-address=$(NODE_IP):8082", "--metrics-bind-address=$(NODE_IP):8444",
		"--console-bind-address=$(NODE_IP):8445"}
	var patch strings.Builder
	for _, arg := range agentArgs {
		fmt.Fprintf(&patch, "    - op: add\n      path: /spec/template/spec/containers/0/args/-\n      value: %q\n", arg)
	}
	var managerPatch strings.Builder
	fmt.Fprintf(&managerPatch, "    - op: add\n      path: /spec/template/spec/containers/0/args/-\n      value: %q\n", "--reservation-image="+pauseImage)
	name := func(image string) string { return image[:strings.LastIndex(image, ":")] }
	tag := func(image string) string { return image[strings.LastIndex(image, ":")+1:] }
	kustomization := fmt.Sprintf(`# Written by the deployed profile's test: config/default, its images, and test flags only.
resources:
- %s
images:
- name: kubenova/manager
  newName: %s
  newTag: %q
- name: kubenova/agent
  newName: %s
  newTag: %q
patches:
- target:
    kind: DaemonSet
    name: kubenova-agent
  patch: |-
%s
- target:
    kind: Deployment
    name: kubenova-manager
  patch: |-
%s`, base, name(managerImage), tag(managerImage), name(agentImage), tag(agentImage), patch.String(), managerPatch.String())
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kustomization), 0o644); err != nil {
		return err
	}
	if out, err := c.KubectlWith(ctx, c.AdminKubeconfig, "apply", "--server-side", "--field-manager=kubenova-deploy", "-k", dir); err != nil {
		return fmt.Errorf("kubectl apply -k %s: %w: %s", dir, err, out)
	}
	return nil
}
