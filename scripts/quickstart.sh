#!/usr/bin/env bash
# Quick start: Fanout delivering real events on this machine, no Kubernetes needed.
#
#   scripts/quickstart.sh                 build, start NATS + three demo APIs + `fanout
#                                         standalone -f examples/order-placed`, send
#                                         events, wait until every delivery settled,
#                                         print the per-target table, stop everything
#   scripts/quickstart.sh --keep-running  the same, then keep running until Ctrl-C
#   scripts/quickstart.sh cluster         the API on a local Kubernetes control plane:
#                                         CRDs, the example applied, kubectl get
#   scripts/quickstart.sh cluster down    stop that control plane (`down` works too)
#
# Environment:
#   FANOUT_QUICKSTART_EVENTS  events to send (default 30)
#   FANOUT_QUICKSTART_DIR     work directory, emptied first (default target/quickstart)
#   FANOUT_BIN                a fanout binary to use instead of building a release one
#   FANOUT_CACHE              where pinned tools are cached (default ~/.cache/fanout)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

# ---- the cluster variant (the API on a real apiserver) ------------------------------
cluster() {
    if [[ ${1:-} == down ]]; then
        exec bash e2e/cluster.sh down
    fi
    bash e2e/cluster.sh up
    eval "$(bash e2e/cluster.sh env)"
    KUBECTL=$(bash e2e/tools.sh path kubectl)
    k() { "$KUBECTL" "$@"; }

    log "installing the CRDs"
    cargo run --quiet -- crd | k apply --server-side -f -
    k wait --for=condition=Established --timeout=60s crd/apitargets.fanout.dev crd/fanoutroutes.fanout.dev

    log "applying examples/order-placed into namespace shop"
    k create namespace shop --dry-run=client -o yaml | k apply -f -
    k apply --server-side -n shop -f examples/order-placed/

    log "kubectl get fanoutroutes,apitargets -n shop"
    k get fanoutroutes,apitargets -n shop

    log "a manifest with a mistake is refused with the field named:"
    k apply --server-side -n shop -f e2e/manifests/invalid/max-delay-below-initial-delay.yaml || true

    cat <<EOT

The control plane keeps running. Try:
  eval "\$(bash e2e/cluster.sh env)"
  kubectl explain fanoutroute.spec.targets
  kubectl get fanout -n shop
Stop it with: scripts/quickstart.sh cluster down
EOT
}

case ${1:-} in
    cluster) shift; cluster "$@"; exit ;;
    down) cluster down; exit ;;
    --keep-running) KEEP_RUNNING=1 ;;
    "") KEEP_RUNNING=0 ;;
    *) die "unknown argument '$1' (see the top of $0)" ;;
esac

# ---- the standalone quick start -----------------------------------------------------
EVENTS=${FANOUT_QUICKSTART_EVENTS:-30}
WORK=${FANOUT_QUICKSTART_DIR:-target/quickstart}
command -v curl >/dev/null || die "curl is needed to send events"

# Logs go to files: plain text, no colour codes.
export NO_COLOR=1

