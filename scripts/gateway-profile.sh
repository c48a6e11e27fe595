#!/usr/bin/env bash
# Where the gateway's CPU per event goes beyond the trivial server's: profiles both
# one-thread servers while the gateway bench runs them within the same CPU limit
# (docs/benchmarks.md, "The CPU goal within a CPU limit"), over the same seconds, and
# prints each one's CPU µs per request by part of the stack (the kernel, hyper,
# axum, tokio, the gateway's own code, its NATS client, ...) side by side.
#
#     scripts/gateway-profile.sh
#
# Needs root (the cgroups) and perf. Takes about 5 minutes. perf's sampling slows
# both servers, so read the parts against each other, never as the bench's figures.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v perf > /dev/null || { echo "gateway-profile: perf is not installed" >&2; exit 1; }
work=$(mktemp -d /tmp/fanout-gateway-profile-XXXXXX)
trap 'rm -rf "$work"' EXIT

# Long phases, so that the pair within the limit outlasts the profiles; one pair.
FANOUT_BENCH_SHORT=1 BENCH_ROUNDS=1 BENCH_GOAL_PAIRS=1 BENCH_SECONDS=20 \
    cargo bench -p fanout-gateway --bench gateway-bench > "$work/bench.log" 2>&1 &
bench=$!

# The servers' pids, from the cgroups the bench makes for them (cgroup v1 or v2).
# A cgroup left empty (by a killed run, or before the server has joined it) is skipped.
pid_in() {
    local dir pid
    for dir in /sys/fs/cgroup/cpu/fanout-gateway-bench-"$1"-* /sys/fs/cgroup/fanout-gateway-bench-"$1"-*; do
        pid=$(head -n 1 "$dir/cgroup.procs" 2> /dev/null) || continue
        if [ -n "$pid" ]; then
            echo "$pid"
            return
        fi
    done
}
gateway='' trivial=''
deadline=$((SECONDS + 600))
until [ -n "$gateway" ] && [ -n "$trivial" ]; do
    if ! kill -0 "$bench" 2> /dev/null; then
        echo "gateway-profile: the bench ended before its pair within a CPU limit:" >&2
        tail -n 20 "$work/bench.log" >&2
        exit 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { echo "gateway-profile: no pair within a CPU limit after 600 s" >&2; exit 1; }
    sleep 1
    gateway=$(pid_in gateway) trivial=$(pid_in trivial)
done

# Past the warm-up, both at once for 8 s.
sleep 4
perf record -q -F 4999 -o "$work/gateway.data" -p "$gateway" -- sleep 8 2> /dev/null &
profiling=$!
perf record -q -F 4999 -o "$work/trivial.data" -p "$trivial" -- sleep 8 2> /dev/null
wait "$profiling"
wait "$bench"

line=$(grep -m 1 'within .*run 1:' "$work/bench.log") || {
    echo "gateway-profile: the bench printed no run within a CPU limit" >&2
    exit 1
}
echo "$line"
# "gateway 13931 events/s at 21.9 µs (...), trivial server 21398 req/s at 14.1 µs (...)"
micros() { sed -E "s/.*$1 [0-9]+ [a-z]+\/s at ([0-9.]+) µs.*/\1/" <<< "$line"; }
python3 scripts/profile-parts.py \
    "trivial server=$work/trivial.data=$(micros 'trivial server')" \
    "gateway=$work/gateway.data=$(micros gateway)"
