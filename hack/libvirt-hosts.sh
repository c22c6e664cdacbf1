#!/usr/bin/env bash
# Runs N independent libvirt "hosts" on one machine, for kubenova's multi-node tests.
#
#   hack/libvirt-hosts.sh start  DIR N   start host-1 .. host-N (names: see LIBVIRT_HOST_NAMES)
#   hack/libvirt-hosts.sh stop   DIR     stop every libvirtd and QEMU those hosts started
#   hack/libvirt-hosts.sh status DIR     print each host and whether its libvirtd answers
#   hack/libvirt-hosts.sh restart-daemon DIR HOST
#                                        restart one host's libvirtd, leaving its guests running
#                                        (as a libvirt upgrade on a compute node does)
#   hack/libvirt-hosts.sh kill-host DIR HOST
#                                        SIGKILL one host's libvirtd and QEMUs at once, as a
#                                        power failure of the node would (disks stay)
#   hack/libvirt-hosts.sh start-host DIR HOST
#                                        start one host of DIR again (after kill-host)
#
# Each host is a libvirtd in its own mount and UTS namespace (unshare -m -u, private mount
# propagation) whose hostname is the host's name and whose libvirt directories are
# bind-mounted from DIR/<host>/:
#   DIR/<host>/run  -> /run/libvirt      (socket: DIR/<host>/run/libvirt-sock)
#   DIR/<host>/lib  -> /var/lib/libvirt
#   DIR/<host>/etc  -> /etc/libvirt      (libvirtd.conf with its own host_uuid, qemu.conf)
#   DIR/<host>/log  -> /var/log/libvirt  (libvirtd.log, qemu/<domain>.log)
#   DIR/<host>/cache -> /var/cache/libvirt
#   DIR/<host>/hosts -> /etc/hosts       (all host names of this start, for libvirt's lookups)
# DIR/<host>/storage is created but NOT bind-mounted: paths under DIR are the same inside and
# outside every namespace, so a node agent outside can create disks there and hand their
# paths to the host's libvirtd, and host-1's libvirtd can reach host-2's socket for a
# peer-to-peer migration.
#
# The hosts share one network namespace (this machine's), so they share one provider network
# too, as compute nodes plugged into one switch do: start makes a Linux bridge for DIR with one
# DHCP server on it (dnsmasq), and stop removes both. Nothing leaves the machine: the bridge has
# no uplink and the server answers only there. The bridge gets a free /24 of 10.254.0.0/16 (the
# one DIR's path hashes to unless another interface holds it) and an alias naming DIR, by which a
# later start removes it if DIR is gone and nothing is attached. start writes DIR/network/bridge (its name),
# DIR/network/cidr (the subnet), DIR/network/gateway (the bridge's own address) and keeps the
# leases in DIR/network/leases.
#
# start writes DIR/<host>/uri (qemu+unix:///system?socket=DIR/<host>/run/libvirt-sock),
# DIR/<host>/host-uuid, DIR/<host>/mntns and DIR/hosts (every host name started in DIR, one per
# line), and prints "<host> <uri>" per host once every daemon answers. Nothing uses the machine's /run/libvirt,
# so a system libvirtd, if any, is not disturbed.
#
# A host with a DIR/<host>/tls directory at its start is set up as the README's "Live migration"
# asks of a production node: its libvirtd listens with TLS on the address in
# DIR/<host>/tls/address (port 16514, no plain TCP), QEMU receives migrations on that address and
# encrypts them (migrate_tls_x509_cert_dir), and DIR/<host>/tls/pki is bind-mounted on /etc/pki in
# the host's namespace: CA/cacert.pem, libvirt/{server,client}cert.pem,
# libvirt/private/{server,client}key.pem, and qemu/ with ca-cert.pem, server-cert.pem,
# server-key.pem, client-cert.pem and client-key.pem (readable by the user QEMU runs as). The
# machine gets an empty /etc/pki as the mount point if it has none. restart-daemon on a host
# without guests starts it afresh, so writing the directory and then restarting sets a running
# host up.
#
# Environment:
#   LIBVIRT_HOST_NAMES    space-separated names instead of host-1 .. host-N (N must match)
#   LIBVIRT_HOST_TIMEOUT  seconds to wait for a daemon to answer / processes to exit (60)
#   LIBVIRT_HOST_PROFILE  test (QEMU as root, no security driver, logs written by libvirtd) or
#                         production (as Debian installs it: QEMU as libvirt-qemu with libvirt's
#                         ownership handling, logs through a virtlogd per host); a host started
#                         again keeps its first start's (DIR/<host>/profile) unless this is set
#
# Needs root and hack/install-libvirt.sh. Domains must use <domain type='qemu'> (TCG).
set -euo pipefail

