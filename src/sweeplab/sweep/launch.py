"""``launch_sweep``: a planned sweep -> an Optuna study whose trials Ray Tune runs."""
from __future__ import annotations

import logging
import math
import os
import shlex
import socket
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from sweeplab.compose import compose, project_root
from sweeplab.errors import ConfigError
from sweeplab.sweep.plan import SweepPlan, optuna_storage_url, plan_sweep
from sweeplab.sweep.space import encode_choice
from sweeplab.tracking.store import redact

if TYPE_CHECKING:
    from ray.tune import Callback
    from ray.tune.schedulers import TrialScheduler

    from sweeplab.sweep.results import SweepOutcome
    from sweeplab.sweep.trainable import TrialSpec

# Ray reads these at import or at worker start: set before ray is imported.
RAY_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # our own live view replaces Tune's tables
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # an invalid trial reports a reason, not a metric
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # the live view prints each error's last line
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_DEDUP_LOGS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # forced snapshots are few and expected
}


def start_ray(cfg: DictConfig) -> bool:
    """Join the cluster named by cluster.address / RAY_ADDRESS, or start a loopback-only local Ray.
    True when it started a local Ray of its own (the sweep shuts it down at the end)."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # binds every Ray service to 127.0.0.1
    import ray

    if ray.is_initialized():
        return False
    env_vars = {k: os.environ[k] for k in RAY_ENV} | {"SWEEPLAB_HOME": str(project_root())}
    if "SWEEPLAB_FAULT_AFTER_EPOCH" in os.environ:  # the retry tests' fault injection
        env_vars["SWEEPLAB_FAULT_AFTER_EPOCH"] = os.environ["SWEEPLAB_FAULT_AFTER_EPOCH"]
    runtime_env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING)
        return False  # a cluster outlives the sweep; the connection stays for the caller
    else:
        # "local": a fresh Ray of our own; without it ray.init joins any `ray start` cluster on this machine
        ray.init(address="local", num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus,
                 include_dashboard=cfg.cluster.dashboard, runtime_env=runtime_env, log_to_driver=False,
                 logging_level=logging.WARNING)
    return True


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


def trial_spec(plan: SweepPlan) -> TrialSpec:
    from sweeplab.sweep.trainable import TrialSpec

    cfg = plan.cfg
    return TrialSpec(
        sweep_file=str(plan.sweep_file),
        sweep_text=plan.sweep_file.read_text(),
        # relative paths would resolve inside each worker: pin them to where the sweep was started
        overrides=(*plan.overrides, f"data.root={Path(cfg.data.root).resolve()}", f"output_dir={plan.output_dir}"),
        space_keys=tuple(d.key for d in plan.dims),
        group_keys=tuple(d.key for d in plan.dims if d.is_group),
        project_root=str(project_root()),
        checkpoint_epochs=stopping_epochs(cfg.sweep.scheduler, int(cfg.train.epochs)),
        checkpoint_interval_s=float(cfg.sweep.checkpoint_interval_s),
        decoded={d.key: {encode_choice(c): _plain(c) for c in d.choices} for d in plan.dims
                 if d.type == "categorical" and not d.is_group and any(encode_choice(c) != c for c in d.choices)},
    )


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def make_scheduler(scheduler: DictConfig, metric: str, mode: str, epochs: int) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if scheduler.kind == "asha":
        return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=epochs,
                             grace_period=scheduler.grace_period, reduction_factor=scheduler.reduction_factor)
    if scheduler.kind == "median":
        return MedianStoppingRule(time_attr="epoch", metric=metric, mode=mode,
                                  grace_period=scheduler.grace_period, min_samples_required=3)
    return FIFOScheduler()


def stopping_epochs(scheduler: DictConfig, epochs: int) -> frozenset[int]:
    """The epochs after which ``make_scheduler``'s scheduler may stop a trial: ASHA's rungs
    (grace_period * reduction_factor**k, as Ray computes them), every epoch from the grace period
    for the median rule, none without a scheduler."""
    if scheduler.kind == "asha":
        rungs = int(math.log(epochs / scheduler.grace_period) / math.log(scheduler.reduction_factor) + 1)
        return frozenset(math.ceil(scheduler.grace_period * scheduler.reduction_factor**k) for k in range(rungs))
    if scheduler.kind == "median":
        return frozenset(range(scheduler.grace_period, epochs + 1))
    return frozenset()


def launch_sweep(ref: str, overrides: Sequence[str] = (), resume: bool = False, quiet: bool = False) -> SweepOutcome:
    """Plan (every check before Ray starts), start Ray, run the trials, read the outcome back from Optuna."""
    from sweeplab.sweep.packs import start_packs
    from sweeplab.sweep.results import load_outcome

    plan, sweep_id = _plan(ref, overrides, resume)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    started_ray = _start_ray_and_store(plan.cfg)
    _check_resources(plan.cfg.sweep.resources, plan.sweep_file)
    spec = start_packs(plan, sweep_id, trial_spec(plan))
    storage_path = plan.cfg.cluster.storage_path or str(plan.output_dir / "ray")
    sync = shlex.join(["sweeplab", "sync", sweep_id, *map(redact, overrides)])  # a password is retyped, not printed
    callbacks = _callbacks(plan, sweep_id, spec, quiet, sync)
    if resume:
        tuner = _restored_tuner(str(Path(storage_path) / sweep_id), spec, plan, callbacks)
    else:
        tuner = _new_tuner(plan, sweep_id, spec, storage_path, callbacks)
    sc = plan.cfg.sweep
    print(f"sweeplab sweep: {sweep_id}: {plan.num_configs} configurations x {len(sc.seeds)} seed(s), "
          f"sampler {sc.sampler}, scheduler {sc.scheduler.kind}, {sc.max_concurrent} at a time, "
          f"{sc.resources.cpu:g} CPU + {sc.resources.gpu:g} GPU each", flush=True)
    try:
        tuner.fit()
        outcome = load_outcome(plan.optuna_storage, sweep_id)
        if started_ray:  # a Ray of our own goes down while the tracker draws the report
            import ray

            ray.shutdown()
    finally:
        for callback in callbacks:
            if hasattr(callback, "finish"):
                callback.finish()
    return outcome


def _start_ray_and_store(cfg: DictConfig) -> bool:
    """Ray starts while MLflow is imported and its store opened on a thread (each takes seconds);
    a tracking server that does not answer is named before either starts."""
    if not cfg.tracking.enabled:
        return start_ray(cfg)
    from concurrent.futures import ThreadPoolExecutor

    from sweeplab.tracking.store import check_reachable, client_for, tracking_uri

    uri = tracking_uri(cfg)
    check_reachable(uri)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-store") as pool:
        store = pool.submit(client_for, uri)
        started = start_ray(cfg)
        store.result()  # a store that cannot be opened: its UserError, before any trial starts
    return started


def _plan(ref: str, overrides: Sequence[str], resume: bool) -> tuple[SweepPlan, str]:
    """A new sweep's plan and id, or an interrupted one's (recorded file and overrides: trials compose as before)."""
    if resume:
        return recorded_plan(ref, overrides)
    plan = plan_sweep(ref, overrides)
    return plan, f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def recorded_plan(ref: str, overrides: Sequence[str]) -> tuple[SweepPlan, str]:
    """An earlier sweep's plan and id, from the file and overrides its study recorded (``overrides`` only locate
    the Optuna storage)."""
    from sweeplab.sweep.results import find_sweep

    record = find_sweep(optuna_storage_url(compose(overrides)), ref)
    return plan_sweep(record["sweep_file"], record["overrides"]), record["sweep_id"]


def _callbacks(plan: SweepPlan, sweep_id: str, spec: TrialSpec, quiet: bool, sync_command: str) -> list[Callback]:
    from sweeplab.sweep.view import LiveView

    metric, mode = plan.objectives[0]
    sc = plan.cfg.sweep
    view = LiveView(spec.space_keys, metric, mode, int(plan.cfg.train.epochs), sc.max_failures, quiet)
    callbacks: list[Callback] = [view]
    if plan.cfg.tracking.enabled:
        from sweeplab.sweep.tracker import MlflowSweepTracker

        callbacks.append(MlflowSweepTracker(plan.cfg, plan, sweep_id, spec, sync_command))
    if spec.pack_manager is not None:
        from sweeplab.sweep.packs import PackCallback

        callbacks.append(PackCallback(spec.pack_manager))
    return callbacks


def _trainable(spec: TrialSpec, resources: DictConfig):
    from ray import tune

    from sweeplab.sweep.packs import member_resources
    from sweeplab.sweep.trainable import run_trial

    return tune.with_resources(partial(run_trial, spec=spec), member_resources(spec, resources))


def _new_tuner(plan: SweepPlan, sweep_id: str, spec: TrialSpec, storage_path: str, callbacks: list):
    from ray import tune

    from sweeplab.sweep.searcher import OptunaSearcher

    sc, epochs = plan.cfg.sweep, int(plan.cfg.train.epochs)
    metric, mode = plan.objectives[0]
    searcher = OptunaSearcher(plan.dims, sc.sampler, sc.sampler_seed, plan.optuna_storage, sweep_id,
                              plan.objectives, list(sc.seeds), plan.num_configs, epochs)
    for key, value in sweep_record(plan, sweep_id, str(Path(storage_path) / sweep_id)).items():
        searcher.study.set_user_attr(key, value)
    return tune.Tuner(
        _trainable(spec, sc.resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(sc.scheduler, metric, mode, epochs),
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
            # Ray snapshots the whole experiment (O(trials)) after every num_to_keep-th checkpoint of a trial:
            # with 1 that was after every trial's last epoch, O(trials^2) in all. A trial checkpoints at its
            # last epoch, its scheduler rungs and every checkpoint_interval_s, so with 3 most trials force none.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def _restored_tuner(ray_path: str, spec: TrialSpec, plan: SweepPlan, callbacks: list):
    from ray import tune

    if not tune.Tuner.can_restore(ray_path):
        raise ConfigError(f"sweep at {ray_path} has no Ray experiment to resume")
    print(f"sweeplab sweep: resuming from {ray_path}", flush=True)
    tuner = tune.Tuner.restore(ray_path, _trainable(spec, plan.cfg.sweep.resources),
                               resume_unfinished=True, resume_errored=True)
    _replace_callbacks(tuner, callbacks)
    return tuner


def _replace_callbacks(tuner, callbacks: list) -> None:
    """The pickled callbacks carry the interrupted launch's state; fresh ones find the sweep's MLflow
    runs again. Tuner.restore takes no run_config (Ray 2.60), hence Ray's private attribute."""
    import ray

    major, minor = (int(p) for p in ray.__version__.split(".")[:2])
    if (major, minor) < (2, 40):
        raise RuntimeError(f"sweeplab resumes sweeps with Ray >= 2.40, found {ray.__version__}")
    tuner._local_tuner._run_config.callbacks = callbacks


def _trial_name(trial) -> str:
    return f"trial_{int(trial.config.get('optuna_trial', 0)):03d}_seed{trial.config.get('seed', 0)}"
