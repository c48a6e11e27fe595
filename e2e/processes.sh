# shellcheck shell=bash
# Sourced by cluster.sh and node.sh: logging, and starting, finding, waiting for and
# stopping the daemons a script owns. Not run on its own.
#
# The sourcing script sets, before calling any of these:
#   LOG_PREFIX       the tag of its log lines (cluster, node)
#   OUR_EXECUTABLES  array: the executable names of its daemons
#   OUR_DIR          absolute directory every one of its daemons names on its command
#                    line; a process is the script's only if it does (a recycled pid,
#                    or another cluster's daemon, never matches)
#   RUN, LOGS        where pid files and logs go
#   TIMEOUT          seconds wait_for waits; STOP_TIMEOUT seconds before SIGKILL

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$LOG_PREFIX" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# True if pid is alive, runs one of OUR_EXECUTABLES and names OUR_DIR.
is_ours() { # pid
    local pid=$1 exe name
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    for name in "${OUR_EXECUTABLES[@]}"; do
        if [[ ${exe##*/} == "$name" ]]; then
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$OUR_DIR/"
            return
        fi
    done
    return 1
}

# Whether process `pid` has its command line in place (it is empty for a moment
# while the process execs).
has_arguments() { # pid
    local first
    read -r -d '' first 2>/dev/null <"/proc/$1/cmdline" && [[ -n $first ]]
}

# Our processes running executable `name`, found by scanning /proc.
pids_of() { # name
    local p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $(readlink "/proc/$p/exe" 2>/dev/null) == */"$1" ]] || continue
        if is_ours "$p"; then echo "$p"; fi
    done
}

# A component's pids: the one in its pid file, and any other found in /proc (covers
# a lost or stale pid file).
component_pids() { # name
    local name=$1 pid='' p
    if [[ -f $RUN/$name.pid ]]; then
        pid=$(<"$RUN/$name.pid")
        if is_ours "$pid"; then echo "$pid"; else pid=''; fi
    fi
    for p in $(pids_of "$name"); do
        if [[ $p != "$pid" ]]; then echo "$p"; fi
    done
}

start_component() { # name binary args...
    local name=$1 bin=$2
    shift 2
    : >"$LOGS/$name.log"
    # setsid: its own session, so a caller's Ctrl-C or process-group kill does not
    # take half of it down; the script's down/stop command stops it. Job control off
    # first: with it on (a shell started with -m or -i), each background job leads a
    # process group of its own, setsid then forks and its parent exits at once, and
    # $! would be that parent, not the component.
    set +m
    setsid "$bin" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
    local pid=$! exe real deadline=$((SECONDS + 10))
    real=$(readlink -f "$bin")
    echo "$pid" >"$RUN/$name.pid"
    # Until the child has exec'd the binary it is a copy of this shell (then setsid),
    # which is_ours, and so wait_for, would take for a component that exited: on a
    # busy machine that window is long enough to be seen. During the exec the kernel
    # points /proc/<pid>/exe at the binary before it lays out the arguments, and
    # is_ours reads those too: an empty command line made wait_for report a running
    # kube-controller-manager as exited in CI. A child that is gone (or a zombie) has
    # no exe, and wait_for reports it with its log.
    while exe=$(readlink "/proc/$pid/exe" 2>/dev/null) &&
        { [[ $exe != "$real" ]] || ! has_arguments "$pid"; }; do
        ((SECONDS < deadline)) || die "$name (pid $pid) had not started $bin after 10s"
        sleep 0.01
    done
    log "$name started (pid $pid, log $LOGS/$name.log)"
}

# SIGTERM, then SIGKILL after STOP_TIMEOUT; returns once the pids are gone.
stop_pids() { # pid...
    local p deadline alive
    (($#)) || return 0
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || return 0
        sleep 0.2
    done
    for p in "$@"; do
        if kill -0 "$p" 2>/dev/null; then
            log "pid $p did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + 10))
    for p in "$@"; do
        while kill -0 "$p" 2>/dev/null; do
            ((SECONDS < deadline)) || die "pid $p survives SIGKILL"
            sleep 0.1
        done
    done
}

show_log_tail() { # name
    if [[ -f $LOGS/$1.log ]]; then
        log "last lines of $LOGS/$1.log:"
        tail -n 40 "$LOGS/$1.log" >&2
    fi
}

# How process `pid`, no longer ours, ended: its exit status when it was started by
# this shell and has exited, else what /proc still shows of it.
process_end() { # pid
    local pid=$1 status exe
    [[ $pid =~ ^[0-9]+$ ]] || { echo "no pid recorded"; return; }
    if exe=$(readlink "/proc/$pid/exe" 2>/dev/null); then
        echo "pid $pid is running $exe, which is not one of ours under $OUR_DIR"
        return
    fi
    # Gone, or a zombie (which has no exe): `wait` gives a child's status.
    if wait "$pid" 2>/dev/null; then status=0; else status=$?; fi
    if ((status == 127)); then
        echo "pid $pid is gone; not a child of this shell"
    elif ((status > 128)); then
        echo "pid $pid was killed by signal $((status - 128))"
    else
        echo "pid $pid exited with status $status"
    fi
}

# Polls a probe until it passes; fails early if the component's process died.
wait_for() { # what component probe...
    local what=$1 comp=$2 deadline=$((SECONDS + TIMEOUT)) start=$SECONDS
    shift 2
    until "$@"; do
        local pid
        pid=$(cat "$RUN/$comp.pid" 2>/dev/null)
        # Asked twice before it counts as gone: a running kube-controller-manager
        # once failed is_ours right after start_component in CI (with its own binary
        # as exe when the message was written); how is not known.
        if ! is_ours "$pid" && ! { sleep 0.2 && is_ours "$pid"; }; then
            show_log_tail "$comp"
            die "$comp exited while waiting for: $what ($(process_end "$pid"))"
        fi
        if ((SECONDS >= deadline)); then
            show_log_tail "$comp"
            die "timed out after ${TIMEOUT}s waiting for: $what"
        fi
        sleep 0.25
    done
    log "$what ($((SECONDS - start))s)"
}

# `count` free loopback ports, space-separated, from just below the range the kernel
# picks source ports of outgoing connections from (an ephemeral port can be taken by
# a connection before the server binds it).
free_ports() { # count
    python3 - "$1" <<'PY'
import random, socket, sys
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    high = max(int(f.read().split()[0]), 11024)
candidates = list(range(max(high - 12000, 10000), high))
random.shuffle(candidates)
socks = []
for port in candidates:
    if len(socks) == int(sys.argv[1]):
        break
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}