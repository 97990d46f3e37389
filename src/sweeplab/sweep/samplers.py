"""Optuna samplers by name (no Ray import: sweep files are checked before Ray loads)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import optuna

from sweeplab.errors import ConfigError
from sweeplab.sweep.space import Dimension, grid


def make_sampler(
    name: str, dims: list[Dimension], seed: int | None, multi_objective: bool
) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(grid(dims), seed=seed)
    if name == "cmaes":
        if multi_objective:
            raise ConfigError("sweep.sampler=cmaes optimises one objective; use nsga2 or tpe for several")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed)  # nsga2: the schema's Sampler enum allows no other name


def study_directions(objectives: list[tuple[str, str]]) -> list[Literal["maximize", "minimize"]]:
    """Optuna's direction of each (metric, mode) objective."""
    return ["maximize" if mode == "max" else "minimize" for _, mode in objectives]


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage. A local SQLite file runs in WAL mode with synchronous=NORMAL: every Optuna
    write is a transaction, and a full fsync per commit made the driver wait on the disk once per
    intermediate value and user attribute (a crash of the process still loses nothing committed)."""
    if not url.startswith("sqlite:///"):
        return optuna.storages.RDBStorage(url)
    from filelock import FileLock
    from sqlalchemy import event

    path = Path(url[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # two sweeps starting in a fresh folder would both create the schema
        storage = optuna.storages.RDBStorage(url)
    engine = storage.engine

    def tune(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", tune)
    engine.dispose()  # connections opened while the storage was created reconnect with the pragmas
    return storage
