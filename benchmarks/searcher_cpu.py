"""The driver's Optuna work per trial, alone: CPU of the searcher's suggest, one epoch and complete against a
fresh study (the part of B8's driver CPU that sweeplab's searcher decides).

    .venv/bin/python benchmarks/searcher_cpu.py [TRIALS] [--sampler tpe] [--storage sqlite]

TRIALS defaults to 200, the sampler to random over one parameter (tpe: B8's two parameters), the storage to
the journal file sweeplab opens in output_dir; sqlite puts the same searcher on a SQLite file (the default
before the journal, and what output_dirs from earlier versions keep), to show what the storage costs.
Prints ms of CPU per trial and the class of the storage the searcher wrote to.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

from sweeplab.sweep.searcher import OptunaSearcher
from sweeplab.sweep.space import Dimension
from sweeplab.sweep.sweep_id import claim_sweep_id

SPACES = {
    "random": [Dimension("optimizer.lr", "float", 1e-3, 1e-1, True)],
    "tpe": [Dimension("optimizer.lr", "float", 0.01, 0.3, True),
            Dimension("model.width", "categorical", choices=(64, 128, 256))],
}


def cpu_per_trial(trials: int, sampler: str = "random", storage: str = "journal") -> tuple[float, str]:
    """CPU seconds per trial, and the class of the storage the searcher wrote to."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"{folder}/optuna.journal" if storage == "journal" else f"sqlite:///{folder}/optuna.db"
        objectives = [("val/acc", "max")]
        searcher = OptunaSearcher(SPACES[sampler], sampler, 0, url, claim_sweep_id(url, "cpu", objectives),
                                  objectives, [0], trials, 1)
        rng = random.Random(0)
        started = time.process_time()
        for i in range(trials):
            config = searcher.suggest(f"t{i}")
            result = {"epoch": 1, "val/acc": rng.random(), "config": config}
            searcher.on_trial_result(f"t{i}", result)
            searcher.on_trial_complete(f"t{i}", result)
        return (time.process_time() - started) / trials, type(searcher.backend).__name__


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trials", type=int, nargs="?", default=200)
    parser.add_argument("--sampler", choices=sorted(SPACES), default="random")
    parser.add_argument("--storage", choices=("journal", "sqlite"), default="journal")
    args = parser.parse_args()
    cpu, backend = cpu_per_trial(args.trials, args.sampler, args.storage)
    print(f"{1000 * cpu:.1f} ms of CPU per trial ({args.trials} trials, {args.sampler} sampler, {backend})")
