#!/usr/bin/env bash
# Runs a real Kubernetes node on a libvirt host of hack/libvirt-hosts.sh: containerd and a
# kubelet inside the host's mount and UTS namespaces, so that what the node's pods mount from
# "the host" (/run/libvirt, /var/lib/kubenova, ...) is that host's, as on a compute node.
#
#   hack/kube-node.sh start  DIR HOST   start containerd (importing KUBE_NODE_IMAGES) and the kubelet
#   hack/kube-node.sh stop   DIR HOST   stop them and every process of the node's pods
#   hack/kube-node.sh import DIR HOST IMAGE.tar...   load docker-archive images into the node's containerd
#
# The host (DIR/HOST) must have been started by libvirt-hosts.sh. Inside its namespace the node
# has its own directories, bind-mounted from DIR/HOST/node/ (kubelet/, containerd/, run/,
# cni/, log/, netns/) at the usual paths (/var/lib/kubelet, /var/lib/containerd,
# /run/containerd, /etc/cni/net.d and /var/lib/cni, /var/log/pods and /var/log/containers,
# /run/netns), and the host's storage root DIR/HOST/storage at /var/lib/kubenova,
# KUBE_NODE_IMAGE_STORE (shared by the nodes, as an NFS export would be) at
# /var/lib/kubenova-images and KUBE_NODE_IMAGE_SOURCES at /var/lib/kubenova-image-sources.
# All are shared mounts, so that HostToContainer propagation works.
#
# Processes: containerd and the kubelet run in the cgroup /kubenova-HOST/system of every cgroup
# v1 hierarchy, and the kubelet puts the pods under /kubenova-HOST/kubepods (cgroupRoot), so
# that stop finds every process of the node, shims and containers included, by its cgroup.
# The node's pods have a bridge of their own (kncni + a hash) for KUBE_NODE_POD_CIDR, with no
# masquerade: nothing leaves the machine.
#
# Environment for start:
#   KUBE_NODE_KUBECONFIG    the kubelet's kubeconfig, a system:node:HOST identity (required)
#   KUBE_NODE_CLIENT_CA     the CA the kubelet checks the API server's client certificates with (required)
#   KUBE_NODE_IP            the node's address; not loopback, which the kubelet refuses (required)
#   KUBE_NODE_POD_CIDR      the node's pods' subnet (required)
#   KUBE_NODE_IMAGE_STORE   the directory mounted at /var/lib/kubenova-images (required)
#   KUBE_NODE_IMAGE_SOURCES the directory mounted at /var/lib/kubenova-image-sources (required)
#   KUBE_NODE_LABELS        labels the node registers with (k=v,k=v)
#   KUBE_NODE_IMAGES        docker-archive tarballs to import before the kubelet starts
#   KUBE_NODE_SANDBOX_IMAGE the pause image (kubenova.local/pause:1; hack/imagebuild makes it)
#   KUBE_NODE_TIMEOUT       seconds to wait for containerd to answer, processes to exit (60)
#   BIN_DIR                 where the kubelet binary is (bin/)
#
# Needs root, hack/install-node.sh and hack/build-control-plane.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN_DIR:-$root/bin}
timeout_s=${KUBE_NODE_TIMEOUT:-60}

usage() {
  echo "usage: $0 start DIR HOST | stop DIR HOST | import DIR HOST IMAGE.tar..." >&2
  exit 2
}
log() { echo "kube-node.sh: $*" >&2; }

