#!/usr/bin/env bash
# The fault runs of docs/reliability.md: `fanout standalone` on a three-node NATS
# cluster (R3 route) under 100 events/s through its gateway, while a node is killed,
# frozen, cut off or restarted, and a target sits behind a slow, lossy link. Each run
# holds its fault while HOLD events are accepted (100 a second), then checks the
# ledger: every accepted event reached each target or is a dead letter. Prints one
# table line per fault. Needs root (network namespaces; iptables comes from e2e/tools.sh).
#
#   scripts/faults.sh            faults held 30 s each (3000 events), about 6 minutes
#   HOLD=500 scripts/faults.sh   the length CI runs (cli/tests/nats_faults.rs)
#
# Columns: events accepted (202); per target delivered/duplicate requests/
# dead-lettered/lost (lost must be 0: the test fails otherwise); 503s the producer got
# while the fault lasted (it retried each with the same Idempotency-Key); how long
# after the fault began the gateway stored an event again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOLD=${HOLD:-3000}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "building, then running the fault tests with faults held for $HOLD events" >&2
FANOUT_FAULT_HOLD_EVENTS=$HOLD cargo test -q --locked -p fanout --test nats_faults \
    -- --nocapture --test-threads 1 2>&1 | tee "$out" | grep -E '^test |FAILED|panicked' >&2

printf '\n| fault | accepted | per target: delivered/duplicates/dead-lettered/lost | 503s during the fault | stored again after |\n'
printf '|---|---|---|---|---|\n'
# With -q the test harness prints progress dots on the same line: cut them off.
grep -o 'FAULT-REPORT.*' "$out" | while IFS=$'\t' read -r _ fault accepted targets during recovered; do
    printf '| %s | %s | %s | %s | %s |\n' "$fault" "$accepted" "$targets" "$during" "$recovered"
done
grep -q 'test result: ok' "$out"
