"""``plan_sweep``: compose a sweep file and check everything that can be checked before Ray starts."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeplab.compose import compose, group_options, override_key, read_sweep_text, resolve_sweep_file
from sweeplab.config.schema import TRIAL_GROUPS, SweepConfig
from sweeplab.errors import ConfigError, DatasetNotFoundError, UserError
from sweeplab.metrics import FINAL_ONLY_KEYS, REPORTED_KEYS, better_mode
from sweeplab.redact import hide
from sweeplab.structured import typed
from sweeplab.sweep.space import Dimension, grid_size, parse_space


@dataclass
class SweepPlan:
    """Everything decided before Ray starts; building it validates the sweep file."""

    sweep_file: Path
    overrides: list[str]
    cfg: DictConfig
    dims: list[Dimension]
    objectives: list[tuple[str, str]]
    num_configs: int
    output_dir: Path
    optuna_storage: str
    sweep_text: str  # the file as it was planned: what trials compose, and what the study records

    def __post_init__(self) -> None:
        hide(self.optuna_storage)  # a resumed searcher holds the masked URL: reveal() maps it back in this process

    @property
    def name(self) -> str:
        return self.cfg.sweep.name

    @property
    def num_trials(self) -> int:
        return self.num_configs * len(self.cfg.sweep.seeds)


def optuna_storage_url(cfg: DictConfig) -> str:
    """The storage cluster.optuna_storage names, or output_dir's own (sweeplab.tracking.study_store)."""
    from sweeplab.tracking.study_store import configured_storage, default_storage

    if cfg.cluster.optuna_storage:
        return configured_storage(cfg.cluster.optuna_storage, "cluster.optuna_storage")
    return default_storage(cfg.output_dir)


def plan_sweep(ref: str, overrides: Sequence[str] = (), recorded: bool = False) -> SweepPlan:
    """Compose and check a sweep file; every mistake is a ConfigError naming key and file. ``recorded``: an earlier
    sweep's file and overrides (a resume, a sync), whose trials go on as they began: a GPU they were not granted is
    theirs still (a sweep begun before that was checked could not be resumed, its recorded overrides fixed)."""
    sweep_file = resolve_sweep_file(ref)
    sweep_text = read_sweep_text(sweep_file)  # composed and recorded as read here, whatever the file becomes
    cfg = compose(overrides, sweep_file, sweep_text)
    sc = cfg.sweep
    dims = parse_space(sc.space, cfg, sweep_file, {g: group_options(g) for g in TRIAL_GROUPS})
    _check_group_choices(dims, overrides, sweep_file)
    clash = [override_key(o) for o in overrides if override_key(o) in {d.key for d in dims}]
    if clash:
        raise ConfigError(
            f"{clash[0]} is searched by sweep.space in {sweep_file}; remove {clash[0]}=... from the command line"
        )
    # plain strings: Ray asserts that metric and mode have the same type
    objectives = [(o.metric, str(o.mode)) for o in sc.objectives] or [(sc.metric, str(sc.mode))]
    if sc.objectives and (objectives[0][0] != sc.metric or objectives[0][1] != sc.mode):
        raise ConfigError(f"sweep.objectives in {sweep_file}: the first objective must be sweep.metric/sweep.mode "
                          f"({sc.metric}, {sc.mode}); it drives early stopping")
    if sc.scheduler.kind in ("asha", "hyperband") and sc.scheduler.reduction_factor <= 1:
        raise ConfigError(f"sweep.scheduler.reduction_factor in {sweep_file} must be > 1 for {sc.scheduler.kind}, "
                          f"got {sc.scheduler.reduction_factor} (each rung keeps 1 / reduction_factor of its trials; "
                          "sweeplab's default is 2)")
    if not sc.seeds:
        raise ConfigError(f"sweep.seeds in {sweep_file} is empty: give at least one seed, e.g. [0]")
    try:
        typed(sc, SweepConfig, "sweep").check()
    except ConfigError as err:
        raise ConfigError(f"{err} (in {sweep_file})") from None
    from sweeplab.sweep.samplers import check_samples, enumerates, is_grid, make_sampler

    try:
        sampler = make_sampler(sc.sampler, dims, sc.sampler_seed, len(objectives) > 1)  # grid without steps etc.
        check_samples(sc.sampler, sampler, dims, objectives)  # BruteForce without steps etc.
        if is_grid(sc.sampler) and any(d.when for d in dims):
            raise ConfigError("sweep.sampler=grid cannot search a space with conditional keys ('when'); "
                              "use tpe or random, or one sweep per choice")
        if sc.scheduler.kind == "pbt":
            from sweeplab.sweep.pbt import mutated_dims

            mutated_dims(sc.scheduler, dims)
    except ConfigError as err:
        raise ConfigError(f"{err} (in {sweep_file})") from None
    _check_run_settings(cfg, objectives, sweep_file)
    if not recorded:
        _check_gpu_granted(cfg, sweep_file)
    _probe_space(dims, overrides, sweep_file, cfg)
    if sc.fuse > 1:  # packs import Ray and torch: planning an ordinary sweep does not
        from sweeplab.sweep.packs import check_fusable_plan

        check_fusable_plan(cfg, dims, list(overrides), sweep_file)
    num_configs = grid_size(dims) if is_grid(sc.sampler) else sc.num_trials
    if enumerates(sc.sampler) and not any(d.when for d in dims):  # each configuration once, not again at random
        num_configs = min(num_configs, grid_size(dims))
    return SweepPlan(sweep_file, list(overrides), cfg, dims, objectives, num_configs,
                     Path(cfg.output_dir).resolve(), optuna_storage_url(cfg), sweep_text)


