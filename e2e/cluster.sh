#!/usr/bin/env bash
# A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
# on loopback, run the way envtest runs one, for e2e tests. No nodes: pods stay
# Pending. See docs/control-plane.md.
#
#   e2e/cluster.sh up      build tools if needed, start everything, wait until ready,
#                          print `export KUBECONFIG=...` (and a PATH line for kubectl)
#   e2e/cluster.sh down    stop everything, remove the data (certificates stay)
#   e2e/cluster.sh status  report; exit 0 only if every component is healthy
#   e2e/cluster.sh env     print the export lines, for: eval "$(e2e/cluster.sh env)"
#
# Environment: FANOUT_CACHE (default ~/.cache/fanout), FANOUT_CLUSTER_DIR (default
# $FANOUT_CACHE/cluster), FANOUT_CLUSTER_TIMEOUT (seconds per readiness wait, default 120),
# FANOUT_APISERVER_ADDRESS (default 127.0.0.1: the address the apiserver binds to and
# advertises; e2e/node.sh sets the pod bridge's host address so pods can reach it).
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FANOUT_CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
STATE=${FANOUT_CLUSTER_DIR:-$FANOUT_CACHE/cluster}
mkdir -p "$FANOUT_CACHE" "$STATE"
# Absolute paths: they end up on command lines and in pid checks.
FANOUT_CACHE=$(cd "$FANOUT_CACHE" && pwd)
STATE=$(cd "$STATE" && pwd)
export FANOUT_CACHE
PKI=$STATE/pki
DATA=$STATE/data
LOGS=$STATE/logs
RUN=$STATE/run
KUBECONFIG_FILE=$STATE/kubeconfig
KCM_KUBECONFIG=$STATE/controller-manager.kubeconfig
TIMEOUT=${FANOUT_CLUSTER_TIMEOUT:-120}
STOP_TIMEOUT=20
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
# An address that must exist on this host when the apiserver starts.
WANT_API_ADDRESS=${FANOUT_APISERVER_ADDRESS:-127.0.0.1}
API_ADDRESS=$WANT_API_ADDRESS
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

LOG_PREFIX=cluster
OUR_EXECUTABLES=("${COMPONENTS[@]}")
OUR_DIR=$STATE
# shellcheck source=e2e/processes.sh
source "$E2E_DIR/processes.sh"

# ---- processes ----------------------------------------------------------------------

# Stops the components one at a time, the last started first: the apiserver removes
# its lease from etcd as it shuts down, and waits a long time if etcd is already gone.
stop_all() {
    local name p pids
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
        name=${COMPONENTS[i]}
        pids=()
        for p in $(component_pids "$name"); do
            log "stopping $name (pid $p)"
            pids+=("$p")
        done
        stop_pids "${pids[@]}"
    done
}

# ---- probes -------------------------------------------------------------------------

# GET a URL; prints the body, fails on a non-2xx answer or no answer. Plain http
# for etcd; https without verification for the controller-manager's self-signed
# health endpoint.
http_get() { # url
    if command -v curl >/dev/null 2>&1; then
        curl -fsSk --max-time 5 "$1"
    else
        python3 - "$1" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5, context=ctx).read().decode())
PY
    fi
}

kctl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" --request-timeout=5s "$@"; }

