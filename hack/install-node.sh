#!/usr/bin/env bash
# Installs what a kubenova test node needs besides libvirt (hack/install-libvirt.sh) to run a
# real kubelet (hack/kube-node.sh): containerd, runc and the CNI plugins from Debian 12, the
# tools kube-proxy and the kubelet call (iptables, conntrack), and debootstrap for the images
# hack/imagebuild assembles. The kubelet, kube-scheduler and kube-proxy themselves are built
# from Go modules by hack/build-control-plane.sh. Run as root; idempotent; starts no daemon.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-node.sh: must run as root" >&2
  exit 1
fi

packages=(
  # the container runtime: containerd 1.6 (CRI v1) and runc; kube-node.sh starts containerd
  # by hand (no systemd)
  containerd runc
  # pods' networks: bridge, host-local, loopback in /usr/lib/cni
  containernetworking-plugins
  # kube-proxy's Services (iptables mode), and what the kubelet looks for
  iptables conntrack ethtool socat
  # hack/imagebuild's root filesystems
  debootstrap
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-node.sh: all packages present"
  exit 0
fi
echo "install-node.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A package's postinst must not start its daemon: kube-node.sh starts one containerd per node,
# each with its own configuration.
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ "$had_policy" = 0 ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
fi
trap '[ "$had_policy" = 1 ] || rm -f "$policy"' EXIT
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  apt-get update
fi
if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
  apt-get update
  apt-get install -y --no-install-recommends "${packages[@]}"
fi