def _check_run_settings(cfg: DictConfig, objectives: list[tuple[str, str]], sweep_file: Path) -> None:
    """Metrics that trials report, distinct seeds, a scheduler that fits the epochs, data that exists."""
    from sweeplab.checks import validate

    sc = cfg.sweep
    for index, (metric, mode) in enumerate(objectives):
        if metric in FINAL_ONLY_KEYS:
            raise ConfigError(f"sweep metric {metric!r} in {sweep_file}: the test split is scored once after "
                              "training and never reported per epoch, so it cannot steer a sweep; use val/"
                              f"{metric.split('/')[1]} (one of {', '.join(REPORTED_KEYS)})")
        if metric not in REPORTED_KEYS:
            raise ConfigError(f"sweep metric {metric!r} in {sweep_file} is not reported by trials; "
                              f"use one of {', '.join(REPORTED_KEYS)}")
        better = better_mode(metric)
        if better and mode != better:
            fix = f"sweep.objectives[{index}].mode={better}" if sc.objectives else f"sweep.mode={better}"
            fix += f" and sweep.mode={better}" if sc.objectives and index == 0 else ""
            raise ConfigError(f"sweep metric {metric!r} in {sweep_file} with mode {mode!r} would seek the worst "
                              f"{metric} ({'lower' if better == 'min' else 'higher'} is better): set {fix}")
    if len(set(sc.seeds)) != len(sc.seeds):
        raise ConfigError(f"sweep.seeds in {sweep_file} repeats a seed ({list(sc.seeds)}); give distinct seeds")
    if sc.scheduler.kind in ("asha", "median") and not 1 <= sc.scheduler.grace_period <= cfg.train.epochs:
        raise ConfigError(f"sweep.scheduler.grace_period={sc.scheduler.grace_period} in {sweep_file} must lie "
                          f"between 1 and train.epochs={cfg.train.epochs}")
    try:
        validate(cfg, shapes=False)
    except UserError as err:
        raise ConfigError(f"{err} (in {sweep_file} and the command line)") from None
    missing = _missing_data(cfg)
    if missing:
        raise DatasetNotFoundError(f"sweep {sc.name!r} needs {missing}")


@dataclass(frozen=True)
class CudaAsked:
    """A cuda device some trial of a sweep is told to train on, and what tells it: train.device itself, or a
    choice of the space's train.device, and how the sweep would do without it."""

    device: str
    searched: bool

    @property
    def on_cpus(self) -> str:
        return "cuda left out of sweep.space's train.device choices" if self.searched else "train.device=auto (or cpu)"


def cuda_asked(cfg: DictConfig) -> CudaAsked | None:
    """The cuda device some trial of the sweep may be told to train on, or None."""
    spec = cfg.sweep.space.get("train.device") if cfg.sweep.space else None
    return cuda_among(spec.get("choices") if isinstance(spec, DictConfig) else None, cfg.train.device)


def cuda_among(choices: Sequence[Any] | None, device: Any) -> CudaAsked | None:
    """The cuda device among a space's choices of train.device, else train.device itself (None: neither is cuda)."""
    searched = [str(choice) for choice in choices or []]
    cuda = next((d for d in searched or [str(device)] if d.startswith("cuda")), None)
    return None if cuda is None else CudaAsked(cuda, bool(searched))


