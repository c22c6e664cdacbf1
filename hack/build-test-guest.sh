#!/usr/bin/env bash
# Builds the kubenova test guest: a tiny self-contained bootable disk image made only from
# Debian packages (the cloud kernel and busybox-static), for TCG guests in tests.
#
#   hack/build-test-guest.sh OUTDIR
#
# Outputs OUTDIR/kubenova-test-guest.qcow2 and OUTDIR/kubenova-test-guest.qcow2.sha256 (the
# plain hex digest), and the same pair for kubenova-test-guest-noacpi, the same guest with a
# file `ignore-acpi` on its disk: it ignores the ACPI power button, as a hung or stubborn guest
# would. A stamp (OUTDIR/.kubenova-test-guest.stamp) records this script's own
# sha256 and the package versions used, so a second run with unchanged inputs is a no-op.
#
# The disk is a "superfloppy": one FAT filesystem over the whole disk, no partition table.
# SeaBIOS loads its first sector, which `syslinux --install` made a boot sector; syslinux then
# loads /vmlinuz and /initrd.gz from the same filesystem. Everything the guest does lives in
# the initramfs /init (see guest_init below). No loop device and no mount are needed: the
# filesystem is made with mkfs.vfat on a plain file and filled with mtools.
#
# Needs (hack/install-libvirt.sh installs them): apt-get, dpkg-deb, depmod (kmod), cpio, gzip,
# mtools, syslinux, dosfstools, qemu-img, xz-utils/zstd.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
outdir=$(cd "$1" && pwd)
name=kubenova-test-guest
image=$outdir/$name.qcow2
sumfile=$image.sha256
noacpi=$outdir/$name-noacpi.qcow2
stamp=$outdir/.$name.stamp

# Size of the FAT disk (the kernel alone is ~14 MiB). The qcow2 only stores used clusters.
disk_mib=${TEST_GUEST_DISK_MIB:-48}
# Kernel modules the guest needs; dependencies come from modules.dep, built-ins are skipped.
# virtio_pci/virtio_blk: the disks; vfat and NLS (codepage 437 and the default iocharset
# ascii): the boot disk's filesystem; button and evdev:
# the ACPI power button as an input device /dev/input/eventN; virtio_net and af_packet: the
# NICs, and the raw sockets busybox's DHCP client needs.
modules=(virtio_pci virtio_blk vfat nls_cp437 nls_ascii nls_iso8859-1 button evdev virtio_net af_packet)
cmdline="console=ttyS0 no_timer_check quiet mitigations=off"

log() { echo "build-test-guest.sh: $*" >&2; }

# Resolve the inputs: the real kernel package behind the linux-image-cloud-amd64 metapackage.
pkg_version() { apt-cache show --no-all-versions "$1" 2>/dev/null | awk '/^Version:/ {print $2; exit}'; }
if [ -z "$(pkg_version linux-image-cloud-amd64)" ]; then
  log "apt has no package lists; running apt-get update"
  apt-get update -q >/dev/null
fi
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel_pkg" ]; then
  log "cannot resolve the kernel package behind linux-image-cloud-amd64"
  exit 1
fi
kernel_version=$(pkg_version "$kernel_pkg")
busybox_version=$(pkg_version busybox-static)
script_sum=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
stamp_text="script=$script_sum kernel=$kernel_pkg=$kernel_version busybox-static=$busybox_version cmdline=$cmdline"

if [ -f "$image" ] && [ -f "$sumfile" ] && [ -f "$noacpi.sha256" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
  log "up to date: $image"
  exit 0
fi

work=$(mktemp -d "$outdir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

log "downloading $kernel_pkg=$kernel_version and busybox-static=$busybox_version"
# The sandbox user _apt cannot write to the temp dir; downloading as root is fine here.
apt-get -q -o APT::Sandbox::User=root download "$kernel_pkg=$kernel_version" "busybox-static=$busybox_version" >/dev/null
dpkg-deb --fsys-tarfile "$(echo "${kernel_pkg}"_*.deb)" | tar -x ./boot ./lib/modules
dpkg-deb -x "$(echo busybox-static_*.deb)" bb
kver=${kernel_pkg#linux-image-}
moddir=lib/modules/$kver
# The package ships no modules.dep (its postinst runs depmod); make one for this tree.
depmod -b "$work" "$kver"

# --- initramfs ------------------------------------------------------------------------------
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt/root,mnt/vdb,mnt/cidata,lib/modules}
cp bb/bin/busybox "$root/bin/busybox"

# Modules are copied in load order (dependencies first) with a numeric prefix; /init loads
# /lib/modules/*.ko in glob order. Compressed modules are decompressed here so that busybox
# insmod need not support the compression.
declare -A seen=()
order=()
add_module_path() { # path relative to the module dir, as in modules.dep
  local rel=$1 dep
  [ -n "${seen[$rel]:-}" ] && return 0
  seen[$rel]=1
  local deps=()
  read -r -a deps < <(awk -v r="$rel:" '$1 == r { $1 = ""; print }' "$moddir/modules.dep")
  for dep in "${deps[@]}"; do
    add_module_path "$dep"
  done
  order+=("$rel")
}
for m in "${modules[@]}"; do
  if grep -Eq "(^|/)$m\.ko$" "$moddir/modules.builtin"; then
    continue
  fi
  rel=$(grep -Eo "^[^:]*/$m\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -n1 | tr -d :)
  if [ -z "$rel" ]; then
    log "module $m is neither built in nor in modules.dep"
    exit 1
  fi
  add_module_path "$rel"
done
i=10
for rel in "${order[@]}"; do
  base=$(basename "$rel")
  dest=$root/lib/modules/$i-${base%%.ko*}.ko
  case $rel in
    *.ko.xz) xz -dc "$moddir/$rel" >"$dest" ;;
    *.ko.zst) zstd -qdc "$moddir/$rel" >"$dest" ;;
    *.ko.gz) gzip -dc "$moddir/$rel" >"$dest" ;;
    *) cp "$moddir/$rel" "$dest" ;;
  esac
  i=$((i + 1))
