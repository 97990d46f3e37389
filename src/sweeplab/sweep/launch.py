"""``launch_sweep``: a sweep file -> an Optuna study whose trials Ray Tune runs."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from omegaconf import DictConfig, OmegaConf

from sweeplab.config.compose import compose, conf_dir, project_root, resolve_sweep_file
from sweeplab.errors import ConfigError, UserError
from sweeplab.sweep.space import GROUPS, Dimension, grid_size, parse_space

if TYPE_CHECKING:
    from sweeplab.sweep.results import SweepOutcome

# Ray reads these at import or at worker start: set before ray is imported.
RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # our own live view replaces Tune's tables
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # an invalid trial reports a reason, not a metric
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # the live view prints each error's last line
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_DEDUP_LOGS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # we checkpoint every epoch on purpose
}


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

    @property
    def name(self) -> str:
        return self.cfg.sweep.name

    @property
    def num_trials(self) -> int:
        return self.num_configs * len(self.cfg.sweep.seeds)


def group_options() -> dict[str, list[str]]:
    return {g: sorted(p.stem for p in (conf_dir() / g).glob("*.yaml")) for g in GROUPS}


def optuna_storage_url(cfg: DictConfig) -> str:
    if cfg.cluster.optuna_storage:
        return cfg.cluster.optuna_storage
    return f"sqlite:///{Path(cfg.output_dir).resolve() / 'optuna.db'}"


def plan_sweep(ref: str, overrides: Sequence[str] = ()) -> SweepPlan:
    """Compose and check a sweep file; every mistake is a ConfigError naming key and file."""
    sweep_file = resolve_sweep_file(ref)
    cfg = compose(overrides, sweep_file)
    sc = cfg.sweep
    dims = parse_space(sc.space, cfg, sweep_file, group_options())
    _check_group_choices(dims, overrides, sweep_file)
    clash = [o.split("=")[0].lstrip("+~") for o in overrides if o.split("=")[0].lstrip("+~") in {d.key for d in dims}]
    if clash:
        raise ConfigError(f"{clash[0]} is searched by sweep.space in {sweep_file}; remove {clash[0]}=... from the command line")
    from sweeplab.sweep.searcher import SAMPLERS

    if sc.sampler not in SAMPLERS:
        raise ConfigError(f"unknown sweep.sampler {sc.sampler!r} in {sweep_file}. Known samplers: {', '.join(SAMPLERS)}")
    objectives = [(o.metric, o.mode) for o in sc.objectives] or [(sc.metric, sc.mode)]
    for metric, mode in objectives:
        if mode not in ("max", "min"):
            raise ConfigError(f"sweep mode for {metric!r} in {sweep_file} must be max or min, got {mode!r}")
    if sc.objectives and (objectives[0][0] != sc.metric or objectives[0][1] != sc.mode):
        raise ConfigError(f"sweep.objectives in {sweep_file}: the first objective must be sweep.metric/sweep.mode "
                          f"({sc.metric}, {sc.mode}); it drives early stopping")
    if sc.scheduler.kind not in ("asha", "median", "none"):
        raise ConfigError(f"unknown sweep.scheduler.kind {sc.scheduler.kind!r} in {sweep_file}. Known: asha, median, none")
    if sc.scheduler.kind == "asha" and sc.scheduler.reduction_factor <= 1:
        raise ConfigError(f"sweep.scheduler.reduction_factor in {sweep_file} must be > 1")
    if sc.resources.cpu <= 0 or sc.resources.gpu < 0:
        raise ConfigError(f"sweep.resources in {sweep_file}: cpu must be > 0 and gpu >= 0")
    if sc.resources.gpu > 1 and sc.resources.gpu != int(sc.resources.gpu):
        raise ConfigError(f"sweep.resources.gpu in {sweep_file}: a share above 1 must be a whole number of GPUs")
    if not sc.seeds:
        raise ConfigError(f"sweep.seeds in {sweep_file} is empty: give at least one seed, e.g. [0]")
    if sc.num_trials < 1 or sc.max_concurrent < 1:
        raise ConfigError(f"sweep.num_trials and sweep.max_concurrent in {sweep_file} must be >= 1")
    from sweeplab.sweep.searcher import make_sampler

    try:
        make_sampler(sc.sampler, dims, sc.sampler_seed, len(objectives) > 1)  # grid without steps etc.
    except ConfigError as err:
        raise ConfigError(f"{err} (in {sweep_file})") from None
    _check_run_settings(cfg, objectives, sweep_file)
    _probe_space(dims, overrides, sweep_file)
    num_configs = grid_size(dims) if sc.sampler == "grid" else sc.num_trials
    return SweepPlan(sweep_file, list(overrides), cfg, dims, objectives, num_configs,
                     Path(cfg.output_dir).resolve(), optuna_storage_url(cfg))


def _check_run_settings(cfg: DictConfig, objectives: list[tuple[str, str]], sweep_file: Path) -> None:
    """Metrics that trials report, distinct seeds, a scheduler that fits the epochs, data that exists."""
    from sweeplab.config.checks import check_values
    from sweeplab.data.datasets import missing_files
    from sweeplab.errors import DatasetNotFoundError
    from sweeplab.train import REPORTED_KEYS

    sc = cfg.sweep
    known = (*REPORTED_KEYS, "test/loss", "test/acc")
    for metric, _ in objectives:
        if metric not in known:
            raise ConfigError(f"sweep metric {metric!r} in {sweep_file} is not reported by trials; "
                              f"use one of {', '.join(known)}")
    if len(set(sc.seeds)) != len(sc.seeds):
        raise ConfigError(f"sweep.seeds in {sweep_file} repeats a seed ({list(sc.seeds)}); give distinct seeds")
    if sc.scheduler.kind in ("asha", "median") and not 1 <= sc.scheduler.grace_period <= cfg.train.epochs:
        raise ConfigError(f"sweep.scheduler.grace_period={sc.scheduler.grace_period} in {sweep_file} must lie "
                          f"between 1 and train.epochs={cfg.train.epochs}")
    try:
        check_values(cfg)
    except UserError as err:
        raise ConfigError(f"{err} (in {sweep_file} and the command line)") from None
    missing = missing_files(cfg.data)
    if missing and not cfg.data.download:
        raise DatasetNotFoundError(f"sweep {sc.name!r} needs dataset {cfg.data.name!r} under "
                                   f"data.root={Path(cfg.data.root).resolve()}: missing {', '.join(missing)}. "
                                   "Put torchvision's files there, or add data.download=true on a machine with internet.")


def _probe_space(dims: list[Dimension], overrides: Sequence[str], sweep_file: Path) -> None:
    """Compose the edges of every dimension (low, high, each choice) and check their values, so a
    mistyped choice or a range of the wrong type fails now rather than in every trial."""
    from sweeplab.config.checks import check_values
    from sweeplab.sweep.space import encode_choice, to_override

    groups = [f"{d.key}={d.choices[0]}" for d in dims if d.is_group]
    for dim in dims:
        if dim.type == "categorical":
            probes = [encode_choice(c) for c in dim.choices]
        else:
            probes = [int(v) if dim.type == "int" else float(v) for v in (dim.low, dim.high)]
        for value in probes:
            pinned = [g for g in groups if not g.startswith(f"{dim.key}=")] if not dim.is_group else []
            try:
                check_values(compose([*overrides, *pinned, to_override(dim.key, value)], sweep_file))
            except UserError as err:
                raise ConfigError(f"sweep.space.{dim.key} in {sweep_file}: the value {value!r} fails: {err}") from None


def _check_group_choices(dims: list[Dimension], overrides: Sequence[str], sweep_file: Path) -> None:
    """A key under a searched group (model.hidden_sizes with model: [mlp, lenet]) must exist in every choice."""
    for group in (d for d in dims if d.is_group):
        keys = [d.key for d in dims if d.key.startswith(f"{group.key}.")]
        for option in group.choices if keys else ():
            cfg = compose([*overrides, f"{group.key}={option}"], sweep_file)
            for key in keys:
                if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                    raise ConfigError(f"sweep.space.{key} in {sweep_file}: {group.key}={option} has no key {key!r}; "
                                      f"search {key} only with {group.key} choices that have it")


def start_ray(cfg: DictConfig) -> None:
    """Join the cluster named by cluster.address / RAY_ADDRESS, or start a loopback-only local Ray."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # binds every Ray service to 127.0.0.1
    import ray

    if ray.is_initialized():
        return
    env_vars = {k: os.environ[k] for k in RAY_ENV} | {"SWEEPLAB_HOME": str(project_root())}
    if "SWEEPLAB_FAULT_AFTER_EPOCH" in os.environ:  # the retry tests' fault injection
        env_vars["SWEEPLAB_FAULT_AFTER_EPOCH"] = os.environ["SWEEPLAB_FAULT_AFTER_EPOCH"]
    runtime_env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING")
    else:
        # "local": a fresh Ray of our own; without it ray.init joins any `ray start` cluster on this machine
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus, include_dashboard=cfg.cluster.dashboard,
                 runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING")