timeout_s=${LIBVIRT_HOST_TIMEOUT:-60}
profile=${LIBVIRT_HOST_PROFILE:-test}
case $profile in test | production) ;; *)
  echo "libvirt-hosts.sh: LIBVIRT_HOST_PROFILE must be test or production, not $profile" >&2
  exit 2
  ;;
esac

usage() {
  echo "usage: $0 start DIR N | stop DIR | status DIR | restart-daemon DIR HOST | kill-host DIR HOST | start-host DIR HOST" >&2
  exit 2
}
log() { echo "libvirt-hosts.sh: $*" >&2; }

uri_of() { echo "qemu+unix:///system?socket=$1/run/libvirt-sock"; }

# answers HOSTDIR: true when the host's libvirtd serves requests on its socket.
answers() {
  [ -S "$1/run/libvirt-sock" ] && timeout 10 virsh -q -c "$(uri_of "$1")" hostname >/dev/null 2>&1
}

# ns_of PID: the mount namespace of a process ("mnt:[4026532...]"), empty if it is gone.
ns_of() { readlink "/proc/$1/ns/mnt" 2>/dev/null || true; }

# host_pids HOSTDIR: the libvirtd and QEMU processes of one host, one pid per line.
# A process is a candidate when it is named in one of the host's pid files or lives in the
# host's last known mount namespace; it belongs to the host only if it is a libvirtd or a QEMU
# and its /run/libvirt is this host's run directory. Pids and namespace ids are reused (the
# kernel hands a freed namespace id to the next namespace made, for instance the one of another
# work directory's host started meanwhile), so neither is proof on its own.
host_pids() {
  local hd=$1 ns="" run pid exe f
  run=$(stat -c %d:%i "$hd/run" 2>/dev/null) || return 0
  if [ -f "$hd/mntns" ]; then ns=$(cat "$hd/mntns"); fi
  {
    # run/qemu/driver.pid is the QEMU driver's lock file holding libvirtd's own pid.
    for f in "$hd/run/libvirtd.pid" "$hd/run/virtlogd.pid" "$hd"/run/qemu/*.pid; do
      # (libvirt's pid files have no trailing newline)
      if [ -f "$f" ]; then
        head -n1 "$f"
        echo
      fi
    done
    if [ -n "$ns" ]; then
      for f in /proc/[0-9]*/ns/mnt; do
        if [ "$(readlink "$f" 2>/dev/null)" = "$ns" ]; then
          f=${f#/proc/}
          echo "${f%%/*}"
        fi
      done
    fi
  } | sort -un | while read -r pid; do
    [ -n "$pid" ] || continue
    # argv[0] rather than /proc/PID/exe, which cannot always be read across mount namespaces
    # in this sandbox. A zombie has an empty command line and counts as gone.
    exe=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n1) || continue
    case ${exe##*/} in
      libvirtd | virtlogd | qemu-system-*) ;;
      *) continue ;;
    esac
    # The proof: the process sees this host's run directory at /run/libvirt (a process
    # that exits meanwhile fails the stat and counts as gone).
    [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt" 2>/dev/null)" = "$run" ] || continue
    echo "$pid"
  done
  return 0
}

host_dirs() { # DIR: the host directories listed in DIR/hosts
  local name
  [ -f "$1/hosts" ] || return 0
  while read -r name; do
    [ -n "$name" ] && echo "$1/$name"
  done <"$1/hosts"
}

