#!/usr/bin/env bash
# One real node for the local control plane: containerd (pinned, built from the Go
# module proxy) with Debian's runc and CNI plugins, kubelet and kube-scheduler
# (built like the control plane), a locally built pause image and a bridge network
# for pods. See docs/node.md.
#
#   e2e/node.sh up           bring up the control plane (bound to the bridge's host
#                            address, so pods reach it) and the node; wait until the
#                            node is Ready; print the export lines like cluster.sh
#   e2e/node.sh down         stop the node and the control plane; leaves no process,
#                            mount, network interface, netns or cgroup of the node
#   e2e/node.sh stop         stop the node only (cluster.sh down calls this)
#   e2e/node.sh unbridge     remove the pod bridge (cluster.sh down, once the apiserver is gone)
#   e2e/node.sh status       one line per node component; exit 0 only if all healthy
#   e2e/node.sh env          the export lines (KUBECONFIG, PATH) plus FANOUT_NODE_HOST_IP
#   e2e/node.sh load ARCHIVE import an OCI image archive (e2e/image.sh) into the node
#   e2e/node.sh ctr ARGS...  run ctr against the node's containerd (namespace k8s.io)
#
# Environment: as cluster.sh (FANOUT_CACHE, FANOUT_CLUSTER_DIR, FANOUT_CLUSTER_TIMEOUT),
# plus FANOUT_NODE_BRIDGE (default fanout0) and FANOUT_NODE_POD_SUBNET (a /24, default
# 10.244.0.0/24; its .1 is the bridge's host address). Needs root: it creates a
# bridge, mounts and cgroups. One node per machine (the bridge and /kubepods cgroups
# are machine-wide).
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FANOUT_CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
STATE=${FANOUT_CLUSTER_DIR:-$FANOUT_CACHE/cluster}
mkdir -p "$FANOUT_CACHE" "$STATE"
FANOUT_CACHE=$(cd "$FANOUT_CACHE" && pwd)
STATE=$(cd "$STATE" && pwd)
export FANOUT_CACHE FANOUT_CLUSTER_DIR=$STATE
NODE=$STATE/node
RUN=$NODE/run
LOGS=$STATE/logs
PKI=$STATE/pki
TIMEOUT=${FANOUT_CLUSTER_TIMEOUT:-120}
STOP_TIMEOUT=20
BRIDGE=${FANOUT_NODE_BRIDGE:-fanout0}
POD_SUBNET=${FANOUT_NODE_POD_SUBNET:-10.244.0.0/24}
[[ $POD_SUBNET =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || {
    echo "FANOUT_NODE_POD_SUBNET must be a /24 ending in .0/24" >&2
    exit 1
}
HOST_IP=${BASH_REMATCH[1]}.1
NODE_NAME=fanout-e2e-node
# Where Debian's packages put them; the versions are pinned in ensure_packages.
CNI_BIN_DIR=/usr/lib/cni
RUNC=/usr/sbin/runc
COMPONENTS=(containerd kube-scheduler kubelet)
# Pinned Debian 12 packages: the node needs runc 1.1+ and the CNI bridge,
# host-local and loopback plugins.
DEBIAN_PACKAGES=(runc=1.1.5+ds1-1+deb12u1 containernetworking-plugins=1.1.1+ds1-3+b5)

LOG_PREFIX=node
OUR_EXECUTABLES=("${COMPONENTS[@]}" containerd-shim-runc-v2)
OUR_DIR=$NODE
# shellcheck source=e2e/processes.sh
source "$E2E_DIR/processes.sh"

# ---- packages and tools ---------------------------------------------------------------

ensure_packages() {
    [[ -x $RUNC && -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/host-local && -x $CNI_BIN_DIR/loopback ]] &&
        return
    log "installing ${DEBIAN_PACKAGES[*]} (apt)"
    command -v apt-get >/dev/null || die "runc and the CNI plugins are missing and there is no apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${DEBIAN_PACKAGES[@]}" >&2
}

# ---- certificates and kubeconfigs -------------------------------------------------------

sign_client_cert() { # name subject
    local name=$1 subj=$2
    [[ -s $PKI/$name.crt && -s $PKI/$name.key ]] &&
        openssl x509 -checkend 86400 -noout -in "$PKI/$name.crt" >/dev/null &&
        openssl verify -CAfile "$PKI/ca.crt" "$PKI/$name.crt" >/dev/null 2>&1 && return
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key" 2>/dev/null
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -config "$PKI/openssl.cnf" -out "$PKI/$name.csr"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -set_serial "0x$(openssl rand -hex 12)" -days 3650 \
        -extfile "$PKI/openssl.cnf" -extensions client -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr"
}

write_kubeconfig() { # file user name
    local file=$1 user=$2 name=$3 server
    server=$(sed -n 's/^[[:space:]]*server: //p' "$STATE/kubeconfig")
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fanout-e2e
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$name.crt")
    client-key-data: $(base64 -w0 <"$PKI/$name.key")
contexts:
- name: fanout-e2e
  context: {cluster: fanout-e2e, user: $user}
current-context: fanout-e2e
EOF
    umask 022
}

# ---- network -----------------------------------------------------------------------------

# The bridge exists before the apiserver starts, because the apiserver binds to
# its host address. The CNI bridge plugin finds it and attaches pods' veths.
ensure_bridge() {
    local owner_file=/run/fanout-e2e-$BRIDGE.owner
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        if [[ -f $owner_file && $(<"$owner_file") != "$STATE" ]]; then
            die "bridge $BRIDGE belongs to the node of $(<"$owner_file"); one node per machine"
        fi
    else
        ip link add "$BRIDGE" type bridge
    fi
    echo "$STATE" >"$owner_file"
    ip addr replace "$HOST_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

write_cni_config() {
    mkdir -p "$NODE/cni/net.d" "$NODE/cni/ipam"
    # No ipMasq: pods only talk to each other and to this host (the apiserver,
    # NATS and test targets listen on the bridge's host address), which needs
    # neither NAT nor forwarding, so no iptables is involved.
    cat >"$NODE/cni/net.d/10-fanout.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fanout-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$HOST_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

# ---- containerd ---------------------------------------------------------------------------

# True when this process may not lower an OOM score (no CAP_SYS_RESOURCE, bit 24
# of CapEff), as on machines whose root runs with a reduced capability set.
# containerd's sandboxes ask for -998; runc then fails with "failed to update
# /proc/self/oom_score_adj: Permission denied".
lacks_sys_resource() {
    local cap
    cap=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
    (((0x$cap >> 24 & 1) == 0))
}

write_containerd_config() { # sandbox-image
    local restrict_oom=false
    if lacks_sys_resource; then restrict_oom=true; fi
    cat >"$NODE/containerd/config.toml" <<EOF
# Written by e2e/node.sh. Everything lives under $NODE, so down removes it all.
version = 3
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"

[grpc]
  address = "$NODE/containerd/containerd.sock"

[ttrpc]
  address = "$NODE/containerd/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$1'

[plugins.'io.containerd.cri.v1.runtime']
  # Network namespaces under the state dir rather than /var/run/netns.
  netns_mounts_under_state_dir = true
  # Clamp OOM scores to containerd's own when it may not lower them.
  restrict_oom_score_adj = $restrict_oom
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '$RUNC'
        # cgroup v1 through cgroupfs, as the kubelet's cgroupDriver says.
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$CNI_BIN_DIR']
    conf_dir = '$NODE/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
EOF
}

ctr_cmd() { "$CTR" --address "$NODE/containerd/containerd.sock" --namespace k8s.io "$@"; }

containerd_ready() { ctr_cmd version >/dev/null 2>&1; }

# ---- kubelet ----------------------------------------------------------------------------

write_kubelet_config() { # port healthz-port
    cat >"$NODE/kubelet/config.yaml" <<EOF
# Written by e2e/node.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 (cgroupfs); kubelet 1.34 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$NODE/containerd/containerd.sock
address: $HOST_IP
port: $1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $2
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
# Container logs under the state dir, not /var/log/pods.
podLogsDirectory: $NODE/kubelet/pod-logs
failSwapOn: false
# Pick up ConfigMap and Secret changes (the gateway's routes) within seconds, not
# the default minute.
syncFrequency: 10s
# The disk is shared with build caches: don't evict pods or delete the imported
# images (they cannot be pulled again) because it fills up.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 50
serializeImagePulls: false
EOF
}

# ---- readiness --------------------------------------------------------------------------

kctl() { "$KUBECTL" --kubeconfig "$STATE/kubeconfig" --request-timeout=5s "$@"; }

node_ready() {
    [[ $(kctl get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
kubelet_healthy() { [[ $(curl -fsS --max-time 3 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" 2>/dev/null) == ok ]]; }
scheduler_healthy() { [[ $(curl -fsSk --max-time 3 "https://127.0.0.1:$SCHEDULER_PORT/healthz" 2>/dev/null) == ok ]]; }

load_state() {
    KUBELET_PORT='' KUBELET_HEALTHZ_PORT='' SCHEDULER_PORT='' KUBECTL='' CTR=''
    if [[ -f $RUN/state.env ]]; then
        # shellcheck source=/dev/null
        source "$RUN/state.env"
    fi
}

healthy() {
    load_state
    [[ -n $KUBELET_PORT && -x ${CTR:-/nonexistent} ]] || return 1
    local c
    for c in "${COMPONENTS[@]}"; do is_ours "$(cat "$RUN/$c.pid" 2>/dev/null)" || return 1; done
    containerd_ready && kubelet_healthy && scheduler_healthy && node_ready
}

print_env() {
    bash "$E2E_DIR/cluster.sh" env
    echo "export FANOUT_NODE_HOST_IP=$HOST_IP"
}

# ---- stop and clean up ---------------------------------------------------------------------

# Unmounts everything under the node's state dir, deepest first (container
# rootfs overlays, sandbox /dev/shm, netns bind mounts, kubelet's tmpfs volumes).
unmount_all() {
    local m
    while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done < <(awk -v root="$NODE/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r)
}

# Removes the pod cgroups the kubelet created (cgroupfs driver, cgroup v1: one
# tree per controller). rmdir only succeeds on an empty cgroup, so this runs
# after every container process is gone.
remove_cgroups() {
    local ctl d
    for ctl in /sys/fs/cgroup/*/; do
        [[ -d ${ctl}kubepods ]] || continue
        while read -r d; do rmdir "$d" 2>/dev/null || true; done < <(find "${ctl}kubepods" -depth -type d)
    done
}

cmd_stop() {
    load_state
    local pids=() p
    # The kubelet first, so it does not restart what is being stopped.
    for p in $(pids_of kubelet) $(pids_of kube-scheduler); do pids+=("$p"); done
    if ((${#pids[@]})); then log "stopping kubelet and kube-scheduler"; stop_pids "${pids[@]}"; fi
    # Every pod's containers and sandboxes: kill the tasks, so the shims exit.
    if [[ -x ${CTR:-} ]] && containerd_ready; then
        local t
        for t in $(ctr_cmd tasks ls -q 2>/dev/null); do
            ctr_cmd tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
        done
        local deadline=$((SECONDS + 15))
        while [[ -n $(ctr_cmd tasks ls -q 2>/dev/null | while read -r t; do
            ctr_cmd tasks delete "$t" >/dev/null 2>&1 || echo "$t"
        done) ]] && ((SECONDS < deadline)); do sleep 0.2; done
    fi
    pids=()
    for p in $(pids_of containerd); do pids+=("$p"); done
    if ((${#pids[@]})); then log "stopping containerd"; stop_pids "${pids[@]}"; fi
    # Shims whose tasks could not be deleted (containerd down, say), and any
    # container process they leave: both are in the pods' cgroups.
    pids=()
    for p in $(pids_of containerd-shim-runc-v2); do pids+=("$p"); done
    if ((${#pids[@]})); then log "stopping leftover shims"; stop_pids "${pids[@]}"; fi
    local ctl
    for ctl in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods; do
        [[ -d $ctl ]] || continue
        pids=()
        while read -r p; do pids+=("$p"); done < <(find "$ctl" -name cgroup.procs -exec cat {} + 2>/dev/null)
        if ((${#pids[@]})); then log "killing ${#pids[@]} leftover pod processes"; stop_pids "${pids[@]}"; fi
    done
    unmount_all
    remove_cgroups
    rm -rf "$NODE"
}

# Removes the bridge if this state dir's node created it. Pod veths went with
# their network namespaces. Runs after the apiserver, which listens on the
# bridge's address, has stopped (cluster.sh down calls it): an apiserver whose
# address vanished does not shut down in time.
cmd_unbridge() {
    local owner_file="/run/fanout-e2e-$BRIDGE.owner"
    if [[ -f $owner_file && $(<"$owner_file") == "$STATE" ]]; then
        ip link del "$BRIDGE" 2>/dev/null || true
        rm -f "$owner_file"
        log "removed bridge $BRIDGE"
    fi
}

# ---- commands ----------------------------------------------------------------------------

UP_DONE=0
cleanup_failed_up() {
    local rc=$?
    if ((rc != 0 && UP_DONE == 0)); then
        # The control plane goes too: it is bound to the bridge's address, and
        # the bridge goes with the node.
        log "up failed (exit $rc); stopping the node and control plane; logs are in $LOGS"
        cmd_down || true
    fi
}

cmd_up() {
    local start=$SECONDS
    [[ $(id -u) == 0 ]] || die "the node needs root (bridge, mounts, cgroups)"
    if healthy && bash "$E2E_DIR/cluster.sh" status >/dev/null 2>&1; then
        log "already up (state in $NODE)"
        print_env
        return
    fi
    trap cleanup_failed_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    if [[ -d $NODE ]]; then
        log "cleaning up a previous node"
        cmd_stop
    fi
    ensure_packages
    log "resolving tools (built on first use; see e2e/tools.sh)"
    local containerd kubelet scheduler pause_image pause_archive
    containerd=$("$E2E_DIR/tools.sh" path containerd)
    CTR=$("$E2E_DIR/tools.sh" path ctr)
    "$E2E_DIR/tools.sh" path containerd-shim-runc-v2 >/dev/null
    kubelet=$("$E2E_DIR/tools.sh" path kubelet)
    scheduler=$("$E2E_DIR/tools.sh" path kube-scheduler)
    KUBECTL=$("$E2E_DIR/tools.sh" path kubectl)
    read -r pause_image pause_archive <<<"$("$E2E_DIR/image.sh" pause)"

    ensure_bridge
    # The control plane, listening where pods can reach it.
    FANOUT_APISERVER_ADDRESS=$HOST_IP bash "$E2E_DIR/cluster.sh" up >/dev/null

    mkdir -p "$RUN" "$LOGS" "$NODE/containerd" "$NODE/kubelet/root"
    sign_client_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
    sign_client_cert kube-scheduler "/CN=system:kube-scheduler"
    write_kubeconfig "$NODE/kubelet/kubeconfig" "system:node:$NODE_NAME" kubelet
    write_kubeconfig "$NODE/scheduler.kubeconfig" system:kube-scheduler kube-scheduler
    read -r KUBELET_PORT KUBELET_HEALTHZ_PORT SCHEDULER_PORT <<<"$(free_ports 3)"
    cat >"$RUN/state.env" <<EOF
KUBELET_PORT=$KUBELET_PORT
KUBELET_HEALTHZ_PORT=$KUBELET_HEALTHZ_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KUBECTL=$KUBECTL
CTR=$CTR
EOF
    write_cni_config
    write_containerd_config "$pause_image"
    write_kubelet_config "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT"

    # containerd finds containerd-shim-runc-v2 on PATH.
    PATH="${containerd%/*}:$PATH" start_component containerd "$containerd" \
        --config "$NODE/containerd/config.toml"
    wait_for "containerd answers on $NODE/containerd/containerd.sock" containerd containerd_ready
    ctr_cmd images import "$pause_archive" >/dev/null
    log "imported $pause_image"

    start_component kube-scheduler "$scheduler" \
        --kubeconfig="$NODE/scheduler.kubeconfig" \
        --authentication-kubeconfig="$NODE/scheduler.kubeconfig" \
        --authorization-kubeconfig="$NODE/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
        --cert-dir="$NODE/scheduler-certs" \
        --leader-elect=false
    wait_for "kube-scheduler /healthz ok" kube-scheduler scheduler_healthy

    start_component kubelet "$kubelet" \
        --config="$NODE/kubelet/config.yaml" \
        --kubeconfig="$NODE/kubelet/kubeconfig" \
        --root-dir="$NODE/kubelet/root" \
        --cert-dir="$NODE/kubelet/pki" \
        --hostname-override="$NODE_NAME" \
        --node-ip="$HOST_IP"
    wait_for "kubelet /healthz ok" kubelet kubelet_healthy
    wait_for "node $NODE_NAME Ready" kubelet node_ready

    UP_DONE=1
    log "node up in $((SECONDS - start))s; pods on $POD_SUBNET, host address $HOST_IP"
    print_env
}

# cluster.sh down stops the node first and removes the bridge last.
cmd_down() { bash "$E2E_DIR/cluster.sh" down; }

cmd_status() {
    load_state
    local rc=0 c pid health
    for c in "${COMPONENTS[@]}"; do
        pid=$(pids_of "$c" | head -n1)
        if [[ -z $pid ]]; then echo "$c: not running"; rc=1; continue; fi
        health=unhealthy
        case $c in
            containerd) [[ -x ${CTR:-} ]] && containerd_ready && health="ready ($NODE/containerd/containerd.sock)" ;;
            kube-scheduler) [[ -n $SCHEDULER_PORT ]] && scheduler_healthy && health=healthy ;;
            kubelet) [[ -n $KUBELET_HEALTHZ_PORT ]] && kubelet_healthy && node_ready &&
                health="healthy, node $NODE_NAME Ready" ;;
        esac
        echo "$c: running, pid $pid, $health"
        [[ $health != unhealthy ]] || rc=1
    done
    return "$rc"
}

cmd_load() { # archive
    [[ -f ${1:-} ]] || die "usage: $0 load ARCHIVE (from e2e/image.sh)"
    load_state
    if ! [[ -x ${CTR:-} ]] || ! containerd_ready; then die "the node is not up"; fi
    ctr_cmd images import "$1" >&2
}

case ${1:-help} in
    up) cmd_up ;;
    down) cmd_down ;;
    stop) cmd_stop ;;
    unbridge) cmd_unbridge ;;
    status) cmd_status ;;
    env) print_env ;;
    load) shift; cmd_load "$@" ;;
    ctr) shift; load_state; ctr_cmd "$@" ;;
    help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (try: $0 help)" ;;
esac
