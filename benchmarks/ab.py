"""A sweep of B8 or B2, this checkout against another one, run after run: the A/B behind a change's figures.

    .venv/bin/python benchmarks/ab.py OTHER_TREE [--workload b8] [--trials 128] [--rounds 2]
    .venv/bin/python benchmarks/ab.py OTHER_TREE --workload b2 [--size full] [--rounds 3]

OTHER_TREE is another checkout of sweeplab (`git worktree add /tmp/before HEAD~1`). Each round runs the sweep once
from OTHER_TREE and once from this checkout, each with its own tree's benchmarks/ and src/, and prints a JSON line
per run and the mean of each side. b8: `b8_scale.one_sweep`, one-epoch MLP trials on digits, TPE, tracking on,
2 at a time. b2: `b2_sweep.sweeplab_run`, B2's LeNet sweep with tracking on (its wall time, the first trial's
start and the first metric in MLflow: B4). Setting PYTHONPATH does not switch the code a benchmark runs:
harness.child_env puts its own checkout's src/ first.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("wall_s", "driver_cpu_s", "client_process_cpu_s", "trial_phase_s", "startup_s",  # a tree may lack some
           "began_s", "steady_s", "teardown_s", "first_metric_s")

ONE_RUN = """
import json, sys
tree, workload, size = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [tree + "/benchmarks", tree + "/src"]
import harness
assert str(harness.ROOT) == tree, f"{harness.ROOT} is not {tree}"
if workload == "b8":
    from b8_scale import one_sweep
    print(json.dumps(one_sweep(int(size), 2)))
else:
    from b2_sweep import sweeplab_run
    print(json.dumps({k: v for k, v in sweeplab_run(size, True).items() if k != "cpu_s"}))
"""


def one_run(tree: Path, workload: str, size: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", ONE_RUN, str(tree), workload, size], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run from {tree} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {key: round(figures[key], 2) for key in FIGURES if figures.get(key) is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout")
    parser.add_argument("--workload", choices=["b8", "b2"], default="b8")
    parser.add_argument("--trials", type=int, default=128, help="b8: the sweep's trial count")
    parser.add_argument("--size", choices=["full", "smoke"], default="full", help="b2: its SIZES entry")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size = str(args.trials) if args.workload == "b8" else args.size
    other = args.other.resolve()
    if not (other / "benchmarks" / "b8_scale.py").is_file():
        parser.error(f"{other} is not a sweeplab checkout with benchmarks/b8_scale.py")
    runs: dict[str, list[dict[str, float]]] = {str(other): [], str(ROOT): []}
    for _ in range(args.rounds):
        for tree in (other, ROOT):
            figures = one_run(tree, args.workload, size)
            runs[str(tree)].append(figures)
            print(json.dumps({"tree": str(tree), **figures}), flush=True)
    for tree, rows in runs.items():
        means = {key: round(statistics.mean(row[key] for row in rows), 2) for key in FIGURES
                 if all(key in row for row in rows)}
        print(json.dumps({"tree": tree, "runs": len(rows), "mean": means}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
