"""``launch_sweep``: a planned sweep -> an Optuna study whose trials Ray Tune runs."""
from __future__ import annotations

import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from omegaconf import DictConfig, OmegaConf

from sweeplab.config.compose import compose, project_root
from sweeplab.errors import ConfigError
from sweeplab.sweep.plan import SweepPlan, optuna_storage_url, plan_sweep

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
        sweep_text=plan.sweep_file.read_text(),
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
        # The pickled callbacks carry the interrupted launch's state; fresh ones find the sweep's
        # MLflow runs again. Tuner.restore takes no run_config, hence the private attribute.
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