etcd_healthy() { http_get "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }
apiserver_ready() { [[ $(kctl get --raw=/readyz 2>/dev/null) == ok ]]; }
kcm_healthy() { [[ $(http_get "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null) == ok ]]; }
default_sa_exists() {
    kctl get namespace default >/dev/null 2>&1 &&
        kctl -n default get serviceaccount default >/dev/null 2>&1
}

# ---- certificates -----------------------------------------------------------------

write_openssl_cnf() {
    cat >"$PKI/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[serving]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:$SERVICE_IP,IP:$API_ADDRESS,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

sign_cert() { # name subject extensions
    local name=$1 subj=$2 ext=$3
    new_key "$PKI/$name.key"
    openssl req -new -key "$PKI/$name.key" -subj "$subj" -config "$PKI/openssl.cnf" -out "$PKI/$name.csr"
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -set_serial "0x$(openssl rand -hex 12)" -days 3650 \
        -extfile "$PKI/openssl.cnf" -extensions "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr"
}

# True if the apiserver's serving certificate names $API_ADDRESS.
apiserver_cert_names_address() {
    openssl x509 -noout -ext subjectAltName -in "$PKI/apiserver.crt" 2>/dev/null |
        tr ',' '\n' | sed 's/^[[:space:]]*//' | grep -qxF "IP Address:$API_ADDRESS"
}

# Certificates survive `down`; regenerated when missing or expiring within a day.
# The apiserver's own certificate is re-signed (same CA) when the address changes.
ensure_pki() {
    local f ok=1
    for f in ca.crt ca.key apiserver.crt apiserver.key admin.crt admin.key \
        controller-manager.crt controller-manager.key sa.key sa.pub; do
        [[ -s $PKI/$f ]] || ok=0
    done
    if ((ok)) && openssl x509 -checkend 86400 -noout -in "$PKI/apiserver.crt" >/dev/null &&
        openssl x509 -checkend 86400 -noout -in "$PKI/admin.crt" >/dev/null; then
        if ! apiserver_cert_names_address; then
            log "re-signing the apiserver certificate for $API_ADDRESS"
            write_openssl_cnf
            sign_cert apiserver "/CN=kube-apiserver" serving
        fi
        ensure_kubelet_client_cert
        return
    fi
    log "generating certificates in $PKI"
    rm -rf "$PKI"
    mkdir -p "$PKI"
    chmod 700 "$PKI"
    write_openssl_cnf
    new_key "$PKI/ca.key"
    openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=fanout-e2e-ca" -days 3650 \
        -config "$PKI/openssl.cnf" -extensions ca -out "$PKI/ca.crt"
    sign_cert apiserver "/CN=kube-apiserver" serving
    sign_cert admin "/O=system:masters/CN=fanout-e2e-admin" client
    sign_cert controller-manager "/CN=system:kube-controller-manager" client
    new_key "$PKI/sa.key"
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
    ensure_kubelet_client_cert
}

# The apiserver's client certificate towards kubelets (logs, exec, port-forward).
# Signed separately so a PKI from before it existed is kept.
ensure_kubelet_client_cert() {
    [[ -s $PKI/apiserver-kubelet-client.crt && -s $PKI/apiserver-kubelet-client.key ]] && return
    [[ -s $PKI/openssl.cnf ]] || write_openssl_cnf
    sign_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
}

write_kubeconfig() { # file user cert key
    local file=$1 user=$2 cert=$3 key=$4
    umask 077
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fanout-e2e
  cluster:
    server: https://$API_ADDRESS:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$cert")
    client-key-data: $(base64 -w0 <"$key")
contexts:
- name: fanout-e2e
  context:
    cluster: fanout-e2e
    user: $user
    namespace: default
current-context: fanout-e2e
EOF
    mv "$file.tmp" "$file"
    umask 022
}

# ---- state --------------------------------------------------------------------------

load_state() {
    ETCD_PORT='' ETCD_PEER_PORT='' API_PORT='' KCM_PORT='' KUBECTL='' API_ADDRESS=127.0.0.1
    if [[ -f $RUN/state.env ]]; then
        # shellcheck source=/dev/null
        source "$RUN/state.env"
    fi
}

print_env() {
    echo "export KUBECONFIG=$KUBECONFIG_FILE"
    if [[ -n ${KUBECTL:-} ]]; then
        echo "export PATH=\"${KUBECTL%/*}:\$PATH\""
    fi
}

healthy() {
    load_state
    [[ -n $API_PORT && -f $KUBECONFIG_FILE && -x ${KUBECTL:-/nonexistent} ]] || return 1
    # Up, but on another address than asked for: not what the caller needs.
    [[ $API_ADDRESS == "$WANT_API_ADDRESS" ]] || return 1
    local c
    for c in "${COMPONENTS[@]}"; do
        is_ours "$(cat "$RUN/$c.pid" 2>/dev/null)" || return 1
    done
    etcd_healthy && apiserver_ready && kcm_healthy
}

# ---- commands -------------------------------------------------------------------------

# If `up` fails or is interrupted half-way, stop what it started (logs stay).
UP_DONE=0
cleanup_failed_up() {
    local rc=$?
    if ((rc != 0 && UP_DONE == 0)); then
        log "up failed (exit $rc); stopping what was started; logs are in $LOGS"
        stop_all || true
        rm -rf "$DATA" "$RUN" "$KUBECONFIG_FILE" "$KCM_KUBECONFIG"
    fi
}

cmd_up() {
    local start=$SECONDS
    if healthy; then
        log "already up (state in $STATE)"
        print_env
        return
    fi
    API_ADDRESS=$WANT_API_ADDRESS
    trap cleanup_failed_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$STATE"
    if [[ -d $RUN || -d $DATA ]]; then
        log "cleaning up a previous run"
        stop_all
        rm -rf "$DATA" "$RUN" "$KUBECONFIG_FILE" "$KCM_KUBECONFIG"
    fi

    log "resolving tools (builds them on first use; see e2e/tools.sh)"
    local etcd apiserver kcm
    etcd=$("$E2E_DIR/tools.sh" path etcd)
    apiserver=$("$E2E_DIR/tools.sh" path kube-apiserver)
    kcm=$("$E2E_DIR/tools.sh" path kube-controller-manager)
    KUBECTL=$("$E2E_DIR/tools.sh" path kubectl)

    ensure_pki
    mkdir -p "$DATA" "$LOGS" "$RUN"
    read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT <<<"$(free_ports 4)"
    cat >"$RUN/state.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
API_ADDRESS=$API_ADDRESS
KCM_PORT=$KCM_PORT
KUBECTL=$KUBECTL
EOF
    write_kubeconfig "$KUBECONFIG_FILE" fanout-e2e-admin "$PKI/admin.crt" "$PKI/admin.key"
    write_kubeconfig "$KCM_KUBECONFIG" system:kube-controller-manager \
        "$PKI/controller-manager.crt" "$PKI/controller-manager.key"

    local etcd_url=http://127.0.0.1:$ETCD_PORT peer_url=http://127.0.0.1:$ETCD_PEER_PORT
    start_component etcd "$etcd" \
        --name=fanout-e2e \
        --data-dir="$DATA/etcd" \
        --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
        --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
        --initial-cluster="fanout-e2e=$peer_url" \
        --unsafe-no-fsync=true
    wait_for "etcd healthy on $etcd_url" etcd etcd_healthy

    start_component kube-apiserver "$apiserver" \
        --etcd-servers="$etcd_url" \
        --bind-address="$API_ADDRESS" --advertise-address="$API_ADDRESS" --secure-port="$API_PORT" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --authorization-mode=Node,RBAC \
        --enable-admission-plugins=NodeRestriction \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=true \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" \
        --service-account-signing-key-file="$PKI/sa.key"
    wait_for "kube-apiserver /readyz ok on https://$API_ADDRESS:$API_PORT" kube-apiserver apiserver_ready

    start_component kube-controller-manager "$kcm" \
        --kubeconfig="$KCM_KUBECONFIG" \
        --authentication-kubeconfig="$KCM_KUBECONFIG" \
        --authorization-kubeconfig="$KCM_KUBECONFIG" \
        --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
        --cert-dir="$DATA/controller-manager-certs" \
        --service-account-private-key-file="$PKI/sa.key" \
        --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --use-service-account-credentials=true \
        --leader-elect=false
    wait_for "kube-controller-manager /healthz ok" kube-controller-manager kcm_healthy
    wait_for "namespace default and serviceaccount default/default exist" \
        kube-controller-manager default_sa_exists

    UP_DONE=1
    log "cluster up in $((SECONDS - start))s; kubeconfig: $KUBECONFIG_FILE"
    print_env
}

cmd_down() {
    # A node (e2e/node.sh) on this control plane goes first: its pods, mounts and
    # bridge must not outlive the apiserver that describes them.
    if [[ -d $STATE/node ]]; then bash "$E2E_DIR/node.sh" stop; fi
    stop_all
    rm -rf "$DATA" "$RUN" "$KUBECONFIG_FILE" "$KCM_KUBECONFIG"
    # The node's bridge (if any) outlives the apiserver bound to its address.
    bash "$E2E_DIR/node.sh" unbridge
    log "down (certificates kept in $PKI, logs in $LOGS)"
}

cmd_status() {
    load_state
    local rc=0 c pid pids
    for c in "${COMPONENTS[@]}"; do
        pids=$(component_pids "$c" | tr '\n' ' ')
        pid=${pids%% *}
        if [[ -z $pid ]]; then
            echo "$c: not running"
            rc=1
            continue
        fi
        local health=unhealthy
        case $c in
            etcd) [[ -n $ETCD_PORT ]] && etcd_healthy && health="healthy (http://127.0.0.1:$ETCD_PORT)" ;;
            kube-apiserver) [[ -n $API_PORT && -n $KUBECTL ]] && apiserver_ready &&
                health="ready (https://${API_ADDRESS:-127.0.0.1}:$API_PORT)" ;;
            kube-controller-manager) [[ -n $KCM_PORT ]] && kcm_healthy &&
                health="healthy (https://127.0.0.1:$KCM_PORT)" ;;
        esac
        echo "$c: running, pid ${pids% }, $health"
        [[ $health != unhealthy ]] || rc=1
    done
    if ((rc == 0)); then echo "kubeconfig: $KUBECONFIG_FILE"; fi
    return "$rc"
}

case ${1:-help} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) load_state; print_env ;;
    help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (try: $0 help)" ;;
esac
