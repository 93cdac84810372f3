"""`make bench`: every benchmark, one table, each figure beside a baseline from the same run.

Each module in BENCHMARKS exposes `run(quick: bool) -> list[dict]` with the keys
benchmark, figure, value, baseline_name, baseline, unit, ratio, goal. Ratios, not absolute
times, are what carry from one machine to another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone

BENCHMARKS = [
    "bench.bench_sampling",
    "bench.bench_worker",
    "bench.bench_http",
    "bench.bench_upload",
    "bench.bench_upload_latency",
    "bench.bench_tus",
    "bench.bench_cancel",
    "bench.bench_sse",
    "bench.bench_warm_start",
    "bench.bench_overlap",
    "bench.bench_cluster",
]


def machine_note() -> str:
    cpu = platform.processor() or platform.machine()
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores{memory}, "
        f"Python {platform.python_version()}, no GPU (MLX on CPU)"
    )


def format_value(value: float, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f} {unit}" if abs(value) < 1000 else f"{value:,.0f} {unit}"


def render(rows: list[dict], note: str) -> str:
    header = "| benchmark | figure | value | baseline (same run) | ratio | goal |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in rows:
        baseline = row.get("baseline")
        baseline_text = (
            f"{format_value(baseline, row['unit'])} — {row['baseline_name']}"
            if baseline is not None
            else row.get("baseline_name") or "-"
        )
        ratio = row.get("ratio")
        lines.append(
            f"| {row['benchmark']} | {row['figure']} | {format_value(row['value'], row['unit'])} "
            f"| {baseline_text} | {f'{ratio:.2f}x' if ratio is not None else '-'} "
            f"| {row.get('goal') or '-'} |"
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Measured {stamp} on {note}.\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument(
        "--only", action="append", help="run only benchmarks whose module contains this"
    )
    parser.add_argument("--write", metavar="FILE", help="also write the table into FILE")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    failed = 0
    for name in BENCHMARKS:
        if args.only and not any(part in name for part in args.only):
            continue
        started = time.monotonic()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(importlib.import_module(name).run(quick=args.quick))
        except Exception:
            failed += 1
            traceback.print_exc()
        print(f"  {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    table = render(rows, machine_note())
    print(table)
    if args.write:
        write_between(args.write, table, "<!-- bench:begin -->", "<!-- bench:end -->")
    return 1 if failed else 0


def write_between(path: str, table: str, begin: str, end: str) -> None:
    """Replace the table between the markers in FILE, keeping everything else (the prose,
    and other commands' tables, such as bench-model's, under their own markers)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{head}{begin}\n{table}{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
