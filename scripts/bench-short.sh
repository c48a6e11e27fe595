#!/usr/bin/env bash
# The short form of the dispatcher and gateway benchmarks: the same tables as the full
# runs in a few minutes, to run before and after a change to a hot path (their figures
# go in the change's closing note; docs/benchmarks.md, "Short form"). Run it on a
# quiet machine: anything else on the cores moves the numbers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FANOUT_BENCH_SHORT=1
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench -p fanout-dispatcher --bench dispatch
cargo bench -p fanout-gateway --bench gateway-bench
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
