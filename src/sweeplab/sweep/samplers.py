"""Optuna samplers by name or by ``_target_`` (no Ray import: sweep files are checked before Ray loads).

``sweep.sampler`` is a registered name (``tpe``, ``gp``, ``qmc``, ...) or a mapping
``{_target_: optuna.samplers.QMCSampler, scramble: true}`` whose other keys are the sampler's arguments.
``sweep.sampler_seed`` reaches every sampler that takes a ``seed``.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from omegaconf import OmegaConf

from sweeplab.errors import ConfigError
from sweeplab.registry import Registry, UnknownNameError
from sweeplab.sweep.space import Dimension, grid


@dataclass(frozen=True)
class SamplerKind:
    """A registered sampler: its Optuna class and the arguments sweeplab gives it by default."""

    cls: type[optuna.samplers.BaseSampler]
    defaults: dict[str, Any] = field(default_factory=dict)


SAMPLERS: Registry[SamplerKind] = Registry("sampler", "sweep.sampler")
SAMPLERS.register("tpe", SamplerKind(optuna.samplers.TPESampler, {"multivariate": True, "constant_liar": True}))
SAMPLERS.register("random", SamplerKind(optuna.samplers.RandomSampler))
SAMPLERS.register("grid", SamplerKind(optuna.samplers.GridSampler))
SAMPLERS.register("cmaes", SamplerKind(optuna.samplers.CmaEsSampler, {"warn_independent_sampling": False}))
SAMPLERS.register("nsga2", SamplerKind(optuna.samplers.NSGAIISampler))
SAMPLERS.register("nsga3", SamplerKind(optuna.samplers.NSGAIIISampler))
SAMPLERS.register("qmc", SamplerKind(optuna.samplers.QMCSampler, {"warn_independent_sampling": False}))
SAMPLERS.register("gp", SamplerKind(optuna.samplers.GPSampler))
SAMPLERS.register("bruteforce", SamplerKind(optuna.samplers.BruteForceSampler))

SINGLE_OBJECTIVE = (optuna.samplers.CmaEsSampler,)  # samplers that cannot optimise several objectives


def _plain(spec: Any) -> Any:
    return OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec


def resolve_sampler(spec: Any) -> tuple[type[optuna.samplers.BaseSampler], dict[str, Any]]:
    """``sweep.sampler`` as (Optuna class, arguments): a name's defaults, or a ``_target_``'s class and keys."""
    spec = _plain(spec)
    if isinstance(spec, dict):
        args = dict(spec)
        target = args.pop("_target_", None)
        if not isinstance(target, str):
            raise ConfigError("sweep.sampler: a mapping needs _target_, e.g. {_target_: optuna.samplers.QMCSampler, "
                              f"scramble: true}}, or give a name: {', '.join(SAMPLERS.names())}")
        if target in SAMPLERS:
            kind = SAMPLERS.get(target)
            return kind.cls, {**kind.defaults, **args}
        return _locate(target), args
    try:
        kind = SAMPLERS.get(str(spec))
    except UnknownNameError as err:
        raise ConfigError(f"{err} Or give {{_target_: optuna.samplers.<Class>, <argument>: <value>}}.") from None
    return kind.cls, dict(kind.defaults)


def _locate(target: str) -> type[optuna.samplers.BaseSampler]:
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # Hydra wraps the import error of any part of the dotted path
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise ConfigError(f"sweep.sampler._target_={target!r} is not an Optuna sampler class; give a class such "
                          f"as optuna.samplers.QMCSampler, or a name: {', '.join(SAMPLERS.names())}")
    return cls


def is_grid(spec: Any) -> bool:
    """Whether the sampler runs every grid point (and so decides the number of configurations)."""
    return issubclass(resolve_sampler(spec)[0], optuna.samplers.GridSampler)


def enumerates(spec: Any) -> bool:
    """Whether the sampler tries each configuration of a finite space once (BruteForce), then draws at random."""
    return issubclass(resolve_sampler(spec)[0], optuna.samplers.BruteForceSampler)


def draws_by_trial_number(spec: Any) -> bool:
    """Whether the sampler's n-th trial follows from its seed and n (GridSampler's shuffled points, QMC's sequence):
    a resumed sweep gives it the seed it started with, where another sampler gets a new one (``searcher``)."""
    return issubclass(resolve_sampler(spec)[0], optuna.samplers.GridSampler | optuna.samplers.QMCSampler)


def sampler_label(spec: Any) -> str:
    """How a sweep's sampler is shown: its name, or its class with the arguments given."""
    spec = _plain(spec)
    if not isinstance(spec, dict):
        return str(spec)
    args = {k: v for k, v in spec.items() if k != "_target_"}
    return f"{str(spec.get('_target_')).rsplit('.', 1)[-1]}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def make_sampler(
    spec: Any, dims: list[Dimension], seed: int | None, multi_objective: bool
) -> optuna.samplers.BaseSampler:
    """The sampler ``sweep.sampler`` names, with its arguments and the seed where it takes one."""
    cls, args = resolve_sampler(spec)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(args) - set(accepted)) if not takes_any else []
    if unknown:
        names = ", ".join(p for p in accepted if p not in ("self", "search_space"))
        raise ConfigError(f"sweep.sampler: {cls.__name__} takes no argument {unknown[0]!r}; its arguments: {names}")
    if multi_objective and issubclass(cls, SINGLE_OBJECTIVE):
        raise ConfigError(f"sweep.sampler={sampler_label(spec)} optimises one objective; use nsga2 or tpe for several")
    chosen = [d.key for d in dims if d.type == "categorical" or d.when]
    if issubclass(cls, optuna.samplers.CmaEsSampler) and chosen and "independent_sampler" not in args:
        raise ConfigError(f"sweep.sampler={sampler_label(spec)} searches numbers only: it would draw {chosen[0]} "
                          "(a categorical or conditional key) at random, learning nothing of it; use tpe, which "
                          "models both, or give CmaEsSampler an independent_sampler for such keys yourself")
    if issubclass(cls, optuna.samplers.GridSampler):
        args.setdefault("search_space", grid(dims))
    if issubclass(cls, optuna.samplers.TPESampler) and args.get("multivariate") and any(d.when for d in dims):
        args.setdefault("group", True)  # a conditional space: TPE models each set of keys that occur together
    if "seed" in accepted and "seed" not in args:
        args["seed"] = seed
    try:
        with warnings.catch_warnings():  # TPE's group, GP and QMC are marked experimental: sweeplab chose them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sweep.sampler={sampler_label(spec)}: {cls.__name__} refuses its arguments: "
                          f"{str(err).splitlines()[0]}") from None


def check_samples(spec: Any, sampler: optuna.samplers.BaseSampler, dims: list[Dimension],
                  objectives: list[tuple[str, str]]) -> None:
    """One trial asked in memory of ``sampler`` (``spec``'s; a throwaway, as asking moves its random state) over the
    keys every trial has: a sampler that cannot sample the space (BruteForce over a float range without a step) is
    refused now, not in the first trial's ask after Ray has started."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    study = optuna.create_study(sampler=sampler, directions=study_directions(objectives))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.ask({d.key: d.distribution() for d in dims if not d.when})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sweep.sampler={sampler_label(spec)} cannot sample this space: "
                          f"{str(err).splitlines()[0]}") from None


def study_directions(objectives: list[tuple[str, str]]) -> list[Literal["maximize", "minimize"]]:
    """Optuna's direction of each (metric, mode) objective."""
    return ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
