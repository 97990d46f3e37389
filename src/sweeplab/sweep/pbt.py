"""Population Based Training over a sweep's space: which searched keys PBT perturbs, and how.

PBT copies a strong trial's checkpoint into a weak one (exploit) and perturbs the copied values
(explore); the trainable restores the model and optimizer state and applies the new values
(``sweeplab.optim.apply_hyperparameters``). Only keys that change no weight's shape can travel:
numbers and categorical values, never a config group or a key that only some choices have.
"""
from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from sweeplab.errors import ConfigError
from sweeplab.sweep.space import Dimension, encode_choice

if TYPE_CHECKING:
    from ray.tune.schedulers import PopulationBasedTraining


# The model and data keys a trial can change on a copied checkpoint: the rest of model.* and data.* may change a
# weight's shape (widths, filters, input size) or what the model was built for
SHAPE_FREE = frozenset({"model.dropout", "model.activation", "model.pooling", "data.augment"})


def perturbable(dim: Dimension) -> bool:
    """A key every trial has, not a config group, and outside model.* and data.* unless SHAPE_FREE."""
    return (not dim.is_group and not dim.when
            and (dim.key in SHAPE_FREE or dim.key.split(".")[0] not in ("model", "data")))


def mutated_dims(scheduler: DictConfig, dims: list[Dimension]) -> list[Dimension]:
    """The dimensions PBT perturbs: ``scheduler.mutate``, or every perturbable float/int one of the space."""
    by_key = {d.key: d for d in dims}
    keys = list(scheduler.mutate) or [d.key for d in dims if d.type in ("float", "int") and perturbable(d)]
    for key in keys:
        dim = by_key.get(key)
        if dim is None or not perturbable(dim):
            fit = ", ".join(d.key for d in dims if perturbable(d)) or "none"
            raise ConfigError(f"sweep.scheduler.mutate: {key!r} cannot be perturbed by PBT; it must be a key of "
                              "sweep.space that every trial has, not a config group, and that a copied checkpoint "
                              f"can take: no width, filter count or input size ({fit})")
    if not keys:
        raise ConfigError("sweep.scheduler.kind=pbt: the space has no number to perturb; "
                          "search e.g. optimizer.lr, or name keys in sweep.scheduler.mutate")
    return [by_key[k] for k in keys]


def _mutation(dim: Dimension) -> Any:
    from ray import tune

    if dim.type == "categorical":
        return [encode_choice(c) for c in dim.choices]  # PBT shifts to a neighbouring choice
    low, high = dim.bounds
    if dim.type == "int":
        return tune.lograndint(int(low), int(high) + 1) if dim.log else tune.randint(int(low), int(high) + 1)
    return tune.loguniform(low, high) if dim.log else tune.uniform(low, high)


def clip_to_space(dims: list[Dimension], config: dict[str, Any]) -> dict[str, Any]:
    """PBT multiplies a value by 0.8 or 1.2, or resamples it, without bounds or steps: keep it inside its range
    (momentum < 1) and on its step (train.batch_size in steps of 32)."""
    for dim in dims:
        if dim.type != "categorical" and dim.key in config:
            low, high = dim.bounds
            value = min(max(config[dim.key], low), high)
            if dim.step:  # the range is a whole number of steps (sweeplab.sweep.space checks it)
                value = round(low + round((value - low) / dim.step) * dim.step, 12)
            config[dim.key] = int(round(value)) if dim.type == "int" else float(value)
    return config


def make_pbt(
    scheduler: DictConfig, dims: list[Dimension], metric: str, mode: str, epochs: int
) -> PopulationBasedTraining:
    from sweeplab.sweep.searched_pbt import SearchedPBT

    # PBT explores with the process's global `random` and NumPy generators. After an in-process train() (which seeds
    # both with train.seed) they would draw what Optuna's RandomSampler of the same seed drew: a resample would
    # replay the initial population's values (seen in the tests). Fresh entropy for them, as a new process has.
    random.seed()
    np.random.seed()
    mutated = mutated_dims(scheduler, dims)
    return SearchedPBT(
        time_attr="epoch", metric=metric, mode=mode,
        perturbation_interval=scheduler.perturbation_interval,
        hyperparam_mutations={d.key: _mutation(d) for d in mutated},
        quantile_fraction=scheduler.quantile_fraction,
        resample_probability=scheduler.resample_probability,
        custom_explore_fn=functools.partial(clip_to_space, mutated),
        last_epoch=epochs,
    )
