"""Every run's figures, read from benchmarks/results/*.jsonl: one row per figure, its values newest first, each
with the run's date and machine. `run.py` rewrites benchmarks/results/history.md with it after each run, and
docs/performance.md's table of targets (each target's newest figure and how often it was met), so the results files
stay the one record of what was measured and no figure is copied out by hand.

    python benchmarks/history.py               # the full-size runs, as Markdown
    python benchmarks/history.py B2 B3         # some benchmarks
    python benchmarks/history.py --size smoke
    python benchmarks/history.py --write       # rewrite benchmarks/results/history.md and docs/performance.md's
                                               # table of targets (after a run cut short)
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
STANDING_HEADER = ("| benchmark | figure | target | newest run | met in | over the runs |\n"
                   "|---|---|---|---|---|---|")
# docs/performance.md's table of targets sits between these lines, written by `write`
DOC = RESULTS.parents[1] / "docs" / "performance.md"
STANDING_BEGIN = "<!-- written by benchmarks/history.py from benchmarks/results: edit there, not here -->"
STANDING_END = "<!-- end of the table benchmarks/history.py writes -->"


def runs(results: Path, size: str = "full") -> list[list[dict[str, Any]]]:
    """The records of each run of that size, newest first (a run is one `<UTC time>-<size>.jsonl`)."""
    files = sorted(results.glob(f"*-{size}.jsonl"), reverse=True)
    return [[json.loads(line) for line in f.read_text().splitlines() if line.strip()] for f in files]


def where(env: dict[str, Any]) -> str:
    """When and on what: `2026-11-30 12:15, AMD EPYC` (the GPU's name where there was one)."""
    machine = env.get("gpu") or env.get("machine", "").split(", ", 2)[-1].replace("(R)", "")
    return f"{env.get('date', '')[:16]}, {machine}"


def _figures(results: Path, size: str, benchmarks: list[str] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Each figure's target, its checks newest first: (value, unit, where, met), in the order the newest run
    that has it lists it, and whether it is current: the newest run of its benchmark on the same kind of machine
    (with a GPU or without) that measured anything (a run that skipped or failed it did not) still measures it,
    under the same name."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    newest: dict[tuple[str, bool], set[str]] = {}  # (benchmark, on a GPU) -> the figures its newest run has
    for run in runs(results, size):
        for record in run:
            if record["status"] != "ok" or (benchmarks and record["benchmark"] not in benchmarks):
                continue
            kind = (record["benchmark"], bool(record["env"].get("gpu")))
            names = newest.setdefault(kind, {check["what"] for check in record["checks"]})
            for check in record["checks"]:
                row = rows.setdefault((record["benchmark"], check["what"]),
                                      {"target": check["target"], "checks": [], "current": check["what"] in names})
                row["checks"].append((check["value"], check["unit"], where(record["env"]), check["met"]))
    return dict(sorted(rows.items(), key=lambda item: item[0][0]))  # stable: run order within a benchmark


def _met(checks: list[tuple]) -> str:
    measured = [met for *_, met in checks if met is not None]  # None: the run could not measure it (n/a)
    return f"{sum(m is True for m in measured)} of {len(measured)} runs" if measured else "not measured"


def table(results: Path, size: str = "full", benchmarks: list[str] | None = None) -> str:
    """The Markdown table of every run's values."""
    lines = [HEADER]
    for (benchmark, what), row in _figures(results, size, benchmarks).items():
        target = target_text(row["target"])
        values = "; ".join(f"{value_text(value, unit)} ({at})" for value, unit, at, _ in row["checks"])
        lines.append(f"| {benchmark} | {what} | {target} | {_met(row['checks']) if target else ''} | {values} |")
    return "\n".join(lines) + "\n"


def standing(results: Path, size: str = "full") -> str:
    """The current figures that have a target: the newest value and its run, how often the target was met, and
    the values' range over the runs (docs/performance.md's table of targets). A figure measured by an earlier
    definition, under another name, is left to history.md."""
    lines = [STANDING_HEADER]
    for (benchmark, what), row in _figures(results, size).items():
        if not row["target"] or not row["current"]:
            continue
        value, unit, at, _ = row["checks"][0]
        values = [v for v, *_ in row["checks"] if v is not None]
        low, high = (value_text(min(values), unit), value_text(max(values), unit)) if values else ("", "")
        spread = f"{low} – {high}" if low != high else ""
        lines.append(f"| {benchmark} | {what} | {target_text(row['target'])} | {value_text(value, unit)} ({at}) | "
                     f"{_met(row['checks'])} | {spread} |")
    return "\n".join(lines) + "\n"


def check_markers(doc: Path) -> None:
    """``doc`` has the two lines the table of targets is written between, in order (run.py checks this before a
    run of minutes, not after it)."""
    text = doc.read_text() if doc.is_file() else ""
    begin = text.find(STANDING_BEGIN)
    if begin < 0 or text.find(STANDING_END, begin) < 0:
        raise ValueError(f"{doc} has no place for the table of targets: it needs the line {STANDING_BEGIN} and, "
                         f"after it, {STANDING_END}")


def with_standing(doc: str, results: Path, size: str = "full") -> str:
    """``doc`` with the table between its STANDING markers made from ``results``."""
    head, rest = doc.split(STANDING_BEGIN, 1)
    return head + STANDING_BEGIN + "\n" + standing(results, size) + STANDING_END + rest.split(STANDING_END, 1)[1]


def document(results: Path, size: str = "full") -> str:
    """history.md: the table under a line saying where it comes from."""
    return (f"# Every {size}-size benchmark run\n\nWritten by `benchmarks/history.py` from the `*-{size}.jsonl` files "
            "beside it after each `make bench`; what changed between runs is in docs/performance-log.md.\n\n"
            + table(results, size))


def doc_for(results: Path, size: str) -> Path | None:
    """The document whose table of targets a run of ``size`` into ``results`` rewrites: this repository's own full
    runs rewrite DOC; a smoke run, or results elsewhere (a test's), none."""
    return DOC if size == "full" and results.resolve() == RESULTS else None


def write(results: Path, size: str = "full", doc: Path | None = None) -> Path:
    """history.md beside the results and, given ``doc``, its table of targets (``DOC`` for this repository's own
    results)."""
    out = results / HISTORY_FILE
    out.write_text(document(results, size))
    if doc is not None:
        check_markers(doc)
        doc.write_text(with_standing(doc.read_text(), results, size))
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
        try:
            print(write(args.results, args.size, doc_for(args.results, args.size)))
        except ValueError as err:
            parser.error(str(err))
    else:
        print(table(args.results, args.size, [b.upper() for b in args.benchmarks] or None), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
