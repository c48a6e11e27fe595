#!/usr/bin/env bash
# Quick start on a local default: brings up the local Kubernetes control plane
# (built from pinned sources on first use), installs the Fanout CRDs, applies the
# order-placed example into namespace "shop" and shows it with kubectl.
#
# What this shows today is the API: validation, defaults and `kubectl get` columns.
# Delivery (operator, dispatchers, gateway, standalone mode) is being built; see the
# feature status table in the README.
#
#   scripts/quickstart.sh          set everything up and print the tables
#   scripts/quickstart.sh down     stop the local control plane
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ${1:-} == down ]]; then
    exec bash e2e/cluster.sh down
fi

bash e2e/cluster.sh up
eval "$(bash e2e/cluster.sh env)"
KUBECTL=$(bash e2e/tools.sh path kubectl)
k() { "$KUBECTL" "$@"; }

echo "==> installing the CRDs"
cargo run --quiet -- crd | k apply --server-side -f -
k wait --for=condition=Established --timeout=60s crd/apitargets.fanout.dev crd/fanoutroutes.fanout.dev

echo "==> applying examples/order-placed into namespace shop"
k create namespace shop --dry-run=client -o yaml | k apply -f -
k apply --server-side -n shop -f examples/order-placed/

echo "==> kubectl get fanoutroutes,apitargets -n shop"
k get fanoutroutes,apitargets -n shop

echo "==> a manifest with a mistake is refused with the field named:"
k apply --server-side -n shop -f e2e/manifests/invalid/max-delay-below-initial-delay.yaml || true

cat <<EOT

The control plane keeps running. Try:
  eval "\$(bash e2e/cluster.sh env)"
  kubectl explain fanoutroute.spec.targets
  kubectl get fanout -n shop
Stop it with: scripts/quickstart.sh down
EOT