def _check_resources(resources, sweep_file: Path) -> None:
    """A trial that asks for more than the cluster has would wait forever: say so instead."""
    import ray

    total = ray.cluster_resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        asked, have = float(resources[key]), float(total.get(ray_key, 0))
        if asked > have:
            hint = "set sweep.resources.gpu=0 to run on CPUs" if key == "gpu" else f"ask for at most {have:g}"
            raise ConfigError(f"sweep.resources.{key}={asked:g} (in {sweep_file}) but the Ray cluster has "
                              f"{have:g} {ray_key}s in all: no trial could start; {hint}")


def sweep_record(plan: SweepPlan, sweep_id: str, ray_path: str) -> dict:
    """Kept in the Optuna study's attributes, so status/best/report work from the storage alone."""
    return {
        "sweep_id": sweep_id,
        "name": plan.name,
        "sweep_file": str(plan.sweep_file),
        "overrides": plan.overrides,
        "space": OmegaConf.to_container(plan.cfg.sweep.space),
        "sampler": plan.cfg.sweep.sampler,
        "scheduler": OmegaConf.to_container(plan.cfg.sweep.scheduler),
        "objectives": plan.objectives,
        "seeds": list(plan.cfg.sweep.seeds),
        "max_epochs": int(plan.cfg.train.epochs),
        "num_configs": plan.num_configs,
        "ray_path": ray_path,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def launch_sweep(ref: str, overrides: Sequence[str] = (), resume: bool = False, quiet: bool = False,
                 callbacks: Sequence = ()) -> "SweepOutcome":
    from sweeplab.sweep.results import find_sweep, load_outcome

    if resume:  # the trials must compose exactly as before: take the recorded file and overrides
        record = find_sweep(optuna_storage_url(compose(overrides)), ref)
        sweep_id = record["sweep_id"]
        plan = plan_sweep(record["sweep_file"], record["overrides"])
    else:
        plan = plan_sweep(ref, overrides)
        sweep_id = f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg, sc = plan.cfg, plan.cfg.sweep
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.tracking.enabled:  # an unreachable tracking server fails now, not inside Ray's event loop
        from sweeplab.tracking.store import client_for, tracking_uri

        client_for(tracking_uri(cfg))
    start_ray(cfg)
    _check_resources(sc.resources, plan.sweep_file)

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from sweeplab.sweep.searcher import OptunaSearcher
    from sweeplab.sweep.trainable import TrialSpec, run_trial
    from sweeplab.sweep.view import LiveView

    storage_path = cfg.cluster.storage_path or str(plan.output_dir / "ray")
    metric, mode = plan.objectives[0]
    epochs = int(cfg.train.epochs)
    spec = TrialSpec(
        sweep_file=str(plan.sweep_file),
        # relative paths would resolve inside each worker: pin them to where the sweep was started
        overrides=(*plan.overrides, f"data.root={Path(cfg.data.root).resolve()}", f"output_dir={plan.output_dir}"),
        space_keys=tuple(d.key for d in plan.dims),
        project_root=str(project_root()),
    )
    trainable = tune.with_resources(partial(run_trial, spec=spec), {"cpu": sc.resources.cpu, "gpu": sc.resources.gpu})
    view = LiveView(spec.space_keys, metric, mode, epochs, sc.max_failures, quiet)
    all_callbacks = [view, *callbacks]
    if cfg.tracking.enabled:
        from sweeplab.tracking.callback import MlflowSweepTracker

        tracker = MlflowSweepTracker(cfg, plan, sweep_id)
        tracker.spec = spec
        all_callbacks.append(tracker)

    ray_path = str(Path(storage_path) / sweep_id)
    if resume:
        if not tune.Tuner.can_restore(ray_path):
            raise ConfigError(f"sweep {sweep_id} has no Ray experiment at {ray_path} to resume")
        print(f"sweeplab sweep: resuming {sweep_id} from {ray_path}", flush=True)
        tuner = tune.Tuner.restore(ray_path, trainable, resume_unfinished=True, resume_errored=True)
        # callbacks are not part of the pickled state that matters: refresh them
        tuner._local_tuner._run_config.callbacks = all_callbacks
    else:
        searcher = OptunaSearcher(plan.dims, sc.sampler, sc.sampler_seed, plan.optuna_storage, sweep_id,
                                  plan.objectives, list(sc.seeds), plan.num_configs, epochs)
        for key, value in sweep_record(plan, sweep_id, ray_path).items():
            searcher.study.set_user_attr(key, value)
        if sc.scheduler.kind == "asha":
            scheduler = ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=epochs,
                                      grace_period=sc.scheduler.grace_period, reduction_factor=sc.scheduler.reduction_factor)
        elif sc.scheduler.kind == "median":
            scheduler = MedianStoppingRule(time_attr="epoch", metric=metric, mode=mode,
                                           grace_period=sc.scheduler.grace_period, min_samples_required=3)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=plan.num_trials,
                max_concurrent_trials=sc.max_concurrent,
                reuse_actors=True,  # no new Python process (torch import, data load) per trial
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=sweep_id,
                storage_path=storage_path,
                failure_config=tune.FailureConfig(max_failures=sc.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=all_callbacks,
                verbose=0,
            ),
        )
    print(f"sweeplab sweep: {sweep_id}: {plan.num_configs} configurations x {len(sc.seeds)} seed(s), "
          f"sampler {sc.sampler}, scheduler {sc.scheduler.kind}, {sc.max_concurrent} at a time, "
          f"{sc.resources.cpu:g} CPU + {sc.resources.gpu:g} GPU each", flush=True)
    tuner.fit()
    return load_outcome(plan.optuna_storage, sweep_id)


def _trial_name(trial) -> str:
    return f"trial_{int(trial.config.get('optuna_trial', 0)):03d}_seed{trial.config.get('seed', 0)}"
