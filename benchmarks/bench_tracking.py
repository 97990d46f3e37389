"""What MLflow tracking costs a sweep: the driver-side time spent per epoch result.

    .venv/bin/python benchmarks/bench_tracking.py [--trials 8] [--epochs 20]

Replays `trials x epochs` results through MlflowSweepTracker.on_trial_result into a fresh local
SQLite store, async (the default) and synchronous, and compares the per-result cost with the
epoch time of the fastest model here (mlp on mnist5k, about 0.2 s on one core).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


class ReplayedTrial(SimpleNamespace):
    """The attributes of a Ray Tune Trial that the tracker reads."""

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def replay(out: Path, trials: int, epochs: int, async_logging: bool) -> list[float]:
    from sweeplab.sweep.plan import plan_sweep
    from sweeplab.sweep.trainable import TrialSpec
    from sweeplab.sweep.tracker import MlflowSweepTracker

    overrides = [f"output_dir={out}", f"tracking.async_logging={str(async_logging).lower()}"]
    plan = plan_sweep("smoke", overrides)
    tracker = MlflowSweepTracker(plan.cfg, plan, f"bench-{async_logging}")
    tracker.spec = TrialSpec(str(plan.sweep_file), plan.sweep_file.read_text(), tuple(overrides), tuple(d.key for d in plan.dims),
                             str(Path(__file__).resolve().parents[1]))
    tracker.setup()
    fake = [ReplayedTrial(trial_id=f"t{i}", config={"optimizer.lr": 0.05, "model.hidden_sizes": "[64]", "seed": 0,
                                                      "optuna_trial": i}, num_failures=0, checkpoint=None, last_result={})
            for i in range(trials)]
    for t in fake:
        tracker.on_trial_start(0, fake, t)
    costs = []
    for epoch in range(1, epochs + 1):
        for t in fake:
            result = {"epoch": epoch, "train/loss": 1 / epoch, "train/acc": 0.9, "val/loss": 1 / epoch, "val/acc": 0.9,
                      "epoch_seconds": 0.2, "samples_per_second": 5000.0, "lr": 0.05, "params": 50890}
            started = time.perf_counter()
            tracker.on_trial_result(0, fake, t, result)
            costs.append(time.perf_counter() - started)
    started = time.perf_counter()
    for op in tracker._pending:
        op.wait()
    flush = time.perf_counter() - started
    missing = sum(epochs - len(tracker.client.get_metric_history(tracker._children[str(t)], "val/acc")) for t in fake)
    print(f"  {'async' if async_logging else 'sync '}: {statistics.fmean(costs) * 1000:.2f} ms mean, "
          f"p95 {sorted(costs)[int(0.95 * len(costs))] * 1000:.2f} ms per epoch result; "
          f"final flush {flush:.2f} s; metrics missing after flush: {missing}")
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    print(f"{args.trials} trials x {args.epochs} epochs into a fresh SQLite store:")
    for async_logging in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            replay(Path(tmp), args.trials, args.epochs, async_logging)


if __name__ == "__main__":
    main()
