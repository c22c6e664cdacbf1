#!/usr/bin/env bash
# Builds etcd and the Kubernetes binaries (below) from Go modules into bin/.
#
# setup-envtest cannot download its binaries here, so the control plane for envtest, the e2e
# harness and `make dev` is compiled from the published modules. Each binary is built in a
# throwaway module (k8s.io/kubernetes and etcd carry replace directives, which `go install`
# refuses) and stamped with a version file so that a second run is a no-op.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN_DIR:-$root/bin}
mkdir -p "$bin"

staging_minor=${KUBE_VERSION#v1.}            # 37.2
staging_version="v0.${staging_minor}"        # v0.37.2
major=1
minor=${staging_minor%%.*}

up_to_date() { # binary version
  [ -x "$bin/$1" ] && [ -f "$bin/.$1.version" ] && [ "$(cat "$bin/.$1.version")" = "$2" ]
}

# kube_module makes a throwaway module that can build packages of k8s.io/kubernetes: every
# ./staging replace of kubernetes' own go.mod is pointed at the published staging module.
kube_module() {
  local dir=$1
  (
    cd "$dir"
    go mod init kubenova.local/build-kube >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
      while read -r m; do
        go mod edit -replace "${m}=${m}@${staging_version}"
      done
    local name
    for name in "${kube_binaries[@]}"; do
      go get -tool "k8s.io/kubernetes/cmd/${name}@${KUBE_VERSION}" >/dev/null
    done
  )
}

kube_ldflags() {
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# The Kubernetes binaries built (KUBE_BINARIES): by default the control plane of the envtest,
# e2e and `make dev` clusters (kube-apiserver, kube-controller-manager, kubectl); `make
# node-binaries` asks for what real nodes and a whole cluster add for the deployed profile
# (kubelet, kube-scheduler, kube-proxy). etcd is always built.
read -r -a kube_binaries <<<"${KUBE_BINARIES:-kube-apiserver kube-controller-manager kubectl}"

# build_kube builds every missing binary of kube_binaries, of one version. kubectl is built rather
# than taken from the machine so that its version matches the API server's on every machine.
# All are static (CGO_ENABLED=0): the kubelet needs no cgo for cgroupfs and the CRI.
build_kube() {
  local work name missing=()
  for name in "${kube_binaries[@]}"; do
    up_to_date "$name" "$KUBE_VERSION" || missing+=("$name")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "building ${missing[*]} $KUBE_VERSION (cold: several minutes)" >&2
  work=$(mktemp -d)
  kube_module "$work"
  for name in "${missing[@]}"; do
    (cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags "$(kube_ldflags)" -o "$bin/$name" "k8s.io/kubernetes/cmd/$name")
    echo "$KUBE_VERSION" >"$bin/.$name.version"
  done
  rm -rf "$work"
}

build_etcd() {
  local work
  up_to_date etcd "$ETCD_VERSION" && return 0
  echo "building etcd $ETCD_VERSION" >&2
  work=$(mktemp -d)
  (
    cd "$work"
    go mod init kubenova.local/build-etcd >/dev/null 2>&1
    go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >/dev/null
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
  )
  echo "$ETCD_VERSION" >"$bin/.etcd.version"
  rm -rf "$work"
}

build_etcd
build_kube
ls -l "$bin"
