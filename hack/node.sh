#!/usr/bin/env bash
# A real node beside simulated GPU pools, for the node test tier (tests/node): its own control
# plane (hack/control-plane.sh, cluster "bakeoff-node", kwok simulating the GPU pools of
# hack/nodes/gpu-{rtx4080,a100,h100}.yaml) and one real worker on this machine: containerd,
# kubelet, kube-proxy, the CNI bridge, CoreDNS. The real node is the cpu-mock pool
# (bakeoff.dev/pool=cpu-mock); pods on it run from images built by hack/images.sh.
#
#   hack/node.sh build     build kubelet, kube-proxy and CoreDNS into the cache (once)
#   hack/node.sh up        start everything (idempotent); prints the kubeconfig path
#   hack/node.sh status    components, pids, the node's state
#   hack/node.sh kubeconfig
#   hack/node.sh kubectl ARGS   kubectl on this cluster
#   hack/node.sh down      stop everything; remove pods, containers, mounts, network
#                          interfaces, iptables rules, cgroups and cluster state (the image
#                          store in ~/.cache/bakeoff/node/containerd is kept for reuse)
#
# Needs root. Debian packages (installed when missing): containerd, runc,
# containernetworking-plugins, iptables, conntrack. What this VM needs (and a normal node
# does not): containerd's restrict_oom_score_adj and the kubelet's oomScoreAdj: 0 (no
# CAP_SYS_RESOURCE), failCgroupV1: false with cgroupfs (cgroup v1), the CNI firewall plugin
# (dockerd sets FORWARD to DROP), an API server reachable from pods (bound to all addresses,
# advertised on the node IP) that reaches the kubelet on the node IP.
# Logs: ~/.cache/bakeoff/kwok/clusters/bakeoff-node/logs/ (containerd, kubelet, kube-proxy,
# coredns beside the control plane's).
set -euo pipefail

HACK=$(cd "$(dirname "$0")" && pwd)
CACHE=${BAKEOFF_CACHE:-$HOME/.cache/bakeoff}
export BAKEOFF_CLUSTER=${BAKEOFF_NODE_CLUSTER:-bakeoff-node}
export KWOK_WORKDIR=${KWOK_WORKDIR:-$CACHE/kwok}
# The simulated pools beside the real node (hack/nodes/<name>.yaml).
export BAKEOFF_NODES=${BAKEOFF_NODES:-gpu-rtx4080 gpu-a100 gpu-h100}
CLUSTER_DIR=$KWOK_WORKDIR/clusters/$BAKEOFF_CLUSTER
KUBECONFIG_PATH=$CLUSTER_DIR/kubeconfig.yaml
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print substr($2, 2); exit}' "$HACK/k8s/go.mod")
BIN=$CACHE/k8s-$K8S_VERSION/bin
COREDNS_VERSION=$(awk '$1 == "github.com/coredns/coredns" && $2 ~ /^v/ {print substr($2, 2); exit}' "$HACK/coredns/go.mod")

NODE_NAME=${BAKEOFF_NODE_NAME:-cpu-mock-real-0}
NODE_LABELS=${BAKEOFF_NODE_LABELS:-bakeoff.dev/pool=cpu-mock,node.kubernetes.io/instance-type=real}
POD_CIDR=${BAKEOFF_POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${BAKEOFF_SERVICE_CIDR:-10.96.0.0/16}
BRIDGE=bakeoff0
RUN=${BAKEOFF_NODE_RUN:-/run/bakeoff-node}
NODE_DIR=$CLUSTER_DIR/node
# The image store outlives the cluster: images are loaded once (hack/images.sh load).
CONTAINERD_ROOT=$CACHE/node/containerd
CONTAINERD_SOCK=$RUN/containerd.sock
PAUSE_IMAGE=docker.io/bakeoff/pause:3.10.2
CNI_BIN=/usr/lib/cni
COMPONENTS="containerd coredns kubelet kube-proxy"

export CGO_ENABLED=0
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
NICE=${NICE:-nice -n 19}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
cp_sh() { "$HACK/control-plane.sh" "$@"; }
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" --cache-dir "$CLUSTER_DIR/kubectl-cache" "$@"; }

need_root() { [ "$(id -u)" = 0 ] || die "hack/node.sh $1 needs root (it runs a kubelet and containerd)"; }

apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The address pods and the API server reach this node on: the source of the default route.
node_ip() {
  local ip
  ip=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i+1); exit}}')
  [ -n "$ip" ] || ip=$(ip -4 -o addr show scope global | awk '{sub(/\/.*/, "", $4); print $4; exit}')
  [ -n "$ip" ] || die "no global IPv4 address on this machine for the node"
  echo "$ip"
}