# host_pid HOSTDIR: the host's libvirtd, whose namespaces the node enters; only a libvirtd that
# sees this host's run directory at /run/libvirt counts (pids are reused).
host_pid() {
  local hd=$1 pid
  pid=$(head -n1 "$hd/run/libvirtd.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 1
  [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt" 2>/dev/null)" = "$(stat -c %d:%i "$hd/run")" ] || return 1
  echo "$pid"
}

in_host() { # HOSTDIR CMD...: run CMD in the host's mount and UTS namespaces
  local hd=$1 pid
  shift
  pid=$(host_pid "$hd") || { log "${hd##*/}: its libvirtd is not running (start it with libvirt-hosts.sh)"; return 1; }
  nsenter --target "$pid" --mount --uts -- "$@"
}

# The cgroup v1 hierarchies of this machine (cgroup v2 is not supported here).
hierarchies() { awk '$3 == "cgroup" {print $2}' /proc/mounts; }

make_cgroup() { # PATH (relative to each hierarchy's root)
  local h rel=$1 parent path part
  for h in $(hierarchies); do
    path=$h
    for part in ${rel//\// }; do
      parent=$path
      path=$path/$part
      if [ ! -d "$path" ]; then
        mkdir "$path"
        # A new cpuset has no CPUs and no memory nodes until given its parent's.
        if [ -f "$path/cpuset.cpus" ]; then
          cat "$parent/cpuset.cpus" >"$path/cpuset.cpus"
          cat "$parent/cpuset.mems" >"$path/cpuset.mems"
        fi
      fi
    done
  done
}

# node_pids NAME: every process in the node's cgroups (the pids hierarchy has them all).
node_pids() {
  local top
  top=$(hierarchies | grep '/pids$' | head -n1)
  [ -n "$top" ] && [ -d "$top/kubenova-$1" ] || return 0
  find "$top/kubenova-$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

# The sysctls the kubelet sets when they differ (protectKernelDefaults: false); stop puts back
# what the machine had once the last node of DIR is gone (restore_machine).
kubelet_sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

save_sysctls() { # DIR
  [ -f "$1/node-sysctls.orig" ] && return 0
  local s
  for s in "${kubelet_sysctls[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$1/node-sysctls.orig.partial"
  mv "$1/node-sysctls.orig.partial" "$1/node-sysctls.orig"
}

# restore_machine DIR: once no kubelet of DIR runs, puts back the sysctls and removes the
# iptables chains the kubelets made (KUBE-FIREWALL, which drops packets to 127.0.0.0/8 that do
# not come from it, the canaries and the hint). kube-proxy's are kube-proxy --cleanup's.
restore_machine() {
  local hd t c ipt
  for hd in "$1"/*/node; do
    [ -d "$hd" ] || continue
    if [ -n "$(node_pids "$(basename "$(dirname "$hd")")")" ]; then return 0; fi
  done
  if [ -f "$1/node-sysctls.orig" ]; then
    sysctl -q -p "$1/node-sysctls.orig" >/dev/null
    rm -f "$1/node-sysctls.orig"
  fi
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for c in INPUT OUTPUT; do
      while "$ipt" -t filter -D "$c" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
    for t in mangle nat filter; do
      for c in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$t" -F "$c" 2>/dev/null || continue
        "$ipt" -t "$t" -X "$c" 2>/dev/null || true
      done
    done
  done
}

# node_mounts: the node's paths in the host's namespace and what is mounted there.
node_mounts() { # HOSTDIR
  local hd=$1 nd=$1/node
  cat <<EOM
$nd/kubelet /var/lib/kubelet
$nd/containerd /var/lib/containerd
$nd/run /run/containerd
$nd/netns /run/netns
$nd/cni/net.d /etc/cni/net.d
$nd/cni/lib /var/lib/cni
$nd/log/pods /var/log/pods
$nd/log/containers /var/log/containers
$hd/storage /var/lib/kubenova
${KUBE_NODE_IMAGE_STORE:-} /var/lib/kubenova-images
${KUBE_NODE_IMAGE_SOURCES:-} /var/lib/kubenova-image-sources
EOM
}

cni_bridge() { echo "kncni$(printf '%s' "$1" | sha1sum | cut -c1-8)"; }

wait_for() { # WHAT CMD...: retry CMD until it succeeds, for timeout_s
  local what=$1 deadline=$((SECONDS + timeout_s))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$what: no answer in ${timeout_s}s"
      return 1
    fi
    sleep 0.5
  done
}

start_node() { # DIR HOST
  local dir=$1 name=$2 hd=$1/$2 nd=$1/$2/node src dst pid
  : "${KUBE_NODE_KUBECONFIG:?} ${KUBE_NODE_CLIENT_CA:?} ${KUBE_NODE_IP:?} ${KUBE_NODE_POD_CIDR:?} ${KUBE_NODE_IMAGE_STORE:?} ${KUBE_NODE_IMAGE_SOURCES:?}"
  [ -x "$bin/kubelet" ] || { log "$bin/kubelet missing: run make control-plane"; return 1; }
  if [ -n "$(node_pids "$name")" ]; then
    log "$name: already running"
    return 0
  fi
  host_pid "$hd" >/dev/null || { log "$name: its libvirtd is not running (start it with libvirt-hosts.sh)"; return 1; }
  mkdir -p "$nd"/{kubelet,containerd,run,netns,cni/net.d,cni/lib,log/pods,log/containers} "$KUBE_NODE_IMAGE_STORE" "$KUBE_NODE_IMAGE_SOURCES"
  save_sysctls "$dir"

  # The mount points exist on the machine (they are empty there); the binds are the host's only.
  while read -r src dst; do
    mkdir -p "$dst"
    if ! in_host "$hd" mountpoint -q "$dst"; then
      in_host "$hd" mount --bind "$src" "$dst"
      in_host "$hd" mount --make-rshared "$dst"
    fi
  done < <(node_mounts "$hd")

  cat >"$nd/containerd.toml" <<EOC
# Written by hack/kube-node.sh for $name.
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${KUBE_NODE_SANDBOX_IMAGE:-kubenova.local/pause:1}"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start ("can't get
  # final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
EOC
  cat >"$nd/cni/net.d/10-kubenova-pods.conflist" <<EOC
{
  "cniVersion": "1.0.0",
  "name": "kubenova-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$(cni_bridge "$hd")",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$KUBE_NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOC
  cat >"$nd/kubelet.yaml" <<EOC
# Written by hack/kube-node.sh for $name.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $KUBE_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: $KUBE_NODE_IP
healthzPort: 10248
# cgroup v1 without systemd: the kubelet manages cgroupfs itself, under the node's own root.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /kubenova-$name
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
podCIDR: $KUBE_NODE_POD_CIDR
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $KUBE_NODE_CLIENT_CA
authorization:
  mode: Webhook
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# The machine's disk is shared with everything else on it: evict only when nearly full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOC

  make_cgroup "kubenova-$name/system"
  # shellcheck disable=SC2016 # expanded by the inner shell
  in_host "$hd" setsid sh -c '
    for h in $HIERARCHIES; do echo $$ >"$h/$CG/cgroup.procs"; done
    exec containerd --config "$ND/containerd.toml"
  ' </dev/null >>"$nd/containerd.log" 2>&1 &
  wait_for "$name: containerd" in_host "$hd" ctr --address /run/containerd/containerd.sock version || return 1
  # shellcheck disable=SC2086 # a list of paths
  [ -z "${KUBE_NODE_IMAGES:-}" ] || import_images "$hd" $KUBE_NODE_IMAGES

  # shellcheck disable=SC2016 # expanded by the inner shell
  in_host "$hd" setsid sh -c '
    for h in $HIERARCHIES; do echo $$ >"$h/$CG/cgroup.procs"; done
    exec "$KUBELET" --config "$ND/kubelet.yaml" --kubeconfig "$KUBECONFIG_FILE" \
      --hostname-override "$NAME" --node-ip "$IP" --node-labels "$LABELS" --v=2
  ' </dev/null >>"$nd/kubelet.log" 2>&1 &
  log "$name: containerd and kubelet started (logs in $nd)"
}

import_images() { # HOSTDIR IMAGE.tar...
  local hd=$1 image
  shift
  for image in "$@"; do
    in_host "$hd" ctr --address /run/containerd/containerd.sock -n k8s.io images import "$image" >/dev/null ||
      { log "import $image failed"; return 1; }
  done
}

stop_node() { # DIR HOST
  local dir=$1 name=$2 hd=$1/$2 pids deadline src dst h
  [ -d "$hd/node" ] || return 0
  deadline=$((SECONDS + timeout_s))
  # Every process in the node's cgroups, containers and shims included, and only those.
  while pids=$(node_pids "$name") && [ -n "$pids" ]; do
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null || true
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name: processes $pids outlived SIGKILL for ${timeout_s}s"
      return 1
    fi
    sleep 0.2
  done
  # Pods' volumes, rootfs and network namespaces are mounted in the host's namespace, under
  # the node's paths; a host that is gone took them along.
  if host_pid "$hd" >/dev/null; then
    while read -r src dst; do
      in_host "$hd" umount -R "$dst" 2>/dev/null || in_host "$hd" umount -lR "$dst" 2>/dev/null || true
    done < <(node_mounts "$hd" | tac)
  fi
  # runc also makes the pods' cgroups in the cgroup2 hierarchy of a hybrid machine.
  for h in $(hierarchies) $(awk '$3 == "cgroup2" {print $2}' /proc/mounts); do
    [ -d "$h/kubenova-$name" ] && find "$h/kubenova-$name" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if ip link show "$(cni_bridge "$hd")" >/dev/null 2>&1; then ip link del "$(cni_bridge "$hd")"; fi
  restore_machine "$dir"
}

case ${1:-} in
  start)
    [ $# -eq 3 ] || usage
    dir=$(cd "$2" && pwd)
    export HIERARCHIES CG ND KUBELET KUBECONFIG_FILE NAME IP LABELS
    HIERARCHIES=$(hierarchies | tr '\n' ' ')
    CG=kubenova-$3/system ND=$dir/$3/node KUBELET=$bin/kubelet KUBECONFIG_FILE=$KUBE_NODE_KUBECONFIG
    NAME=$3 IP=$KUBE_NODE_IP LABELS=${KUBE_NODE_LABELS:-}
    start_node "$dir" "$3"
    ;;
  stop)
    [ $# -eq 3 ] || usage
    [ -d "$2" ] || exit 0
    dir=$(cd "$2" && pwd)
    stop_node "$dir" "$3"
    ;;
  import)
    [ $# -ge 4 ] || usage
    dir=$(cd "$2" && pwd)
    hd=$dir/$3
    shift 3
    import_images "$hd" "$@"
    ;;
  *) usage ;;
esac