def _check_gpu_granted(cfg: DictConfig, sweep_file: Path) -> None:
    """A trial told to train on CUDA (train.device, as given or as the space may draw it) needs a GPU from Ray:
    Ray 2.60 hides no GPU from a trial granted none, which would train on GPUs Ray does not count, placed by its
    CPUs alone (``train.granted_device``)."""
    if cfg.sweep.resources.gpu or (cuda := cuda_asked(cfg)) is None:
        return
    raise ConfigError(f"train.device={cuda.device}{' (a choice of sweep.space)' if cuda.searched else ''} but "
                      "sweep.resources.gpu=0: Ray would grant the trials no GPU and place them by their CPUs alone, "
                      "all on GPUs it does not count; set sweep.resources.gpu (1: a GPU per trial, 0.25: four trials "
                      f"sharing one), or train on CPUs with {cuda.on_cpus}, where Ray grants no GPU (in "
                      f"{sweep_file} and the command line)")


def _missing_data(cfg: DictConfig) -> str:
    """What of ``cfg``'s dataset is not on disk and how to get it, or "" when nothing is missing."""
    from sweeplab.data.datasets import missing_files

    missing = missing_files(cfg.data)
    if not missing or cfg.data.download:
        return ""
    return (f"dataset {cfg.data.name!r} under data.root={Path(cfg.data.root).resolve()}: missing {', '.join(missing)}. "
            "Put torchvision's files there, or add data.download=true on a machine with internet.")


def _probe_space(dims: list[Dimension], overrides: Sequence[str], sweep_file: Path, cfg: DictConfig) -> None:
    """Set the edges of every dimension (low, high, each choice) in the composed config and check
    them, so a mistyped choice or a range of the wrong type fails now rather than in every trial.
    Group choices are composed (a few Hydra calls); values are set on a copy (milliseconds)."""
    import copy

    from omegaconf.errors import OmegaConfBaseException

    from sweeplab.checks import validate

    def fails(dim: Dimension, value: Any, err: Exception | str) -> ConfigError:
        return ConfigError(f"sweep.space.{dim.key} in {sweep_file}: the value {value!r} fails: {err}")

    groups = [d for d in dims if d.is_group]
    for dim in groups:
        for choice in dim.choices:
            try:
                composed = compose([*overrides, f"{dim.key}={choice}"], sweep_file)
                validate(composed, shapes=False)
            except UserError as err:
                raise fails(dim, choice, err) from None
            missing = _missing_data(composed)
            if missing:  # as for the sweep's own data: found now, not by each trial that picks it
                raise DatasetNotFoundError(f"sweep.space.{dim.key} in {sweep_file}: the choice {choice!r} needs "
                                           f"{missing}")
    # each group at its first choice that a key applies to; without groups, the plan's own config
    bases: dict[tuple[str, ...], DictConfig] = {} if groups else {(): cfg}
    for dim in (d for d in dims if not d.is_group):
        # when: {model: lenet} probes lenet
        picks = tuple(f"{g.key}={next(c for c in g.choices if dim.allows(g.key, c))}" for g in groups)
        if picks not in bases:
            bases[picks] = compose([*overrides, *picks], sweep_file)
        base = bases[picks]
        if dim.type == "categorical":
            probes = [OmegaConf.to_container(c) if OmegaConf.is_config(c) else c for c in dim.choices]
        else:
            probes = [int(v) if dim.type == "int" else float(v) for v in dim.bounds]
        for value in probes:
            probe = copy.deepcopy(base)
            try:
                OmegaConf.update(probe, dim.key, value, merge=False)
                validate(probe, shapes=False)
            except OmegaConfBaseException as err:
                raise fails(dim, value, str(err).splitlines()[0]) from None
            except UserError as err:
                raise fails(dim, value, err) from None


def _check_group_choices(dims: list[Dimension], overrides: Sequence[str], sweep_file: Path) -> None:
    """A key under a searched group (model.hidden_sizes with model: [mlp, lenet]) must exist in every choice
    it applies to: all of them, or those its ``when`` names."""
    for group in (d for d in dims if d.is_group):
        under = [d for d in dims if d.key.startswith(f"{group.key}.")]
        composed = {option: compose([*overrides, f"{group.key}={option}"], sweep_file)
                    for option in (group.choices if under else ())}
        for dim in under:
            have = [o for o, cfg in composed.items()
                    if OmegaConf.select(cfg, dim.key, default="__missing__") != "__missing__"]
            missing = [o for o in composed if o not in have and dim.allows(group.key, o)]
            if missing:
                hint = f"e.g. when: {{{group.key}: [{', '.join(map(str, have))}]}}" if have else "no choice has it"
                raise ConfigError(f"sweep.space.{dim.key} in {sweep_file}: {group.key}={missing[0]} has no key "
                                  f"{dim.key!r}; search {dim.key} only with {group.key} choices that have it, {hint}")