# ---------------------------------------------------------------------------------------------
# build: kubelet and kube-proxy from the same k8s.io/kubernetes module as the control plane,
# CoreDNS from its module (hack/coredns), the same conventions (CGO off, nice, cache).
# ---------------------------------------------------------------------------------------------
build_one() { # name, module dir, package, ldflags
  local name=$1 dir=$2 pkg=$3 ldflags=$4
  [ -x "$BIN/$name" ] && return 0
  mkdir -p "$BIN"
  log "building $name (takes minutes on 2 cores)"
  local start=$(date +%s)
  (cd "$dir" && $NICE go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp" "$pkg")
  mv "$BIN/$name.tmp" "$BIN/$name"
  log "built $name in $(( $(date +%s) - start ))s ($(du -h "$BIN/$name" | cut -f1))"
  echo "$name $(( $(date +%s) - start ))s $(stat -c %s "$BIN/$name")" >>"$BIN/../build-times.txt"
}

cmd_build() {
  command -v go >/dev/null || die "go is not installed"
  cp_sh build
  local v=$K8S_VERSION pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=v$v -X $pkg.gitMajor=${v%%.*} -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  build_one kubelet "$HACK/k8s" k8s.io/kubernetes/cmd/kubelet "$ldflags"
  build_one kube-proxy "$HACK/k8s" k8s.io/kubernetes/cmd/kube-proxy "$ldflags"
  build_one coredns "$HACK/coredns" github.com/coredns/coredns \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION"
}

binaries_present() { local b; for b in kubelet kube-proxy coredns; do [ -x "$BIN/$b" ] || return 1; done; }

# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------
alive() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

start_daemon() { # name, argv...
  local name=$1; shift
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  # setsid: detached like the control plane's daemons; 9>&-: never holding our lock.
  setsid "$@" >>"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$CLUSTER_DIR/pids/$name.pid"
}

daemon_alive() { local pid; pid=$(cat "$CLUSTER_DIR/pids/$1.pid" 2>/dev/null) && alive "$pid"; }

stop_daemon() {
  local pid i
  pid=$(cat "$CLUSTER_DIR/pids/$1.pid" 2>/dev/null) || return 0
  if alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$CLUSTER_DIR/pids/$1.pid"
}

wait_for() { # description, seconds, command...
  local what=$1 seconds=$2 i; shift 2
  for i in $(seq 1 $((seconds * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

# ---------------------------------------------------------------------------------------------
# up
# ---------------------------------------------------------------------------------------------
write_kwokctl_config() { # node ip -> path of the cluster's kwokctl configuration
  local ip=$1 out=$CACHE/node/kwokctl-$BAKEOFF_CLUSTER.yaml
  mkdir -p "$(dirname "$out")"
  sed -e "s|@NODE_IP@|$ip|g" -e "s|@SERVICE_CIDR@|$SERVICE_CIDR|g" -e "s|@CLUSTER_DIR@|$CLUSTER_DIR|g" \
      -e "s|@SERVICE_IP@|$(service_ip)|g" "$HACK/kwok/kwokctl-node.yaml" >"$out"
  echo "$out"
}

# The `kubernetes` Service's address: the first of the service range.
service_ip() { local base=${SERVICE_CIDR%/*}; echo "${base%.*}.$(( ${base##*.} + 1 ))"; }

# Client certificates signed by the cluster's CA: the kubelet as system:node:NAME (the Node
# authorizer and NodeRestriction apply to it), kube-proxy as system:kube-proxy.
issue_cert() { # name, subject
  local name=$1 subject=$2 pki=$CLUSTER_DIR/pki
  [ -s "$NODE_DIR/$name.crt" ] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$NODE_DIR/$name.key" -subj "$subject" \
    -out "$NODE_DIR/$name.csr" 2>/dev/null
  openssl x509 -req -in "$NODE_DIR/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 30 -out "$NODE_DIR/$name.crt" 2>/dev/null
  rm -f "$NODE_DIR/$name.csr"
}

write_kubeconfig() { # name -> path
  local name=$1 server
  server=$(kc config view --minify -o jsonpath='{.clusters[0].cluster.server}')
  cat >"$NODE_DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bakeoff-node
  cluster: {server: "$server", certificate-authority: "$CLUSTER_DIR/pki/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$NODE_DIR/$name.crt", client-key: "$NODE_DIR/$name.key"}
contexts:
- name: $name
  context: {cluster: bakeoff-node, user: $name}
current-context: $name
EOF
  echo "$NODE_DIR/$name.kubeconfig"
}

start_containerd() {
  daemon_alive containerd && return 0
  mkdir -p "$RUN" "$CONTAINERD_ROOT" "$NODE_DIR/cni/net.d"
  cat >"$NODE_DIR/cni/net.d/10-bakeoff.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bakeoff",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE_DIR/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
EOF
  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$CONTAINERD_ROOT"
state = "$RUN/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE on this VM: never lower a process's OOM score below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF
  start_daemon containerd containerd --config "$NODE_DIR/containerd.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version \
    || { tail -20 "$CLUSTER_DIR/logs/containerd.log" >&2; die "containerd did not start"; }
}

start_coredns() { # node ip
  daemon_alive coredns && return 0
  cat >"$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_PATH
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 5
}
EOF
  start_daemon coredns "$BIN/coredns" -conf "$NODE_DIR/Corefile"
}

start_kubelet() { # node ip
  daemon_alive kubelet && return 0
  local ip=$1
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$CLUSTER_DIR/pki/ca.crt"}
authorization: {mode: Webhook}
# cgroup v1 and no systemd here.
cgroupDriver: cgroupfs
failCgroupV1: false
# No CAP_SYS_RESOURCE: the kubelet cannot lower its own OOM score.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$ip]
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
# The node is a developer's machine: never evict for its disk, never collect the images
# loaded from hack/images.sh (they cannot be pulled again).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%",
               imagefs.available: "1%", imagefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 50
EOF
  start_daemon kubelet "$BIN/kubelet" --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$(write_kubeconfig kubelet)" --hostname-override "$NODE_NAME" \
    --node-ip "$ip" --node-labels "$NODE_LABELS" --root-dir "$NODE_DIR/kubelet" \
    --cert-dir "$NODE_DIR/kubelet-pki" --v 1
}

start_kube_proxy() {
  daemon_alive kube-proxy && return 0
  issue_cert kube-proxy "/CN=system:kube-proxy"
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$(write_kubeconfig kube-proxy)"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack table size alone.
conntrack: {maxPerCore: 0}
EOF
  start_daemon kube-proxy "$BIN/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml" --v 1
}

node_ready() {
  [ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

healthy() {
  local c
  for c in $COMPONENTS; do daemon_alive "$c" || return 1; done
  cp_sh status >/dev/null 2>&1 && node_ready
}

cmd_up() {
  need_root up
  if healthy; then
    # The sandbox image is what every pod needs: the kubelet may have collected it.
    BAKEOFF_NODE_RUN=$RUN "$HACK/images.sh" load "${PAUSE_IMAGE#docker.io/}" >&2
    log "node '$NODE_NAME' of cluster '$BAKEOFF_CLUSTER' is already up"
    echo "$KUBECONFIG_PATH"
    return 0
  fi
  apt_install containerd runc containernetworking-plugins iptables conntrack
  binaries_present || cmd_build
  local start=$(date +%s) ip
  ip=$(node_ip)
  if [ -d "$NODE_DIR" ] && ! healthy; then
    log "a previous node is not healthy: removing it"
    cmd_down
  fi
  BAKEOFF_KWOKCTL_CONFIG=$(write_kwokctl_config "$ip") cp_sh up >/dev/null
  mkdir -p "$NODE_DIR"
  # Bridged pod-to-pod traffic through iptables (Services whose pods share the bridge).
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 2>/dev/null \
    || log "WARNING: could not set net.bridge.bridge-nf-call-iptables=1"
  log "starting containerd, CoreDNS, kubelet and kube-proxy for node '$NODE_NAME' ($ip)"
  start_containerd
  "$HACK/images.sh" pause >&2
  BAKEOFF_NODE_RUN=$RUN "$HACK/images.sh" load "${PAUSE_IMAGE#docker.io/}" >&2
  start_coredns "$ip"
  start_kubelet "$ip"
  start_kube_proxy
  if ! wait_for "node Ready" 120 node_ready; then
    tail -30 "$CLUSTER_DIR/logs/kubelet.log" >&2
    die "node $NODE_NAME is not Ready after 120 s (logs in $CLUSTER_DIR/logs)"
  fi
  log "node $NODE_NAME Ready in $(( $(date +%s) - start ))s; kubeconfig:"
  echo "$KUBECONFIG_PATH"
}

# ---------------------------------------------------------------------------------------------
# down: nothing left behind
# ---------------------------------------------------------------------------------------------
remove_pods() {
  [ -S "$CONTAINERD_SOCK" ] || return 0
  local ctr=(ctr --address "$CONTAINERD_SOCK" -n k8s.io) id
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 0.5
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
  done
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do
    "${ctr[@]}" containers delete "$id" >/dev/null 2>&1 || true
  done
}

unmount_under() { # dir...
  local d m
  for d in "$@"; do
    findmnt -rn -o TARGET | awk -v d="$d" 'index($0, d) == 1' | sort -r | while read -r m; do
      # -l: a mount still busy (a dying container) goes once free.
      umount -l "$m" 2>/dev/null || true
    done
  done
}

remove_network() {
  local link
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  # The pods' network namespaces (containerd's CRI names them cni-<uuid>).
  local ns
  for ns in /run/netns/cni-*; do
    [ -e "$ns" ] || continue
    umount "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
  # kube-proxy's rules (KUBE-*) and the CNI plugins' (CNI-*): first the jumps into them, then
  # the chains, in every table.
  [ -x "$BIN/kube-proxy" ] && "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  local table rule chain
  for table in filter nat mangle; do
    # (grep finds nothing on a clean machine: not an error under pipefail)
    iptables -t "$table" -S 2>/dev/null | { grep -E '^-A .* -j (CNI-|KUBE-)' || true; } |
      sed 's/^-A/-D/' | while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^CNI-/ || $2 ~ /^KUBE-/) {print $2}'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^CNI-/ || $2 ~ /^KUBE-/) {print $2}'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

remove_cgroups() {
  # The kubelet's pod cgroups (kubepods/...) in every v1 hierarchy, deepest first.
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

cmd_down() {
  need_root down
  log "stopping node '$NODE_NAME' of cluster '$BAKEOFF_CLUSTER'"
  stop_daemon kubelet
  stop_daemon kube-proxy
  stop_daemon coredns
  remove_pods
  stop_daemon containerd
  unmount_under "$NODE_DIR/kubelet" "$RUN/containerd"
  remove_network
  remove_cgroups
  rm -rf "$RUN" "$NODE_DIR"
  cp_sh down
  log "node '$NODE_NAME' is down"
}

cmd_status() {
  local c pid
  for c in $COMPONENTS; do
    pid=$(cat "$CLUSTER_DIR/pids/$c.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && alive "$pid"; then
      printf '  %-24s running  pid %-7s rss %4d MiB\n' "$c" "$pid" \
        $(( $(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status") / 1024 ))
    else
      printf '  %-24s stopped\n' "$c"
    fi
  done
  cp_sh status || true
  if node_ready; then echo "node:       $NODE_NAME Ready"; else echo "node:       $NODE_NAME not Ready"; return 1; fi
}

if [ -z "${BAKEOFF_NODE_LOCKED:-}" ]; then
  case "${1:-}" in
    up|down|build)
      mkdir -p "$CACHE/locks"
      BAKEOFF_NODE_LOCKED=1 exec flock -o "$CACHE/locks/node.lock" "$BASH" "$HACK/node.sh" "$@" ;;
  esac
fi

main() {
  case "${1:-}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kubeconfig) echo "$KUBECONFIG_PATH" ;;
    kubectl) shift; kc "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"; exit $?