done
log "modules: ${order[*]##*/}"

# The guest's whole userland. Every line it prints for tests starts with "kubenova-test-guest: ".
cat >"$root/init" <<'GUEST_INIT'
#!/bin/busybox sh
# kubenova test guest /init (PID 1). See hack/README.md for the lines it prints.
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so the kernel could not give us stdio: take it now.
exec </dev/console >/dev/console 2>&1

say() { echo "kubenova-test-guest: $*"; }

for m in /lib/modules/*.ko; do
  insmod "$m" || say "insmod $m failed"
done

# virtio_blk creates its block devices while it is loaded; wait a little just in case.
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 50 ]; do usleep 100000; i=$((i + 1)); done

# flush_disk DEV has the disk write out its volatile cache, as a journaling filesystem's commit
# does: sync(1) alone hands the data to the virtual disk but sends it no flush, and QEMU keeps
# a qcow2 disk's new allocations in memory until one comes, so a QEMU killed with SIGKILL (a
# node's power failure) would lose what sync wrote. fsync on the device sends the flush.
flush_disk() {
  sync -d "$1" 2>/dev/null || dd if=/dev/null of="$1" conv=notrunc,fsync 2>/dev/null || say "cannot flush $1"
}

# Boot counter on the boot disk itself, written and flushed before the booted line so that it
# survives a hard power-off, even a QEMU killed with SIGKILL; the filesystem is then remounted
# read-only so that the FAT stays clean whatever happens to the guest afterwards.
count=0
root_mounted=
if mount -t vfat -o rw /dev/vda /mnt/root; then
  root_mounted=1
  if [ -f /mnt/root/count ]; then count=$(head -n1 /mnt/root/count); fi
  case $count in '' | *[!0-9]*) count=0 ;; esac
  count=$((count + 1))
  echo "$count" >/mnt/root/count
  sync
  flush_disk /dev/vda
  mount -o remount,ro /mnt/root || say "cannot remount /dev/vda read-only"
else
  say "cannot mount /dev/vda"
fi

# Markers are printed before the booted line, so a test that saw the booted line has them.
if [ -n "$root_mounted" ] && [ -f /mnt/root/marker ]; then
  say "marker=$(head -n1 /mnt/root/marker)"
fi
if [ -n "$root_mounted" ] && [ -f /mnt/root/rescued ]; then
  say "rescued=$(head -n1 /mnt/root/rescued)"
fi
# A second disk is the broken disk a rescue system boots beside (Nova's rescue): read its boot
# counter and leave a note on it, which the instance prints once it boots its own disk again.
if [ -b /dev/vdb ] && mount -t vfat -o rw /dev/vdb /mnt/vdb 2>/dev/null; then
  if [ -f /mnt/vdb/marker ]; then say "vdb marker=$(head -n1 /mnt/vdb/marker)"; fi
  if [ -f /mnt/vdb/count ]; then
    say "vdb count=$(head -n1 /mnt/vdb/count)"
    echo "by a rescue system at its boot $count" >/mnt/vdb/rescued
    sync
    flush_disk /dev/vdb
  fi
  umount /mnt/vdb
fi

# A cloud-init NoCloud drive (a FAT filesystem holding meta-data, as kubenova's agent makes it
# when an instance has user data or SSH keys) is the last disk: print what it gives the guest.
for d in /dev/vd?; do
  [ "$d" = /dev/vda ] && continue
  [ -b "$d" ] && mount -t vfat -o ro "$d" /mnt/cidata 2>/dev/null || continue
  if [ -f /mnt/cidata/meta-data ]; then
    say "cidata $(grep '^instance-id: ' /mnt/cidata/meta-data)"
    grep '^  - ' /mnt/cidata/meta-data | while read -r dash key; do say "cidata ssh-key=$key"; done
    if [ -f /mnt/cidata/user-data ]; then
      while read -r line; do say "cidata user-data: $line"; done </mnt/cidata/user-data
    fi
    if [ -f /mnt/cidata/network-config ]; then
      while read -r line; do say "cidata network-config: $line"; done </mnt/cidata/network-config
    fi
  fi
  umount /mnt/cidata
done

if [ -n "$root_mounted" ] && [ -f /mnt/root/ignore-acpi ]; then
  ignore_acpi=1
  say "ignoring the ACPI power button"
fi

power_off() {
  # Two power-button devices may exist; only the first press acts.
  mkdir /tmp/powering-off 2>/dev/null || return 0
  say "powering off"
  sync
  if [ -n "$root_mounted" ]; then umount /mnt/root; fi
  poweroff -f
}

# The ACPI power button (button.ko) is an input device; evdev gives it /dev/input/eventN. Any
# event read from it (a struct input_event is 24 bytes on x86_64) is a press.
found=
[ -z "${ignore_acpi:-}" ] || found=ignored
for ev in /sys/class/input/event*; do
  [ -z "${ignore_acpi:-}" ] || break
  [ -e "$ev/device/name" ] || continue
  [ "$(cat "$ev/device/name")" = "Power Button" ] || continue
  found=1
  (dd if="/dev/input/${ev##*/}" bs=24 count=1 >/dev/null 2>&1 && power_off) &
