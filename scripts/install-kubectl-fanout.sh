#!/usr/bin/env bash
# Installs `kubectl fanout` (the kubectl plugin) from this repository; nothing is
# downloaded but the Rust crates cargo has not cached yet (with --offline: nothing).
#
#   scripts/install-kubectl-fanout.sh [--prefix DIR] [--offline] [--chart DIR]
#
#   --prefix DIR   where to install (default ~/.local/bin): the `fanout` binary, and
#                  `kubectl-fanout` linked to it (kubectl runs a plugin it finds on PATH
#                  by that name; the binary acts as the plugin when called so)
#   --offline      build with cargo --offline (every crate must be in cargo's cache)
#   --chart DIR    also package the Helm chart into DIR (helm package), for an offline
#                  `helm install fanout DIR/fanout-<version>.tgz`
#
# Environment: FANOUT_BIN, a fanout binary to install instead of building a release
# one; CARGO_TARGET_DIR, where cargo builds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${HOME}/.local/bin
OFFLINE=()
CHART_DIR=
die() { echo "install-kubectl-fanout: $*" >&2; exit 1; }
say() { echo "install-kubectl-fanout: $*"; }

while (($#)); do
    case $1 in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --offline) OFFLINE=(--offline); shift ;;
        --chart) CHART_DIR=${2:?--chart needs a directory}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

if [[ -n ${FANOUT_BIN:-} ]]; then
    BIN=$FANOUT_BIN
else
    command -v cargo >/dev/null || die "cargo is needed to build fanout (https://rustup.rs), or set FANOUT_BIN"
    say "building fanout (release; a few minutes the first time)"
    (cd "$ROOT" && cargo build --release --locked "${OFFLINE[@]}" -p fanout)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/fanout
fi
[[ -x $BIN ]] || die "$BIN is not an executable"

mkdir -p "$PREFIX"
install -m 0755 "$BIN" "$PREFIX/fanout.new"
mv -f "$PREFIX/fanout.new" "$PREFIX/fanout"
ln -sfn fanout "$PREFIX/kubectl-fanout"
"$PREFIX/kubectl-fanout" --version >/dev/null || die "$PREFIX/kubectl-fanout does not run"
say "installed $PREFIX/fanout and $PREFIX/kubectl-fanout -> fanout"

if [[ -n $CHART_DIR ]]; then
    command -v helm >/dev/null || die "helm is needed for --chart"
    mkdir -p "$CHART_DIR"
    helm package "$ROOT/charts/fanout" --destination "$CHART_DIR" >/dev/null
    say "packaged the chart: $(ls "$CHART_DIR"/fanout-*.tgz | tail -n 1)"
fi

case ":$PATH:" in
    *":$PREFIX:"*) say "try: kubectl fanout --help" ;;
    *) say "$PREFIX is not on your PATH; add it (e.g. export PATH=\"$PREFIX:\$PATH\" in your shell's profile), then: kubectl fanout --help" ;;
esac
