#!/usr/bin/env bash
# Builds container images as OCI archives on this host: no Docker, no registry.
# `e2e/node.sh load ARCHIVE` imports one into the node's containerd, and pods use
# it with imagePullPolicy IfNotPresent or Never. See docs/node.md.
#
#   e2e/image.sh fanout [--debug]   build the fanout binary (release; --debug: the dev
#                                   profile, much faster to build) and pack it; prints
#                                   "<image name> <archive path>"
#   e2e/image.sh fanout --binary PATH   pack an existing fanout binary instead
#   e2e/image.sh fanout ... --tag-suffix S  the same binary under another tag
#                                   (e2e-<hash>-S): an image to upgrade a release to
#   e2e/image.sh pause              pack the pod sandbox (pause) image; prints the same
#   e2e/image.sh nats               pack the pinned nats-server (e2e/tools.sh nats)
#
# Archives go to $FANOUT_CACHE/images/. Image tags are the first 12 hex digits of
# the binary's sha256, so a rebuilt binary is a new image and a node never runs a
# stale one under an old tag.
#
# The fanout image follows the project's image contract (Dockerfile): the binary at
# /usr/local/bin/fanout as ENTRYPOINT, user 65532:65532. The binary links glibc
# dynamically, so the image carries exactly the shared libraries `ldd` lists, at the
# paths the binary's loader looks for them.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/.." && pwd)
FANOUT_CACHE=${FANOUT_CACHE:-$HOME/.cache/fanout}
IMAGES=$FANOUT_CACHE/images
mkdir -p "$IMAGES"

log() { printf '[image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

short_hash() { sha256sum "$1" | cut -c1-12; }

# "--file /path/in/image=/path/on/host" for every library the binary loads, the
# loader included. Symlinks are resolved: the image gets the file's content under
# the name the loader asks for.
library_args() { # binary
    local line path
    while IFS= read -r line; do
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        if [[ $line =~ =\>\ (/[^ ]+)\  ]]; then
            path=${BASH_REMATCH[1]}
        elif [[ $line =~ ^[[:space:]]*(/[^ ]+)\  ]]; then
            path=${BASH_REMATCH[1]}
        else
            continue
        fi
        printf -- '--file\n%s=%s\n' "$path" "$(readlink -f "$path")"
    done < <(ldd "$1" 2>/dev/null)
}

# Prints "<name> <archive>"; reuses an archive already written for this binary.
pack() { # name-without-tag binary image-path [extra oci_image.py args...]
    local repo=$1 bin=$2 target=$3 tag archive name; shift 3
    TAG_SUFFIX=${TAG_SUFFIX:-}
    tag=$(short_hash "$bin")${TAG_SUFFIX:+-$TAG_SUFFIX}
    name=docker.io/library/$repo:e2e-$tag
    archive=$IMAGES/$repo-e2e-$tag.tar
    if [[ ! -s $archive ]]; then
        local args=()
        mapfile -t args < <(library_args "$bin")
        python3 "$E2E_DIR/oci_image.py" --name "$name" --out "$archive" \
            --entrypoint "$target" --file "$target=$bin" "${args[@]}" "$@" >/dev/null
        log "$name -> $archive ($(du -m "$archive" | cut -f1) MB)"
        # Keep the archives of the last few builds only.
        find "$IMAGES" -name "$repo-e2e-*.tar" -mmin +120 -delete
    fi
    echo "$name $archive"
}

cmd_fanout() {
    local profile=release dir=release start=$SECONDS bin=''
    while (($#)); do
        case $1 in
            --debug) profile=dev dir=debug ;;
            --binary) bin=${2:?--binary needs a path}; shift ;;
            --tag-suffix) TAG_SUFFIX=${2:?--tag-suffix needs a value}; shift ;;
            *) die "unknown option '$1'" ;;
        esac
        shift
    done
    if [[ -z $bin ]]; then
        log "building fanout (cargo profile $profile)"
        # Called from inside `cargo test`, the inherited CARGO_* variables
        # (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...) differ from a shell's; build
        # scripts that watch them rerun and half the dependency tree is rebuilt,
        # and rebuilt again by the next plain `cargo build`. Drop them.
        local v
        for v in $(compgen -e); do
            case $v in
                CARGO_HOME | CARGO_TARGET_DIR) ;;
                CARGO_* | OUT_DIR) unset "$v" ;;
            esac
        done
        (cd "$REPO" && cargo build --locked --profile "$profile" -p fanout >&2)
        log "built in $((SECONDS - start))s"
        bin=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/$dir/fanout
    fi
    [[ -x $bin ]] || die "no binary at $bin"
    # Debug info is most of a dev-profile binary (hundreds of MB); symbols stay,
    # so backtraces still name functions.
    local stripped
    stripped=$IMAGES/.fanout-$(short_hash "$bin")
    if [[ ! -x $stripped ]]; then
        strip --strip-debug -o "$stripped.tmp" "$bin"
        mv "$stripped.tmp" "$stripped"
        find "$IMAGES" -name '.fanout-*' -mmin +120 -delete
    fi
    bin=$stripped
    # CA certificates for https targets, when the host has them.
    local certs=()
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        certs=(--file /etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt)
    fi
    pack fanout "$bin" /usr/local/bin/fanout --user 65532:65532 \
        --dir /tmp \
        --text "/etc/passwd=root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
" \
        --text "/etc/group=root:x:0:
nonroot:x:65532:
" \
        "${certs[@]}"
}

cmd_pause() {
    local bin
    bin=$("$E2E_DIR/tools.sh" path pause)
    pack pause "$bin" /pause
}

# The store is a volume mounted at /data; the monitoring port answers the probes.
cmd_nats() {
    local bin
    bin=$("$E2E_DIR/tools.sh" path nats-server)
    pack nats "$bin" /nats-server --user 65532:65532 --dir /data
}

case ${1:-help} in
    fanout) shift; cmd_fanout "$@" ;;
    pause) cmd_pause ;;
    nats) cmd_nats ;;
    help | -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (try: $0 help)" ;;
esac
