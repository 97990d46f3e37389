"""The driver's Optuna work per trial, alone: CPU of the searcher's suggest, one epoch and complete against a
fresh SQLite study (the part of B8's driver CPU that sweeplab's searcher decides).

    .venv/bin/python benchmarks/searcher_cpu.py [TRIALS]   (default 200; prints ms of CPU per trial)
"""
from __future__ import annotations

import random
import sys
import tempfile
import time

from sweeplab.sweep.searcher import OptunaSearcher
from sweeplab.sweep.space import Dimension
from sweeplab.sweep.sweep_id import claim_sweep_id


def cpu_per_trial(trials: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/optuna.db"
        objectives = [("val/acc", "max")]
        searcher = OptunaSearcher([Dimension("optimizer.lr", "float", 1e-3, 1e-1, True)], "random", 0, url,
                                  claim_sweep_id(url, "cpu", objectives), objectives, [0], trials, 1)
        rng = random.Random(0)
        started = time.process_time()
        for i in range(trials):
            config = searcher.suggest(f"t{i}")
            result = {"epoch": 1, "val/acc": rng.random(), "config": config}
            searcher.on_trial_result(f"t{i}", result)
            searcher.on_trial_complete(f"t{i}", result)
        return (time.process_time() - started) / trials


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    print(f"{1000 * cpu_per_trial(count):.1f} ms of CPU per trial ({count} trials, random sampler, SQLite)")