pids=()
stop_all() {
    local pid
    # Newest first: standalone before the APIs it delivers to and the NATS it uses.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_all EXIT
# Ctrl-C or a TERM to the script: exit, which runs stop_all.
trap 'exit 130' INT TERM

# A port nothing listens on (connecting fails), from a range the kernel does not hand
# out for outgoing connections, and not one already picked by this script.
picked=" "
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        [[ $picked == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            picked+="$port "
            echo "$port"
            return
        fi
    done
}

# Polls a command until it succeeds; fails after the deadline with what it waited for.
wait_until() { # seconds what command...
    local limit=$1 deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}

alive() { # pid log: fail with the log when a started process died
    kill -0 "$1" 2>/dev/null || { cat "$2" >&2; die "a process exited early; its log is above ($2)"; }
}

if [[ -n ${FANOUT_BIN:-} ]]; then
    FANOUT=$FANOUT_BIN
else
    log "building fanout (release; the first build takes a few minutes)"
    cargo build --release --locked -p fanout
    FANOUT=target/release/fanout
fi
FANOUT=$(cd "$(dirname "$FANOUT")" && pwd)/$(basename "$FANOUT")

log "getting the pinned nats-server"
NATS_SERVER=$(bash e2e/tools.sh path nats-server)

rm -rf "$WORK"
mkdir -p "$WORK/manifests"
WORK=$(cd "$WORK" && pwd)

NATS_PORT=$(free_port)
NATS_MONITOR=$(free_port)
GATEWAY=127.0.0.1:$(free_port)
STATUS=127.0.0.1:$(free_port)
INVENTORY=127.0.0.1:$(free_port)
MAILER=127.0.0.1:$(free_port)
ANALYTICS=127.0.0.1:$(free_port)

log "starting nats-server with JetStream on 127.0.0.1:$NATS_PORT (store in $WORK/nats)"
# setsid: Ctrl-C reaches fanout standalone, which drains; NATS and the demo APIs
# keep serving until stop_all ends them after it.
setsid "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR" -js -sd "$WORK/nats" \
    -l "$WORK/nats-server.log" &
pids+=($!)
wait_until 20 "nats-server to be ready" curl -sf "http://127.0.0.1:$NATS_MONITOR/healthz?js-enabled-only=true"

log "starting three demo APIs (inventory answers 503 to 10% of requests, to show retries)"
setsid "$FANOUT" demo-target --listen "$INVENTORY" --name inventory --fail-rate 0.1 >"$WORK/inventory.log" 2>&1 &
pids+=($!)
setsid "$FANOUT" demo-target --listen "$MAILER" --name mailer >"$WORK/mailer.log" 2>&1 &
pids+=($!)
setsid "$FANOUT" demo-target --listen "$ANALYTICS" --name analytics >"$WORK/analytics.log" 2>&1 &
pids+=($!)

# The example's ApiTargets point at in-cluster and public hosts; here they point at
# the demo APIs. The ingest token gets a fresh value, kept in a file.
log "copying examples/order-placed and pointing its ApiTargets at the demo APIs"
cp examples/order-placed/*.yaml "$WORK/manifests/"
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
sed -i \
    -e "s#http://inventory.shop.svc:8080#http://$INVENTORY#" \
    -e "s#http://mailer.shop.svc:8080#http://$MAILER#" \
    -e "s#https://collector.analytics.example.com#http://$ANALYTICS#" \
    "$WORK/manifests/targets.yaml"
sed -i -e "s#replace-me-orders-ingest-token#$TOKEN#" "$WORK/manifests/secrets.yaml"
(umask 077 && printf 'Authorization: Bearer %s\n' "$TOKEN" >"$WORK/auth-header")
grep -n 'url:' "$WORK/manifests/targets.yaml"

log "starting: fanout standalone -f $WORK/manifests --namespace shop"
"$FANOUT" standalone -f "$WORK/manifests" --namespace shop \
    --nats-url "nats://127.0.0.1:$NATS_PORT" \
    --listen-gateway "$GATEWAY" --listen-metrics "$STATUS" \
    --state-dir "$WORK/state" >"$WORK/standalone.log" 2>&1 &
STANDALONE=$!
pids+=("$STANDALONE")
# Standalone's /readyz includes the gateway's readiness (its address serves events only).
ready() { alive "$STANDALONE" "$WORK/standalone.log" && curl -sf "http://$STATUS/readyz"; }
wait_until 30 "fanout standalone to be ready" ready
for pid in "${pids[@]}"; do alive "$pid" "$WORK/standalone.log"; done

INGEST=http://$GATEWAY/v1/namespaces/shop/routes/orders/events
log "sending $EVENTS events: every third one is order.updated, the others order.placed"
cat <<EOT
   each one like this (the e-mail target only gets order.placed):
   curl -X POST $INGEST \\
     -H @$WORK/auth-header -H 'Content-Type: application/json' \\
     -H 'Idempotency-Key: order-1' -H 'X-Event-Type: order.placed' -d '{"order": 1}'
EOT
placed=0
for ((i = 1; i <= EVENTS; i++)); do
    if ((i % 3 == 0)); then type=order.updated; else type=order.placed; placed=$((placed + 1)); fi
    code=$(curl -s -o "$WORK/last-answer.json" -w '%{http_code}' -X POST "$INGEST" \
        -H @"$WORK/auth-header" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: order-$i" -H "X-Event-Type: $type" -d "{\"order\": $i}")
    [[ $code == 202 ]] || { cat "$WORK/last-answer.json" >&2; die "event $i: HTTP $code instead of 202"; }
done
echo "   all $EVENTS accepted (HTTP 202)"

log "waiting until every delivery has settled (nothing pending or in flight)"
settled() { curl -sf "http://$STATUS/status" | grep -q '"settled":true'; }
wait_until 90 "deliveries to settle" settled

log "per-target delivery table (GET http://$STATUS/status.txt)"
curl -sf "http://$STATUS/status.txt"

# The counts must be what was sent: a failed check fails the script (CI runs it).
delivered() { # target
    curl -sf "http://$STATUS/status" | grep -o "\"name\":\"$1\",\"circuit\":\"[A-Za-z]*\",\"delivered\":[0-9]*" | grep -o '[0-9]*$'
}
check() { # target expected
    local got
    got=$(delivered "$1")
    [[ $got == "$2" ]] || die "$1: $got delivered, expected $2"
}
check inventory "$EVENTS"
check email "$placed"
check analytics "$EVENTS"
echo
echo "   inventory and analytics got all $EVENTS events, email the $placed order.placed ones;"
echo "   inventory's 503s were retried ($(grep -c -- '-> 503' "$WORK/inventory.log" || true) of them). What the APIs logged: $WORK/{inventory,mailer,analytics}.log"

if ((KEEP_RUNNING)); then
    cat <<EOT

Everything keeps running until Ctrl-C:
  send:    curl -X POST $INGEST -H @$WORK/auth-header -H 'X-Event-Type: order.placed' -d '{"order": 99}'
  status:  curl http://$STATUS/status.txt   (JSON: /status, metrics: /metrics)
  logs:    $WORK/standalone.log, $WORK/inventory.log, $WORK/mailer.log, $WORK/analytics.log
EOT
    wait "$STANDALONE" || true
    exit
fi

log "stopping: SIGTERM to fanout standalone (drains, exits 0), then the APIs and NATS"
kill -TERM "$STANDALONE"
status=0
wait "$STANDALONE" || status=$?
[[ $status == 0 ]] || { tail -20 "$WORK/standalone.log" >&2; die "fanout standalone exited with $status"; }
echo "   fanout standalone exited 0"