done
[ -n "$found" ] || say "no ACPI power button found"

say "booted count=$count"

# Every NIC asks for its address by DHCP, in the background so that a guest without a DHCP
# server boots all the same. The script prints each lease and then pings the router once, so
# that the node, which reads addresses from its ARP table, sees the guest. The guest answers
# pings (the kernel does) for as long as it runs.
cat >/tmp/udhcpc.script <<'UDHCPC'
#!/bin/sh
case $1 in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    gw=${router%% *}
    if [ -n "$gw" ]; then ip route replace default via "$gw" dev "$interface"; fi
    echo "kubenova-test-guest: nic $interface mac=$(cat "/sys/class/net/$interface/address") ip=$ip" >/dev/console
    if [ -n "$gw" ]; then ping -c 1 -W 2 "$gw" >/dev/null 2>&1; fi
    ;;
esac
UDHCPC
chmod 0755 /tmp/udhcpc.script
for nic in /sys/class/net/eth*; do
  [ -e "$nic" ] || continue
  nic=${nic##*/}
  ip link set "$nic" up
  udhcpc -f -i "$nic" -s /tmp/udhcpc.script -t 30 -T 2 -A 5 >/dev/null 2>&1 &
done

seq=0
while :; do
  sleep 5
  seq=$((seq + 1))
  say "alive seq=$seq"
done
GUEST_INIT
chmod 0755 "$root/init"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >initrd.gz

# --- disk image ----------------------------------------------------------------------------
cat >syslinux.cfg <<EOF
SERIAL 0 115200
DEFAULT kubenova
PROMPT 0
TIMEOUT 1
LABEL kubenova
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $cmdline
EOF
truncate -s "${disk_mib}M" disk.raw
mkfs.vfat -n KNGUEST disk.raw >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -i disk.raw "boot/vmlinuz-$kver" ::vmlinuz
mcopy -i disk.raw initrd.gz ::initrd.gz
mcopy -i disk.raw syslinux.cfg ::syslinux.cfg
syslinux --install disk.raw

cp disk.raw disk-noacpi.raw
echo "this guest ignores the ACPI power button" >ignore-acpi
mcopy -i disk-noacpi.raw ignore-acpi ::ignore-acpi

qemu-img convert -f raw -O qcow2 disk.raw "$work/$name.qcow2"
qemu-img convert -f raw -O qcow2 disk-noacpi.raw "$work/$name-noacpi.qcow2"
for f in "$name" "$name-noacpi"; do
  sha256sum "$work/$f.qcow2" | cut -d' ' -f1 >"$work/$f.qcow2.sha256"
done
# Replace the outputs only once everything succeeded; the stamp goes last.
rm -f "$stamp"
for f in "$name" "$name-noacpi"; do
  mv "$work/$f.qcow2" "$outdir/$f.qcow2"
  mv "$work/$f.qcow2.sha256" "$outdir/$f.qcow2.sha256"
done
echo "$stamp_text" >"$stamp"
log "built $image ($(du -h --apparent-size "$image" | cut -f1), kernel $kver)"
