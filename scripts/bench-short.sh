#!/usr/bin/env bash
# The short forms of the dispatcher and gateway benchmarks: the same tables as the full
# runs (docs/benchmarks.md, "How to run"), in a minute or two each once built. Run it
# before and after every change to a hot path (delivery, ingest), on a quiet machine
# (anything else on the cores moves the numbers); its tables go in the change's
# closing note.
#
# Environment:
#   FANOUT_BENCH_ONLY=dispatcher|gateway   run one of the two
#   BENCH_COMPARE_FANOUT=<fanout binaries>  the gateway bench measures these builds too,
#                                           in the same rounds (before and after)
#   CARGO_TARGET_DIR, and every variable the benches read (docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export FANOUT_BENCH_SHORT=1
only=${FANOUT_BENCH_ONLY:-}
# The script's own selector: the dispatch bench reads the same variable as a list of
# its contenders, and would refuse "dispatcher".
unset FANOUT_BENCH_ONLY

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || revision="$revision+changes"

# Built first (the benches, and the binaries they run), so that the times below are
# the runs'. Progress goes to stderr, the tables to stdout.
cargo build --quiet --release -p fanout
cargo build --quiet --release -p fanout-baselines
cargo bench --quiet --no-run -p fanout-dispatcher --bench dispatch
cargo bench --quiet --no-run -p fanout-gateway --bench gateway-bench

printf '# bench-short at %s, %s; load average before: %s\n' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$revision" "$(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -z $only || $only == dispatcher ]]; then
    printf '\n## Dispatcher (short form)\n'
    started=$SECONDS
    cargo bench --quiet -p fanout-dispatcher --bench dispatch
    printf '\n(%ss)\n' $((SECONDS - started))
fi
if [[ -z $only || $only == gateway ]]; then
    printf '\n## Gateway (short form)\n'
    started=$SECONDS
    cargo bench --quiet -p fanout-gateway --bench gateway-bench
    printf '\n(%ss)\n' $((SECONDS - started))
fi
printf '\nload average after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
