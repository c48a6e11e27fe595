#!/usr/bin/env python3
"""Splits perf profiles of HTTP servers into parts of the stack, side by side.

    python3 scripts/profile-parts.py "trivial server=trivial.data=14.1" "gateway=gateway.data=21.9"

Each argument is a column: its name, a profile (`perf record -p <pid>`) and the CPU
µs per request measured over the same seconds. Prints, for each part (the kernel,
hyper, axum, tokio, the allocator, the gateway's own code, ...), its share of each
profile's samples times that column's µs, and the last column minus the first. Used
by scripts/gateway-profile.sh; parts are matched on symbol names, first match wins.
"""

import re
import subprocess
import sys
from collections import Counter

# (part, pattern on the symbol), in the order they are tried.
PARTS = [
    ("the gateway's own code", r"fanout_gateway::"),
    ("its NATS client", r"fanout_nats_client::"),
    ("hyper and httparse", r"hyper::|httparse::"),
    ("axum", r"axum::|matchit::"),
    ("http (header maps, URIs)", r"\bhttp::"),
    ("tokio", r"tokio::"),
    ("allocation (mimalloc)", r"\bmi_|_mi_|malloc|\bfree\b"),
    ("copies (mem*)", r"mem(move|cpy|cmp|set)"),
    # libc's and the vDSO's symbols, not Rust functions that happen to be called `send`.
    (
        "system call wrappers, clock",
        r"^(__GI_+|__libc_)?(writev|recv|recvfrom|send|sendto|epoll_wait|read|write)$"
        r"|clock_gettime",
    ),
    ("bytes", r"bytes::"),
    ("std and core", r"\b(core|alloc|std)::"),
]
KERNEL = "the kernel"
OTHER = "the rest"


def parts(path):
    report = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "symbol", "--stdio"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shares = Counter()
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*)", line)
        if not match:
            continue
        share, kind, symbol = float(match[1]), match[2], match[3].strip()
        if kind == "k":
            shares[KERNEL] += share
            continue
        part = next((name for name, pattern in PARTS if re.search(pattern, symbol)), OTHER)
        shares[part] += share
    if not shares:
        sys.exit(f"profile-parts: no samples in {path}")
    return shares


def column(arg):
    try:
        name, path, micros = arg.split("=")
        micros = float(micros)
    except ValueError:
        sys.exit(f"profile-parts: {arg!r} is not name=profile=µs\n{__doc__}")
    shares = parts(path)
    return name, {part: share * micros / 100 for part, share in shares.items()}


def main(args):
    if len(args) < 2:
        sys.exit(__doc__)
    columns = [column(arg) for arg in args]
    names = [KERNEL] + [name for name, _ in PARTS] + [OTHER]
    first, last = columns[0][1], columns[-1][1]
    print("| part | " + " | ".join(f"{name}, µs" for name, _ in columns)
          + f" | {columns[-1][0]} minus {columns[0][0]} |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for part in names + ["all"]:
        if part == "all":
            cells = [f"**{sum(micros.values()):.2f}**" for _, micros in columns]
            extra = sum(last.values()) - sum(first.values())
        else:
            cells = [f"{micros.get(part, 0.0):.2f}" for _, micros in columns]
            extra = last.get(part, 0.0) - first.get(part, 0.0)
        print(f"| {part} | " + " | ".join(cells) + f" | {extra:+.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
