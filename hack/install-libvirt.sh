#!/usr/bin/env bash
# Installs libvirt + QEMU and the tools that hack/libvirt-hosts.sh and hack/build-test-guest.sh
# need, and prepares the machine-wide libvirt configuration they copy. Run as root on Debian 12
# (a developer machine or CI). Idempotent: on a warm machine it installs nothing and only
# re-checks users, directories and the configuration block. It never starts a daemon.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-libvirt.sh: must run as root" >&2
  exit 1
fi

packages=(
  # libvirt and QEMU (TCG is enough; KVM is not used)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  # headers for libvirt.org/go/libvirt (cgo)
  libvirt-dev pkg-config
  # build-test-guest.sh
  busybox-static cpio gzip mtools syslinux syslinux-common dosfstools kmod zstd xz-utils
  # libvirt-hosts.sh (unshare, nsenter, mount; the provider network's bridge and DHCP server)
  util-linux mount procps iproute2 dnsmasq-base
  # the e2e suite pings guests
  iputils-ping
)

missing=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-libvirt.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists only when there are none or when the install fails with the
  # lists we have (stale lists name package versions the mirror no longer carries).
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update
  fi
  if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${packages[@]}"
  fi
else
  echo "install-libvirt.sh: all packages present"
fi

# Users and groups that libvirt's QEMU driver looks up at start-up even though qemu.conf
# below makes QEMU run as root (the Debian packages create them through systemd-sysusers or
# postinst scripts that may not have run, e.g. in containers without systemd).
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
if ! getent passwd libvirt-qemu >/dev/null; then
  useradd --system --gid libvirt-qemu --groups kvm --home-dir /var/lib/libvirt \
    --no-create-home --shell /usr/sbin/nologin libvirt-qemu
fi
getent group libvirt >/dev/null || groupadd --system libvirt

# /dev/kvm as Debian's udev rules make it (root:kvm, 0660), which machines without udev lack:
# libvirt's QEMU capability cache checks whether the QEMU user (libvirt-qemu, in group kvm) can
# open it, and a device only root can open makes every API call of a host whose QEMU runs as
# libvirt-qemu probe QEMU again (seconds each; hack/libvirt-hosts.sh's production profile).
if [ -c /dev/kvm ]; then
  chgrp kvm /dev/kvm
  chmod 0660 /dev/kvm
fi

# libvirtd -d exits early if its log directory is missing.
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt /etc/libvirt

# qemu.conf: run QEMU as root without a security driver or cgroups (none of those work in a
# container without systemd), and let libvirtd write the QEMU logs itself
# (stdio_handler = "file") so no virtlogd is needed next to each libvirtd, and keep QEMU in
# libvirtd's mount namespace (namespaces = [ ]; a private /dev buys nothing without a security
# driver).
# The block between the markers is rewritten on every run; the rest of the file is kept.
qemu_conf=/etc/libvirt/qemu.conf
begin='# BEGIN kubenova: written by hack/install-libvirt.sh'
end='# END kubenova'
touch "$qemu_conf"
tmp=$(mktemp "$qemu_conf.XXXXXX")
awk -v b="$begin" -v e="$end" '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' \
  "$qemu_conf" >"$tmp"
cat >>"$tmp" <<EOF
$begin
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
namespaces = [ ]
$end
EOF
chmod 0600 "$tmp"
mv "$tmp" "$qemu_conf"

echo "install-libvirt.sh: done ($(libvirtd --version))"