# migration_ports DIR NAME ALLNAMES...: qemu.conf's migration port range of one host, 32 ports
# from 20000 on: the host's place among ALLNAMES, in a block of 256 chosen by DIR's subnet.
migration_ports() {
  local dir=$1 name=$2 i=0 octet=0 n
  shift 2
  for n in "$@"; do
    [ "$n" = "$name" ] && break
    i=$((i + 1))
  done
  if [ -s "$dir/network/cidr" ]; then octet=$(cut -d. -f3 "$dir/network/cidr"); fi
  local min=$((20000 + (octet % 40) * 256 + (i % 8) * 32))
  printf 'migration_port_min = %d\nmigration_port_max = %d\n' "$min" $((min + 31))
}

# ns_holder HOSTDIR: a process still in the host's mount namespace, if any: one that sees this
# host's run directory at /run/libvirt (the proof; pids and namespace ids are reused). With
# libvirtd gone, a QEMU of the host, or the node's containerd and kubelet (hack/kube-node.sh),
# keep the namespace and every mount made in it.
ns_holder() {
  local run p
  run=$(stat -c %d:%i "$1/run" 2>/dev/null) || return 0
  for p in /proc/[0-9]*/root/run/libvirt; do
    if [ "$(stat -L -c %d:%i "$p" 2>/dev/null)" = "$run" ]; then
      p=${p#/proc/}
      echo "${p%%/*}"
      return 0
    fi
  done
}

# launch_daemons HOSTDIR NAME PROFILE LISTEN: starts the host's virtlogd (production profile,
# unless it runs) and libvirtd in the host's mount and UTS namespaces: the ones a process still
# holds (ns_holder), so that a libvirtd started again sees what the node mounted there (its
# storage root), or new ones. The mounts are made only where missing.
launch_daemons() {
  local hd=$1 holder virtlogd=""
  holder=$(ns_holder "$hd")
  if [ "$3" = production ]; then
    virtlogd=yes
    local pid
    pid=$(head -n1 "$hd/run/virtlogd.pid" 2>/dev/null || true)
    # One that runs already (restart-daemon with guests running) serves on.
    if [ -n "$pid" ] && [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt" 2>/dev/null)" = "$(stat -c %d:%i "$hd/run")" ]; then
      virtlogd=""
    fi
  fi
  # shellcheck disable=SC2016 # expanded by the inner shell
  local script='
    bind() { [ "$(stat -c %d:%i "$2")" = "$(stat -c %d:%i "$1")" ] || mount --bind "$1" "$2"; }
    bind "$HD/run" /run/libvirt
    bind "$HD/lib" /var/lib/libvirt
    bind "$HD/etc" /etc/libvirt
    bind "$HD/log" /var/log/libvirt
    bind "$HD/cache" /var/cache/libvirt
    bind "$HD/hosts" /etc/hosts
    if [ -n "$LISTEN" ]; then bind "$HD/tls/pki" /etc/pki; fi
    hostname "$NAME"
    if [ -n "$VIRTLOGD" ]; then virtlogd -d -p "$HD/run/virtlogd.pid" -f /etc/libvirt/virtlogd.conf; fi
    exec libvirtd -d $LISTEN -p "$HD/run/libvirtd.pid" -f /etc/libvirt/libvirtd.conf
  '
  if [ -n "$holder" ]; then
    HD=$hd NAME=$2 LISTEN=$4 VIRTLOGD=$virtlogd nsenter --mount --uts --target "$holder" -- /bin/sh -ec "$script"
  else
    # A new namespace lives as long as a process is in it: libvirtd (which daemonizes with -d,
    # writing its pid to DIR/<host>/run/libvirtd.pid) and the QEMUs it starts.
    HD=$hd NAME=$2 LISTEN=$4 VIRTLOGD=$virtlogd unshare --mount --uts --propagation private -- /bin/sh -ec "$script"
  fi
}

start_host() { # DIR NAME ALLNAMES...
  local dir=$1 name=$2 hd pid uuid i profile=$profile
  shift 2
  hd=$dir/$name
  mkdir -p "$hd"/{run,lib,etc,log/qemu,cache,storage}
  # A host keeps the profile of its first start (start-host and restart-daemon after kill-host
  # or a TLS set-up), unless LIBVIRT_HOST_PROFILE names one.
  if [ -z "${LIBVIRT_HOST_PROFILE:-}" ] && [ -s "$hd/profile" ]; then profile=$(cat "$hd/profile"); fi
  echo "$profile" >"$hd/profile"

  if answers "$hd"; then
    log "$name already running"
    return 0
  fi
  # A daemon that does not answer (e.g. half-started before) is stopped first.
  stop_host "$hd"
  rm -f "$hd/run/libvirtd.pid" "$hd/run/libvirt-sock" "$hd/run/libvirt-sock-ro" "$hd/run/libvirt-admin-sock"

  # Configuration: the machine's top-level files (not its subdirectories, where a host keeps
  # its own persistent domain definitions), then our own libvirtd.conf and qemu.conf.
  find /etc/libvirt -maxdepth 1 -type f -name '*.conf' -exec cp {} "$hd/etc/" \;
  [ -s "$hd/host-uuid" ] || cat /proc/sys/kernel/random/uuid >"$hd/host-uuid"
  uuid=$(cat "$hd/host-uuid")
  cat >"$hd/etc/libvirtd.conf" <<EOF
# Written by hack/libvirt-hosts.sh for $name.
host_uuid = "$uuid"
# Only root can reach the socket (mode 0700), so no further authentication.
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  # namespaces = [ ]: QEMU stays in the host's mount namespace (instead of a private one with
  # its own /dev), which is how stop finds every QEMU of a host. cgroup_controllers = [ ]:
  # libvirt's cgroup handling does not work in this sandbox. migration_port_min/max: libvirt's
  # default, 49152-49215, lies in the kernel's ephemeral range (32768-60999), where any client
  # connection on the machine may take the port libvirt just found free ("migrate-incoming:
  # Failed to find an available port", a failed block migration in CI). Each host gets 32 ports
  # of its own (migration_ports): hosts of one work directory never pick the same port, those
  # of two directories only if their subnets match modulo 40.
  local ports
  ports=$(migration_ports "$dir" "$name" "$@")
  if [ "$profile" = production ]; then
    # As Debian installs it: QEMU runs as libvirt-qemu, libvirt hands it each disk and gives it
    # back (dynamic_ownership, the DAC security driver; no MAC driver is forced off), and
    # QEMU's logs and the serial console's go through virtlogd (stdio_handler's default).
    cat >"$hd/etc/qemu.conf" <<'EOF'
# Written by hack/libvirt-hosts.sh (production profile).
user = "libvirt-qemu"
group = "libvirt-qemu"
dynamic_ownership = 1
remember_owner = 1
cgroup_controllers = [ ]
namespaces = [ ]
EOF
    echo "$ports" >>"$hd/etc/qemu.conf"
    cat >"$hd/etc/virtlogd.conf" <<'EOF'
# Written by hack/libvirt-hosts.sh (production profile).
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF
  else
    # QEMU runs as root without security driver; libvirtd writes QEMU's stdout/stderr log
    # itself (stdio_handler = "file"), so there is no virtlogd.
    cat >"$hd/etc/qemu.conf" <<'EOF'
# Written by hack/libvirt-hosts.sh.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
namespaces = [ ]
EOF
    echo "$ports" >>"$hd/etc/qemu.conf"
  fi
  # A node set up for live migrations over TLS (see the header).
  local listen=""
  if [ -d "$hd/tls" ]; then
    local addr
    addr=$(cat "$hd/tls/address")
    cat >>"$hd/etc/libvirtd.conf" <<EOF
# Live migrations reach this host's libvirtd over TLS only, on the node's address.
listen_tls = 1
listen_tcp = 0
listen_addr = "$addr"
EOF
    cat >>"$hd/etc/qemu.conf" <<EOF
# Incoming migrations on the node's address (the hosts share one network namespace), encrypted.
migration_address = "$addr"
migration_host = "$addr"
migrate_tls_x509_cert_dir = "/etc/pki/qemu"
EOF
    listen=--listen
    mkdir -p /etc/pki
  fi
  # /etc/hosts of the namespace: the machine's, plus every host name of this start, so that
  # libvirt's hostname lookups answer at once instead of waiting for an unreachable DNS.
  {
    cat /etc/hosts
    for i in "$@"; do echo "127.0.1.1 $i"; done
  } >"$hd/hosts"

  mkdir -p /run/libvirt /var/lib/libvirt /etc/libvirt /var/log/libvirt /var/cache/libvirt
  launch_daemons "$hd" "$name" "$profile" "$listen" </dev/null >>"$hd/log/start.log" 2>&1 || {
    log "$name: libvirtd failed to start; $hd/log/start.log:"
    tail -n 20 "$hd/log/start.log" >&2
    return 1
  }
  pid=$(head -n1 "$hd/run/libvirtd.pid" 2>/dev/null || true)
  if [ -z "$pid" ] || [ -z "$(ns_of "$pid")" ]; then
    log "$name: libvirtd exited at once; $hd/log/libvirtd.log:"
    tail -n 20 "$hd/log/libvirtd.log" >&2 || true
    return 1
  fi
  ns_of "$pid" >"$hd/mntns"
  uri_of "$hd" >"$hd/uri"
}

wait_answers() { # HOSTDIR
  local hd=$1 deadline pid
  deadline=$((SECONDS + timeout_s))
  until answers "$hd"; do
    pid=$(head -n1 "$hd/run/libvirtd.pid" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      log "${hd##*/}: libvirtd died; $hd/log/libvirtd.log:"
      tail -n 20 "$hd/log/libvirtd.log" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "${hd##*/}: libvirtd does not answer after ${timeout_s}s"
      return 1
    fi
    sleep 0.2
  done
}

stop_host() { # HOSTDIR
  local hd=$1 pids deadline
  pids=$(host_pids "$hd")
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086 # one pid per word
    kill -TERM $pids 2>/dev/null || true
    deadline=$((SECONDS + timeout_s / 2))
    while [ -n "$(host_pids "$hd")" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    pids=$(host_pids "$hd")
    if [ -n "$pids" ]; then
      log "${hd##*/}: killing $(echo "$pids" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      deadline=$((SECONDS + timeout_s / 2))
      while [ -n "$(host_pids "$hd")" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
      if [ -n "$(host_pids "$hd")" ]; then
        log "${hd##*/}: processes still running: $(host_pids "$hd" | tr '\n' ' ')"
        return 1
      fi
    fi
  fi
  # Stale runtime files of killed processes (all of them are gone now, and so is their
  # namespace, whose id the kernel will give to another); disks and logs stay.
  rm -f "$hd/run/libvirtd.pid" "$hd/run/virtlogd.pid" "$hd"/run/qemu/*.pid "$hd/mntns"
}

kill_host() { # HOSTDIR
  local hd=$1 pids deadline
  pids=$(host_pids "$hd")
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $pids 2>/dev/null || true
  fi
  deadline=$((SECONDS + timeout_s))
  while [ -n "$(host_pids "$hd")" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "${hd##*/}: processes still running: $(host_pids "$hd" | tr '\n' ' ')"
      return 1
    fi
    sleep 0.1
  done
  rm -f "$hd/run/libvirtd.pid" "$hd/run/virtlogd.pid" "$hd"/run/qemu/*.pid "$hd/run/libvirt-sock" "$hd/run/libvirt-sock-ro" "$hd/run/libvirt-admin-sock" "$hd/mntns"
}

restart_daemon() { # DIR NAME
  local hd=$1/$2 pid qemu="" p exe deadline
  pid=$(head -n1 "$hd/run/libvirtd.pid" 2>/dev/null || true)
  # A QEMU of the host keeps its namespace alive while libvirtd is down; the new libvirtd joins
  # that namespace and finds its guests again.
  for p in $(host_pids "$hd"); do
    exe=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | head -n1) || continue
    case ${exe##*/} in qemu-system-*) qemu=$p && break ;; esac
  done
  if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    deadline=$((SECONDS + timeout_s))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "$2: libvirtd $pid does not exit"
        return 1
      fi
      sleep 0.1
    done
  fi
  rm -f "$hd/run/libvirtd.pid" "$hd/run/libvirt-sock" "$hd/run/libvirt-sock-ro" "$hd/run/libvirt-admin-sock"
  if [ -z "$qemu" ]; then
    # No guest holds the namespace: start the host afresh (its definitions are on disk), in
    # the node's namespace if a node runs on it.
    start_host "$1" "$2" $(cat "$1/hosts")
  else
    local listen=""
    if [ -d "$hd/tls" ]; then listen=--listen; fi
    launch_daemons "$hd" "$2" "$(cat "$hd/profile" 2>/dev/null || echo "$profile")" "$listen" </dev/null >>"$hd/log/start.log" 2>&1
  fi
  wait_answers "$hd"
}

# network_names DIR: sets bridge (a name of at most 15 characters, derived from DIR's path so
# that two directories' bridges differ) and first (the third octet DIR's subnet is sought from).
network_names() {
  local h
  h=$(printf '%s' "$1" | sha1sum | cut -c1-8)
  bridge="knbr$h"
  first=$((0x${h:0:2} % 250 + 1))
}

# The alias every bridge of ours carries: it names the work directory the bridge serves, so that
# a bridge left behind by a run that died can be told from one in use.
alias_prefix="kubenova-libvirt-hosts:"

# subnet_free OCTET: true when no interface but our bridge holds an address in 10.254.OCTET.0/24.
subnet_free() {
  [ -z "$(ip -o -4 addr show to "10.254.$1.0/24" | awk -v b="$bridge" '$2 != b {print $2}')" ]
}

# reap_left_bridges: deletes the bridges of ours whose work directory is gone and to which
# nothing is attached (a run killed before its stop leaves them), and the DHCP servers they had.
# Only on that evidence: a bridge without our alias, or with a port, is never touched.
reap_left_bridges() {
  local b owner pid
  for b in $(ip -o link show type bridge | awk -F': ' '{print $2}' | grep '^knbr' || true); do
    owner=$(cat "/sys/class/net/$b/ifalias" 2>/dev/null || true)
    case "$owner" in "$alias_prefix"/*) ;; *) continue ;; esac
    owner=${owner#"$alias_prefix"}
    [ ! -e "$owner" ] || continue
    [ -z "$(ls "/sys/class/net/$b/brif" 2>/dev/null)" ] || continue
    for pid in $(pgrep -x dnsmasq || true); do
      if ours_dnsmasq "$pid" "$owner/network"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    log "removing bridge $b: its work directory $owner is gone"
    ip link del "$b" 2>/dev/null || true
  done
}

# claim_subnet DIR: sets subnet for DIR and puts the bridge on it. The subnet DIR had before is
# kept when still free; otherwise the first free /24 from DIR's octet on (two directories may
# hash alike, and a killed run may have left a bridge behind). Under a machine-wide lock, so two
# starts at once never pick the same one.
claim_subnet() {
  local dir=$1 nd=$1/network i octet="" lock
  exec {lock}>/run/kubenova-libvirt-hosts.lock
  if ! flock -w "$timeout_s" "$lock"; then
    log "another start held /run/kubenova-libvirt-hosts.lock for ${timeout_s}s"
    return 1
  fi
  reap_left_bridges
  if [ -s "$nd/cidr" ]; then
    i=$(cut -d. -f3 "$nd/cidr")
    if subnet_free "$i"; then octet=$i; fi
  fi
  for ((i = 0; i < 250; i++)); do
    [ -z "$octet" ] || break
    if subnet_free $(((first - 1 + i) % 250 + 1)); then octet=$(((first - 1 + i) % 250 + 1)); fi
  done
  if [ -z "$octet" ]; then
    log "no free /24 left in 10.254.0.0/16 for $dir"
    exec {lock}>&-
    return 1
  fi
  subnet=10.254.$octet
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip link set "$bridge" alias "$alias_prefix$dir"
  if ! ip -o -4 addr show dev "$bridge" | grep -qF " $subnet.1/24 "; then
    ip addr flush dev "$bridge"
    ip addr add "$subnet.1/24" dev "$bridge"
  fi
  ip link set "$bridge" up
  exec {lock}>&-
}

# ours_dnsmasq PID NETDIR: true when PID is the dnsmasq started for NETDIR (its pid file is
# named on its command line), so that a reused pid never makes us kill or trust another.
ours_dnsmasq() {
  tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "--pid-file=$2/dnsmasq.pid"
}

start_network() { # DIR
  local dir=$1 nd=$1/network pid
  network_names "$dir"
  mkdir -p "$nd"
  claim_subnet "$dir"
  echo "$bridge" >"$nd/bridge"
  echo "$subnet.0/24" >"$nd/cidr"
  echo "$subnet.1" >"$nd/gateway"
  pid=$(cat "$nd/dnsmasq.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && ours_dnsmasq "$pid" "$nd"; then
    return 0
  fi
  # DHCP only (--port=0: no DNS), on this bridge only; leases are an hour, so a guest that
  # boots again, wherever its node, asks for and gets the address its MAC had.
  dnsmasq --conf-file=/dev/null --port=0 --interface="$bridge" --bind-interfaces --except-interface=lo \
    --dhcp-range="$subnet.10,$subnet.250,255.255.255.0,1h" --dhcp-authoritative \
    --dhcp-leasefile="$nd/leases" --pid-file="$nd/dnsmasq.pid" \
    --log-facility="$nd/dnsmasq.log" --log-dhcp --user=root --group=root
}

stop_network() { # DIR
  local dir=$1 nd=$1/network pid
  [ -d "$nd" ] || return 0
  network_names "$dir"
  pid=$(cat "$nd/dnsmasq.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && ours_dnsmasq "$pid" "$nd"; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
  rm -f "$nd/dnsmasq.pid"
  if ip link show "$bridge" >/dev/null 2>&1; then ip link del "$bridge"; fi
}

cmd=${1:-}
[ $# -ge 2 ] || usage
if [ "$(id -u)" -ne 0 ]; then
  log "must run as root"
  exit 1
fi
case $cmd in
  start)
    [ $# -eq 3 ] || usage
    n=$3
    case $n in '' | *[!0-9]* | 0) usage ;; esac
    mkdir -p "$2"
    dir=$(cd "$2" && pwd)
    if [ -n "${LIBVIRT_HOST_NAMES:-}" ]; then
      read -r -a names <<<"$LIBVIRT_HOST_NAMES"
      if [ "${#names[@]}" -ne "$n" ]; then
        log "LIBVIRT_HOST_NAMES has ${#names[@]} names, expected $n"
        exit 2
      fi
    else
      names=()
      for ((i = 1; i <= n; i++)); do names+=("host-$i"); done
    fi
    # DIR/hosts keeps every host ever started in DIR, so that stop finds them all.
    touch "$dir/hosts"
    for name in "${names[@]}"; do
      grep -qxF "$name" "$dir/hosts" || echo "$name" >>"$dir/hosts"
    done
    start_network "$dir"
    for name in "${names[@]}"; do start_host "$dir" "$name" "${names[@]}"; done
    # The daemons start in parallel; wait for each in turn (bounded by LIBVIRT_HOST_TIMEOUT).
    for name in "${names[@]}"; do wait_answers "$dir/$name"; done
    for name in "${names[@]}"; do echo "$name $(cat "$dir/$name/uri")"; done
    ;;
  stop)
    [ $# -eq 2 ] || usage
    [ -d "$2" ] || exit 0
    dir=$(cd "$2" && pwd)
    rc=0
    while read -r hd; do stop_host "$hd" || rc=1; done < <(host_dirs "$dir")
    stop_network "$dir" || rc=1
    exit "$rc"
    ;;
  status)
    [ $# -eq 2 ] || usage
    dir=$(cd "$2" && pwd)
    rc=0
    while read -r hd; do
      if answers "$hd"; then
        echo "${hd##*/} running $(uri_of "$hd")"
      else
        echo "${hd##*/} not-answering $(uri_of "$hd")"
        rc=1
      fi
    done < <(host_dirs "$dir")
    exit "$rc"
    ;;
  restart-daemon)
    [ $# -eq 3 ] || usage
    dir=$(cd "$2" && pwd)
    [ -d "$dir/$3" ] || { log "no host $3 in $dir"; exit 2; }
    restart_daemon "$dir" "$3"
    ;;
  kill-host)
    [ $# -eq 3 ] || usage
    dir=$(cd "$2" && pwd)
    [ -d "$dir/$3" ] || { log "no host $3 in $dir"; exit 2; }
    kill_host "$dir/$3"
    ;;
  start-host)
    [ $# -eq 3 ] || usage
    dir=$(cd "$2" && pwd)
    [ -d "$dir/$3" ] || { log "no host $3 in $dir"; exit 2; }
    # shellcheck disable=SC2046 # one name per word
    start_host "$dir" "$3" $(cat "$dir/hosts")
    wait_answers "$dir/$3"
    ;;
  *) usage ;;
esac
