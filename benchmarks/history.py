"""Every run's figures, read from benchmarks/results/*.jsonl: one row per figure, its values newest first, each
with the run's date and machine. `run.py` rewrites benchmarks/results/history.md with it after each run, so the
results files stay the one record of what was measured and the history is never copied out by hand.

    python benchmarks/history.py               # the full-size runs, as Markdown
    python benchmarks/history.py B2 B3         # some benchmarks
    python benchmarks/history.py --size smoke
    python benchmarks/history.py --write       # rewrite benchmarks/results/history.md (after a run cut short)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import target_text, value_text

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY_FILE = "history.md"
HEADER = "| benchmark | figure | target | met in | every run, newest first |\n|---|---|---|---|---|"


def runs(results: Path, size: str = "full") -> list[list[dict[str, Any]]]:
    """The records of each run of that size, newest first (a run is one `<UTC time>-<size>.jsonl`)."""
    files = sorted(results.glob(f"*-{size}.jsonl"), reverse=True)
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()] for f in files]


def where(env: dict[str, Any]) -> str:
    """When and on what: `2026-11-30 12:15, AMD EPYC` (the GPU's name where there was one)."""
    machine = env.get("gpu") or env.get("machine", "").split(", ", 2)[-1].replace("(R)", "")
    return f"{env.get('date', '')[:16]}, {machine}"


def table(results: Path, size: str = "full", benchmarks: list[str] | None = None) -> str:
    """The Markdown table: figures in the order the newest run that has them lists them."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs(results, size):
        for record in run:
            if record["status"] != "ok" or (benchmarks and record["benchmark"] not in benchmarks):
                continue
            for check in record["checks"]:
                row = rows.setdefault((record["benchmark"], check["what"]), {"target": check["target"], "values": [],
                                                                                      "met": []})
                row["met"].append(check["met"])
                row["values"].append(f"{value_text(check['value'], check['unit'])} ({where(record['env'])})")
    lines = [HEADER]
    for (benchmark, what), row in sorted(rows.items(), key=lambda item: item[0][0]):  # stable: run order within
        target = target_text(row["target"])
        measured = [m for m in row["met"] if m is not None]  # None: the run could not measure it (n/a)
        met = f"{sum(m is True for m in measured)} of {len(measured)} runs" if measured else "not measured"
        met = met if target else ""
        lines.append(f"| {benchmark} | {what} | {target} | {met} | {'; '.join(row['values'])} |")
    return "\n".join(lines) + "\n"


def document(results: Path, size: str = "full") -> str:
    """history.md: the table under a line saying where it comes from."""
    return (f"# Every {size}-size benchmark run\n\nWritten by `benchmarks/history.py` from the `*-{size}.jsonl` files "
            "beside it after each `make bench`; what changed between runs is in docs/performance-log.md.\n\n"
            + table(results, size))


def write(results: Path, size: str = "full") -> Path:
    out = results / HISTORY_FILE
    out.write_text(document(results, size))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="*", metavar="B", help="some of B1 ... B8 (default: all)")
    parser.add_argument("--size", default="full", choices=["full", "smoke"])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of results files")
    parser.add_argument("--write", action="store_true", help=f"rewrite {HISTORY_FILE} in that folder instead")
    args = parser.parse_args(argv)
    if not any(args.results.glob(f"*-{args.size}.jsonl")):
        parser.error(f"no {args.size}-size results in {args.results}: run `make bench` (or --size smoke)")
    if args.write:
        print(write(args.results, args.size))
    else:
        print(table(args.results, args.size, [b.upper() for b in args.benchmarks] or None), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
