"""sweeplab's benchmarks (issue 7), side by side in one run: `make bench`, `make bench-smoke`.

    python benchmarks/run.py                 # every benchmark at full size
    python benchmarks/run.py --smoke         # tiny sizes (minutes on 2 cores)
    python benchmarks/run.py B2 B3 --smoke   # some of them
    python benchmarks/run.py B6 --device cpu --tiny   # the GPU benchmark's code path on the CPU

Prints the machine, versions and date, then per benchmark one `BENCH_JSON {...}` line and its
Markdown rows (figure, value, target, met), and writes both to benchmarks/results/<UTC time>-<size>.*
(the source of docs/performance.md's figures); after a full run, benchmarks/results/history.md and
docs/performance.md's table of targets (history.py).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

for key, value in {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(key, value)  # before torch or Ray is imported
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "src")]

import b1_trainer  # noqa: E402
import b2_sweep  # noqa: E402
import b5_search  # noqa: E402
import b6_gpu  # noqa: E402
import b7_fused  # noqa: E402
import b8_scale  # noqa: E402
import history  # noqa: E402
from harness import BENCH_DIR, MARKDOWN_HEADER, Result, environment, print_json  # noqa: E402

BENCHMARKS: dict[str, tuple[str, Callable[..., Result]]] = {
    "B1": ("trainer vs hand-written loop", b1_trainer.run),
    "B2": ("sweep overhead vs bare loop, naive Ray Tune, Hydra's Optuna sweeper", b2_sweep.run_b2),
    "B3": ("tracking on vs tracking=none", b2_sweep.run_b3),
    "B4": ("launch latency to the first metric in MLflow", b2_sweep.run_b4),
    "B5": ("search efficiency, TPE + ASHA vs random", b5_search.run),
    "B6": ("GPU epochs and packing", b6_gpu.run),
    "B7": ("fused trials", b7_fused.run_fused_trials),
    "B8": ("scale: many short trials", b8_scale.run),
}


def run_one(name: str, size: str, **options) -> Result:
    title, fn = BENCHMARKS[name]
    started = time.perf_counter()
    try:
        result = fn(size, **options)
    except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
        traceback.print_exc(file=sys.stderr)
        lines = str(err).strip().splitlines() or [type(err).__name__]
        result = Result(name, title, size, status="error", reason=" / ".join(lines[-3:])[:500])
    result.seconds = time.perf_counter() - started
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="*", metavar="B", help=f"some of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the instruments, not the figures")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="B6's device")
    parser.add_argument("--tiny", action="store_true", help="B6 at its tiny size (with --device cpu), recorded as a "
                        "smoke run: its figures are no GPU's")
    parser.add_argument("--packing", default="sweep", choices=["sweep", "processes", "none"],
                        help="B6's K packed trials: through `sweeplab sweep` (Ray), as K training processes (no Ray: "
                             "the lent GPU machine has none), or not at all")
    parser.add_argument("--results", default=str(BENCH_DIR / "results"), help="folder for the results files")
    args = parser.parse_args(argv)
    names = [b.upper() for b in args.benchmarks] or list(BENCHMARKS)
    unknown = [b for b in names if b not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]}; known: {', '.join(BENCHMARKS)}")
    size = "smoke" if args.smoke or args.tiny else "full"
    results_dir = Path(args.results)
    doc = history.doc_for(results_dir, size)
    if doc is not None:
        try:
            history.check_markers(doc)  # where the run will write its table of targets, before minutes of running
        except ValueError as err:
            parser.error(str(err))

    env = environment(size)
    print(f"sweeplab benchmarks ({size}): {env['date']}, {env['machine']}, GPU: {env['gpu'] or 'none'}, "
          f"load {env['load_1min']:.2f}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), flush=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}-{size}"
    jsonl, rows = stem.with_suffix(".jsonl"), []
    for name in names:
        print(f"\n## {name}: {BENCHMARKS[name][0]}", flush=True)
        result = run_one(name, size, device=args.device, tiny=args.tiny, packing=args.packing)
        line = print_json(result, env)
        with open(jsonl, "a") as f:
            f.write(line + "\n")
        if result.status == "skipped":
            print(f"{name}: skipped: {result.reason}", flush=True)
        print(MARKDOWN_HEADER + "\n" + "\n".join(result.markdown_rows()), flush=True)
        rows += result.markdown_rows()
    table = (f"{size} run, {env['date']}, {env['machine']}, GPU: {env['gpu'] or 'none'}\n"
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "\n\n" + MARKDOWN_HEADER + "\n"
             + "\n".join(rows) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(f"\nall benchmarks ({size}):\n{table}\nresults: {jsonl} and {stem.with_suffix('.md')}", flush=True)
    if size == "full":
        print(f"every full run's figures: {history.write(results_dir, doc=doc)}", flush=True)
    return 1 if any("| error:" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
