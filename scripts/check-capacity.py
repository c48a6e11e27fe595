#!/usr/bin/env python3
"""Checks docs/capacity.md against docs/benchmarks.md.

Every row of the table between the `check-capacity` markers in capacity.md is a
figure derived from a benchmark table (see FIGURES). This script reads those tables,
computes each figure again and fails, naming it, when the document's value is more
than 5% away, or when a table or row it needs is missing. Run it after recording new
benchmark results: `python3 scripts/check-capacity.py`.
"""

import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05


def sections(text):
    """{heading: body} for every `## ` heading."""
    out, name, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("## "):
            if name:
                out[name] = lines
            name, lines = line[3:].strip(), []
        elif name:
            lines.append(line)
    if name:
        out[name] = lines
    return out


def tables(lines):
    """Every markdown table in `lines`, as (header cells, rows of cells)."""
    found, current = [], []
    for line in lines + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            if len(current) >= 2:
                found.append((current[0], [r for r in current[2:]]))
            current = []
    return found


def number(cell):
    """The value of a cell: `0.035`, `**1.51x**`, `18.9–19.9` (the middle), `17,000`."""
    cell = cell.replace("*", "").replace(",", "")
    values = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", cell)]
    if not values:
        raise ValueError(f"no number in {cell!r}")
    if "–" in cell and len(values) >= 2:
        return (values[0] + values[1]) / 2
    return values[0]


def cell(doc, section, column, row, which="first"):
    """The number in `column` of the row whose first cells match `row` (a regex),
    in the first (or last) table of `section` that has that column."""
    body = doc.get(section)
    if body is None:
        raise LookupError(f'benchmarks.md has no section "{section}"')
    candidates = [t for t in tables(body) if column in t[0]]
    if not candidates:
        raise LookupError(f'no table with a "{column}" column in "{section}"')
    header, rows = candidates[0] if which == "first" else candidates[-1]
    matching = [r for r in rows if re.search(row, " | ".join(r[:2]))]
    if not matching:
        raise LookupError(f'no row matching /{row}/ in the "{column}" table of "{section}"')
    return number(matching[-1][header.index(column)])


def dispatcher_us(b):
    cpu = cell(b, "Dispatcher features: history, CEL, ordering, adaptive concurrency",
               "CPU s / 1000 events", r"^engine \(")
    return cpu / 2 * 1000  # s per 1000 events of 2 deliveries -> µs per delivery


def gateway_us(b):
    return cell(b, "Gateway", "gateway CPU µs per acked event", r"^\d{4}-\d\d-\d\d", "first")


def nats_store_us(b):
    return cell(b, "Gateway", "nats-server CPU µs per acked event", r"^\d{4}-\d\d-\d\d", "first")


def nats_route_us(b):
    return cell(b, "Peer: Bento", "nats-server CPU s / 1000 events", r"Fanout", "last") * 1000


FIGURES = {
    "dispatcher CPU per delivery": dispatcher_us,
    "deliveries per dispatcher core": lambda b: 1e6 / dispatcher_us(b),
    "gateway CPU per acked event": gateway_us,
    "acked events per gateway core": lambda b: 1e6 / gateway_us(b),
    "nats-server CPU per event stored from the gateway": nats_store_us,
    "nats-server CPU per event delivered to two targets": nats_route_us,
}


def main():
    bench = sections((ROOT / "docs/benchmarks.md").read_text())
    capacity = (ROOT / "docs/capacity.md").read_text()
    block = re.search(r"<!-- check-capacity.*?-->(.*?)<!-- /check-capacity -->", capacity, re.S)
    if not block:
        sys.exit("docs/capacity.md: no check-capacity table")
    stated = {}
    for line in block.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0] in FIGURES:
            stated[cells[0]] = number(cells[1])
    problems = []
    for name, compute in FIGURES.items():
        if name not in stated:
            problems.append(f'"{name}": not in the table of docs/capacity.md')
            continue
        try:
            want = compute(bench)
        except (LookupError, ValueError) as e:
            problems.append(f'"{name}": {e}')
            continue
        if abs(stated[name] - want) > TOLERANCE * want:
            problems.append(f'"{name}": docs/capacity.md says {stated[name]:g}, the benchmarks give {want:.3g}')
        else:
            print(f"ok  {name}: {stated[name]:g} (benchmarks: {want:.3g})")
    for p in problems:
        print(f"docs/capacity.md is out of date: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
