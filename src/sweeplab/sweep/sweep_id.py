"""A new sweep's id, ``<name>-%Y%m%d-%H%M%S``, claimed in the Optuna storage so no two launches share one."""
from __future__ import annotations

import time

import optuna

from sweeplab.sweep.samplers import study_directions
from sweeplab.tracking.study_store import open_storage

MAX_SUFFIX = 100


def claim_sweep_id(storage_url: str, name: str, objectives: list[tuple[str, str]]) -> str:
    """Create the sweep's study under a fresh id. Creating a study whose name exists fails in the storage itself
    (a unique key), so of two sweeps started in the same second one gets the plain id and the other ``-2``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    directions = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
                  for d in study_directions(objectives)]
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, MAX_SUFFIX + 1):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            storage.create_new_study(directions, candidate)
            return candidate
        except optuna.exceptions.DuplicatedStudyError:
            continue
    raise RuntimeError(f"{MAX_SUFFIX} sweeps named {base}[-n] exist already")
