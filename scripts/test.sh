#!/usr/bin/env bash
# Runs every check and test of the project, the way CI does:
#   formatting, clippy (warnings are errors), CRD drift, then all tests, including
#   those against a real nats-server and a real local Kubernetes control plane.
# Tools (kube-apiserver, etcd, kubectl, helm, nats-server) are built or installed on
# first use into ${FANOUT_CACHE:-~/.cache/fanout}; see docs/control-plane.md.
#
# Environment:
#   FANOUT_KEEP_CLUSTER=1   leave the local control plane (and the node's) running afterwards
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "CRD drift: crds/fanout.dev.yaml and the chart's copy must equal 'fanout crd'"
generated=$(mktemp)
trap 'rm -f "$generated"' EXIT
cargo run --quiet --locked -- crd >"$generated"
if ! diff -u crds/fanout.dev.yaml "$generated"; then
    echo "crds/fanout.dev.yaml is out of date: run 'cargo run -q -- crd > crds/fanout.dev.yaml'" >&2
    exit 1
fi
if ! cmp -s crds/fanout.dev.yaml charts/fanout/crds/fanout.dev.yaml; then
    echo "charts/fanout/crds/fanout.dev.yaml differs from crds/fanout.dev.yaml: run 'cp crds/fanout.dev.yaml charts/fanout/crds/'" >&2
    exit 1
fi

step "docs/capacity.md against the benchmark tables it is computed from"
python3 scripts/check-capacity.py

step "pinned tools, the node's included (cached after the first build)"
bash e2e/tools.sh all

step "local control plane"
# The in-cluster test (e2e/tests/in_cluster.rs) brings up a second control plane
# with a real node (e2e/node.sh) in its own state dir; it goes down here too.
node_dir=${FANOUT_NODE_CLUSTER_DIR:-${FANOUT_CACHE:-$HOME/.cache/fanout}/cluster-node}
if [[ ${FANOUT_KEEP_CLUSTER:-0} != 1 ]]; then
    trap 'rm -f "$generated"; bash e2e/cluster.sh down || true
        FANOUT_CLUSTER_DIR=$node_dir bash e2e/node.sh down || true' EXIT
fi
bash e2e/cluster.sh up

step "cargo test --workspace"
# Every test binary runs even after one fails, so that a CI log shows every failure.
cargo test --workspace --locked --no-fail-fast

# The README's quick start, end to end, with the debug binary the tests just built
# (a few seconds; it fails when any target's delivered count is wrong).
step "quick start: scripts/quickstart.sh (standalone)"
FANOUT_BIN=target/debug/fanout bash scripts/quickstart.sh

printf '\n==> all checks passed in %ss\n' "$((SECONDS - started))"
