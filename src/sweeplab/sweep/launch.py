"""``launch_sweep``: a planned sweep -> an Optuna study whose trials Ray Tune runs."""
from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeplab.compose import compose, override_key, project_root, read_sweep_text
from sweeplab.errors import ConfigError, UserError
from sweeplab.program import command_line
from sweeplab.redact import MASK, redact
from sweeplab.sweep import tune_usage, workers
from sweeplab.sweep.dashboard import HOST as DASHBOARD_HOST
from sweeplab.sweep.dashboard import check_dashboard, dashboard_line
from sweeplab.sweep.plan import SweepPlan, cuda_asked, optuna_storage_url, plan_sweep
from sweeplab.sweep.samplers import sampler_label
from sweeplab.sweep.space import Dimension, encode_choice, to_override
from sweeplab.sweep.stop import watch_sigterm
from sweeplab.sweep.storage import absolute_location, check_storage, endpoint_env, experiment_path, ray_root

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
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # sweeplab picks Tune's loggers (_callbacks: TensorBoard's is opt-in)
}


# Tune's lines that sweeplab says itself: "Trials did not complete" (the live view and the summary name each such
# trial, and why it ended), the resume hint after an interruption (sweeplab prints its own command), and, after an
# interruption or on --resume, the warning that trials which had reported nothing yet have no result files (sweeplab
# reads every result from Optuna)
# Tune's own lines that sweeplab says its own way (a line of its own, or None: the summary says it)
TUNES_OWN_LINES: dict[str, dict[str, str | None]] = {
    "ray.tune.tune": {
        "Trials did not complete": None, "Experiment has been interrupted": None,
        # as a sweep's Ctrl+C reaches Tune: its "Press CTRL+C ... to skip" would lose the state --resume continues from
        "Stop signal received": "sweeplab sweep: stopping: saving the sweep's state for --resume (a second Ctrl+C "
                                "skips that save: --resume then continues from the state saved before it)"},
    "ray.tune.analysis.experiment_analysis": {"Failed to fetch metrics for": None},
}


def _not_tunes_own(record: logging.LogRecord) -> bool:
    for prefix, ours in TUNES_OWN_LINES.get(record.name, {}).items():
        if str(record.msg).startswith(prefix):
            if ours is not None:
                print(ours, file=sys.stderr, flush=True)
            return False
    return True


def cluster_address(cfg: DictConfig) -> tuple[str, str] | None:
    """The Ray cluster a sweep joins and the setting that names it (cluster.address, else RAY_ADDRESS); None for a
    loopback-only Ray of the sweep's own, which ``local`` (Ray's word for a new local Ray) asks for too."""
    for address, source in ((cfg.cluster.address, "cluster.address"), (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if address:
            return None if str(address) == "local" else (str(address), source)
    return None


def ray_environment(cfg: DictConfig) -> str | None:
    """Set what Ray reads from the environment, some of it as it is imported; the cluster's address, or None for
    a local Ray."""
    found = cluster_address(cfg)
    address = found[0] if found else None
    if address:  # a head that stops answering mid-connect: ray.init gives up after this many ~1 s tries
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "10")
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    for name in TUNES_OWN_LINES:
        if _not_tunes_own not in (log := logging.getLogger(name)).filters:
            log.addFilter(_not_tunes_own)
    if not address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # binds every Ray service to 127.0.0.1
        # Ray turns token authentication on for a local Ray (RAY_AUTH_MODE unset) and warns that it did, at the
        # start of every sweep: the choice is Ray's default and the right one here, so the line is not shown
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    return address


def start_ray(cfg: DictConfig, trials: int | None = None) -> bool:
    """Join the cluster named by cluster.address / RAY_ADDRESS, or start a loopback-only local Ray, its workers
    started for the sweep's ``trials`` (when known).
    True when it started a local Ray of its own (the sweep shuts it down at the end)."""
    address = ray_environment(cfg)
    import ray

    if not address:  # Ray read the variable as it was imported (its processes read it again as they start)
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False

    if ray.is_initialized():
        return False
    env_vars = {k: os.environ[k] for k in RAY_ENV} | {"SWEEPLAB_HOME": str(project_root())} | endpoint_env()
    if "SWEEPLAB_FAULT_AFTER_EPOCH" in os.environ:  # the retry tests' fault injection
        env_vars["SWEEPLAB_FAULT_AFTER_EPOCH"] = os.environ["SWEEPLAB_FAULT_AFTER_EPOCH"]
    if address:  # a cluster's workers get the environment through the job's runtime_env
        context = _join_cluster(address, env_vars)
        workers.forget_local_ray()
    else:
        # A local Ray's workers inherit this process's environment, so no job runtime_env, and they import
        # what trials import before they register (sweeplab.sweep.workers)
        os.environ.update(env_vars)
        system_config = workers.local_ray_config(cfg, trials)
        # "local": a fresh Ray of our own; without it ray.init joins any `ray start` cluster on this machine
        context = ray.init(address="local", num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus,
                           include_dashboard=cfg.cluster.dashboard, dashboard_host=DASHBOARD_HOST,
                           dashboard_port=cfg.cluster.dashboard_port, log_to_driver=False,
                           logging_level=logging.WARNING, _system_config=system_config)
        workers.started_local_ray()
    if cfg.cluster.dashboard and (line := dashboard_line(context)):
        print(f"sweeplab sweep: {line}", flush=True)
    return not address  # a cluster outlives the sweep; the connection stays for the caller


def _join_cluster(address: str, env_vars: dict[str, str]):
    """``ray.init`` on a cluster's address; a head that refuses this driver's token is a ConfigError saying which
    settings carry the token."""
    import ray
    from ray.exceptions import AuthenticationError

    try:
        return ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False,
                        logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, AuthenticationError) as err:
        # ray.init wraps the head's refusal in a RuntimeError whose text holds the AuthenticationError's traceback
        cause: BaseException | None = err
        while cause is not None and not (isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        mode = os.environ.get("RAY_AUTH_MODE") or "unset"
        raise ConfigError(
            f"the Ray head at {address} asks for an authentication token and refused this driver's (RAY_AUTH_MODE "
            f"is {mode}): set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH "
            "to a file holding it; docker-compose.yml's stack takes it from RAY_AUTH_TOKEN)") from None


def _check_cluster_address(cfg: DictConfig) -> None:
    """A cluster.address / RAY_ADDRESS where no Ray head answers: say so now, not after minutes of ray.init retries."""
    from sweeplab.sweep.address import check_ray_address

    if (found := cluster_address(cfg)) is not None:
        check_ray_address(*found)


def check_shared_storage(plan: SweepPlan, root: str, nodes: list[dict[str, Any]], here: str) -> None:
    """A cluster with nodes on other machines keeps the trials' checkpoints where every node reaches them: without
    cluster.storage_path they would go to this machine's output_dir, and a trial on another machine fail at its first
    checkpoint, after its epochs (Ray: "Unable to set up cluster storage"), retry after retry. ``nodes``: Ray's
    ``ray.nodes()``; ``here``: this machine's address in the cluster."""
    elsewhere = {node["NodeManagerAddress"] for node in nodes if node["Alive"]} - {here}
    if elsewhere and not plan.cfg.cluster.storage_path:
        raise ConfigError(f"the Ray cluster has nodes on other machines ({', '.join(sorted(elsewhere))}), and the "
                          f"trials' checkpoints would go to {root} on this one, which they do not reach: set "
                          "cluster.storage_path to a folder every node mounts (docker-compose.yml's /shared/ray) or "
                          "to s3://bucket/prefix")


def _check_resources(cfg: DictConfig, sweep_file: Path, total: dict[str, float], where: str) -> None:
    """A trial that asks for more than ``total`` (what a Ray cluster has, said by ``where``) would wait forever:
    say so instead; and say that GPUs the trials do not ask for stay idle."""
    resources = cfg.sweep.resources
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        asked, have = float(resources[key]), float(total.get(ray_key, 0))
        if asked > have:
            hint = f"ask for at most {have:g}"
            if key == "gpu":  # a cuda train.device needs a GPU granted (sweeplab.sweep.plan): it goes too
                cuda = cuda_asked(cfg)
                hint = f"set sweep.resources.gpu=0{f' with {cuda.on_cpus}' if cuda else ''} to run on CPUs"
            raise ConfigError(f"sweep.resources.{key}={asked:g} (in {sweep_file}) but {where} {have:g} {ray_key}s "
                              f"in all: no trial could start; {hint}")
    # trials granted no GPU train on CPUs (train.granted_device): a GPU left idle is a choice the user sees
    gpus = float(total.get("GPU", 0))
    if gpus and not cfg.sweep.resources.gpu and str(cfg.train.device) == "auto":
        print(f"sweeplab sweep: {where} {gpus:g} GPU{'s' if gpus != 1 else ''} and the trials ask for none "
              "(sweep.resources.gpu=0): they train on CPUs; sweep.resources.gpu=1 gives each trial a GPU, 0.25 "
              "puts four on one", flush=True)


def _local_ray_resources(cfg: DictConfig) -> dict[str, float]:
    """The CPUs and GPUs a local Ray of these settings will have, resolved before it starts as ``ray.init``
    resolves them (cluster.num_cpus / num_gpus, else what this machine has and CUDA_VISIBLE_DEVICES shows)."""
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    spec = ResourceAndLabelSpec(num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus)
    spec.resolve(is_head=True, node_ip_address="127.0.0.1")
    return {"CPU": float(spec.num_cpus or 0), "GPU": float(spec.num_gpus or 0)}


def sweep_record(plan: SweepPlan, sweep_id: str, ray_path: str) -> dict:
    """Kept in the Optuna study's attributes, so status/best/report work from the storage alone. They are written
    one by one in this order, ``sweep_id`` last: readers take a study for a sweep by it, so a driver stopped while
    it writes them leaves no half record for them."""
    return {
        "name": plan.name,
        "sweep_file": str(plan.sweep_file),
        "sweep_text": plan.sweep_text,  # what `sweeplab best` reruns and --resume checks, whatever the file is now
        "overrides": [redact(o) for o in plan.overrides],  # resume takes secrets from its own command line
        "space": OmegaConf.to_container(plan.cfg.sweep.space),
        "sampler": _plain(plan.cfg.sweep.sampler),
        "scheduler": OmegaConf.to_container(plan.cfg.sweep.scheduler),
        "objectives": plan.objectives,
        "seeds": list(plan.cfg.sweep.seeds),
        "max_epochs": int(plan.cfg.train.epochs),
        "num_configs": plan.num_configs,
        "ray_path": ray_path,
        **_driver(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "sweep_id": sweep_id,
    }


def _driver() -> dict[str, Any]:
    """This process as the sweep's driver, by which an unfinished sweep's is found running or gone
    (``SweepOutcome.driver_alive``)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _set_study_attrs(plan: SweepPlan, sweep_id: str, attrs: dict[str, Any]) -> None:
    import optuna

    from sweeplab.tracking.study_store import open_storage

    study = optuna.load_study(study_name=sweep_id, storage=open_storage(plan.optuna_storage))
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def trial_spec(plan: SweepPlan) -> TrialSpec:
    from sweeplab.sweep.trainable import TrialSpec

    cfg = plan.cfg
    return TrialSpec(
        sweep_file=str(plan.sweep_file),
        sweep_text=plan.sweep_text,
        # relative paths would resolve inside each worker: pin them to where the sweep was started
        # (trials never open the stores: a password stays in the driver)
        overrides=(*(redact(o) for o in plan.overrides), to_override("data.root", str(Path(cfg.data.root).resolve())),
                   to_override("output_dir", str(plan.output_dir))),
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


def make_scheduler(scheduler: DictConfig, metric: str, mode: str, epochs: int,
                   dims: Sequence[Dimension] = ()) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if scheduler.kind == "asha":
        return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=epochs,
                             grace_period=scheduler.grace_period, reduction_factor=scheduler.reduction_factor)
    if scheduler.kind == "median":
        return MedianStoppingRule(time_attr="epoch", metric=metric, mode=mode,
                                  grace_period=scheduler.grace_period, min_samples_required=3)
    if scheduler.kind == "hyperband":
        from sweeplab.sweep.hyperband import HyperBand

        return HyperBand(time_attr="epoch", metric=metric, mode=mode, max_t=epochs,
                         reduction_factor=scheduler.reduction_factor)
    if scheduler.kind == "pbt":
        from sweeplab.sweep.pbt import make_pbt

        return make_pbt(scheduler, list(dims), metric, mode, epochs)
    return FIFOScheduler()


def stopping_epochs(scheduler: DictConfig, epochs: int) -> frozenset[int]:
    """The epochs after which ``make_scheduler``'s scheduler may stop, pause or copy a trial: ASHA's rungs
    (grace_period * reduction_factor**k, as Ray computes them), every epoch from the grace period
    for the median rule, every epoch for HyperBand (its rungs differ by bracket; a paused trial resumes
    from its checkpoint), every perturbation_interval for PBT (a weak trial copies a strong one's
    checkpoint), none without a scheduler."""
    if scheduler.kind == "asha":
        rungs = int(math.log(epochs / scheduler.grace_period) / math.log(scheduler.reduction_factor) + 1)
        return frozenset(math.ceil(scheduler.grace_period * scheduler.reduction_factor**k) for k in range(rungs))
    if scheduler.kind == "median":
        return frozenset(range(scheduler.grace_period, epochs + 1))
    if scheduler.kind == "hyperband":
        return frozenset(range(1, epochs + 1))
    if scheduler.kind == "pbt":
        return frozenset(range(scheduler.perturbation_interval, epochs + 1, scheduler.perturbation_interval))
    return frozenset()


def check_before_start(plan: SweepPlan) -> str:
    """Every check of a planned sweep's folders, stores and cluster before anything is written, so that a mistake
    leaves nothing behind; the Ray storage root (``ray_root``), opened."""
    from sweeplab.tracking.store import check_database, check_reachable, check_writable, tracking_uri
    from sweeplab.tracking.study_store import local_file

    _check_cluster_address(plan.cfg)  # a dead address fails in seconds
    check_writable(plan.output_dir, "output_dir")
    if plan.optuna_storage.startswith("postgresql"):  # Optuna would wait on it after Ray has started
        check_database(plan.optuna_storage, "cluster.optuna_storage / OPTUNA_STORAGE")
    elif (study_file := local_file(plan.optuna_storage)) is not None:
        check_writable(study_file.parent, "the Optuna storage (cluster.optuna_storage)")
    if plan.cfg.tracking.enabled:
        check_reachable(tracking_uri(plan.cfg))
    if not ray_environment(plan.cfg):  # a local Ray: what it will have is known before it starts
        _check_resources(plan.cfg, plan.sweep_file, _local_ray_resources(plan.cfg), "a local Ray here has")
        if str(plan.cfg.train.device).startswith("cuda"):  # else every trial would end invalid, after Ray's start
            from sweeplab.train import resolve_device

            resolve_device(plan.cfg.train.device)
        if plan.cfg.cluster.dashboard:
            check_dashboard(plan.cfg.cluster)  # what a local Ray's start would end in a traceback
    root = ray_root(plan)
    check_storage(root)
    return root


def launch_sweep(ref: str, overrides: Sequence[str] = (), resume: bool = False, quiet: bool = False,
                 on_outcome: Callable[[SweepOutcome], object] | None = None,
                 planned: SweepPlan | None = None) -> SweepOutcome:
    """Plan (every check before Ray starts), start Ray, run the trials, read the outcome back from Optuna.
    ``on_outcome`` (the summary) runs while a Ray of our own shuts down and the tracker draws the report.
    ``planned``: a new sweep's plan of ``ref`` and ``overrides``, already made and checked (``check_before_start``)."""
    from sweeplab.sweep.results import load_outcome

    if planned is None:
        plan, sweep_id = _plan(ref, overrides, resume)
        if resume:
            _check_resumable(plan, str(sweep_id), overrides)
        root = check_before_start(plan)
    else:
        plan, sweep_id, root = planned, None, ray_root(planned)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    ray_environment(plan.cfg)  # before anything imports ray
    from sweeplab.sweep.packs import start_packs

    if sweep_id is None:
        from sweeplab.sweep.sweep_id import claim_sweep_id

        sweep_id = claim_sweep_id(plan.optuna_storage, plan.name, plan.objectives)
    started_ray = _start_ray_and_store(plan.cfg, searched=len(plan.dims), trials=plan.num_trials)
    watch_sigterm()
    if not started_ray:  # a local Ray's were checked before it started
        import ray

        _check_resources(plan.cfg, plan.sweep_file, ray.cluster_resources(), "the Ray cluster has")
        check_shared_storage(plan, root, ray.nodes(), ray.util.get_node_ip_address())
    spec = start_packs(plan, sweep_id, trial_spec(plan))
    sync = sync_command(sweep_id, overrides, plan.cfg)
    callbacks = _callbacks(plan, sweep_id, spec, quiet, sync)
    if resume:
        tuner = _restored_tuner(experiment_path(root, sweep_id), spec, plan, callbacks)
        _set_study_attrs(plan, sweep_id, _driver())  # the resuming process drives the sweep now
    else:
        tuner = _new_tuner(plan, sweep_id, spec, root, callbacks)
    sc = plan.cfg.sweep
    print(f"sweeplab sweep: {sweep_id}: {plan.num_configs} configurations x {len(sc.seeds)} seed(s), "
          f"sampler {sampler_label(sc.sampler)}, scheduler {sc.scheduler.kind}, {sc.max_concurrent} at a time, "
          f"{sc.resources.cpu:g} CPU + {sc.resources.gpu:g} GPU each", flush=True)
    tune_usage.install()  # before fit: its telemetry would import MLflow
    try:
        started = time.monotonic()
        tuner.fit()
        outcome = load_outcome(plan.optuna_storage, sweep_id)
        _note_time_budget(plan, outcome, time.monotonic() - started)
        with _shutting_down(started_ray):
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        for callback in callbacks:
            if hasattr(callback, "finish"):
                callback.finish()
    return outcome


@contextmanager
def _shutting_down(started_ray: bool) -> Iterator[None]:
    """A Ray of our own goes down on a thread while the body runs."""
    stopper = None
    if started_ray:
        workers.forget_local_ray()
        stopper = threading.Thread(target=workers.stop_local_ray, name="sweeplab-ray-shutdown")
        stopper.start()
    try:
        yield
    finally:
        if stopper is not None:
            stopper.join()


def resume_command(sweep_id: str, overrides: Sequence[str], cfg: DictConfig | None = None) -> str:
    """The command that continues an interrupted sweep: its id and the overrides that locate its stores
    (the output_dir, the cluster settings, the tracking URI, each absolute; secrets redacted, for its user to
    retype); the rest is recorded with the sweep."""
    return located_command("sweep", sweep_id, overrides, "--resume", cfg=cfg)


def located_command(command: str, sweep_id: str, overrides: Sequence[str], *flags: str,
                    cfg: DictConfig | None = None) -> str:
    """``sweeplab COMMAND SWEEP_ID [FLAGS]`` with the overrides that locate the sweep's stores, runnable as printed
    from any folder (``cfg``: ``overrides`` composed, where the caller has it)."""
    cfg = compose(overrides) if cfg is None else cfg
    locating = [o for o in _located(overrides, cfg) if (key := override_key(o)) == "cluster"
                or key.startswith("cluster.") or key in LOCATION_KEYS - {"output_dir"}]  # output_dir: below, always
    output_dir = to_override("output_dir", absolute_location(cfg.output_dir))
    return command_line(command, sweep_id, *flags, output_dir, *locating)


def _check_resumable(plan: SweepPlan, sweep_id: str, overrides: Sequence[str]) -> None:
    """``--resume`` continues a sweep whose driver is gone and that has something left to run: not one still running
    here (two drivers would run one Ray experiment and one study), nor one that has ended."""
    from sweeplab.sweep.results import load_outcome

    outcome = load_outcome(plan.optuna_storage, sweep_id)
    outcome.refuse_while_running(f"wait for it to end, or stop it (Ctrl+C where it runs, or kill "
                                 f"{outcome.record['pid']}) and resume it then")
    if not outcome.unfinished:
        raise UserError(f"sweep {sweep_id} has ended ({outcome.counts_text()}): there is nothing to resume; its "
                        f"results: {located_command('status', sweep_id, overrides, cfg=plan.cfg)}")





def sync_command(sweep_id: str, overrides: Sequence[str], cfg: DictConfig) -> str:
    """The command that sends what a down MLflow store missed: the sweep's id and overrides (its stores' locations
    absolute, from ``cfg``, the sweep's config), a password retyped by its user rather than printed."""
    return command_line("sync", sweep_id, *_located(overrides, cfg))


def _located(overrides: Sequence[str], cfg: DictConfig) -> list[str]:
    """``overrides`` redacted, each store's location among them absolute: a printed command runs from any folder."""
    located = []
    for override in overrides:
        key = override_key(override)
        value = OmegaConf.select(cfg, key) if key in LOCATION_KEYS - {"cluster.address"} else None
        located.append(redact(to_override(key, absolute_location(str(value))) if value else override))
    return located


def _note_time_budget(plan: SweepPlan, outcome: SweepOutcome, elapsed: float) -> None:
    """Tune ends a sweep at sweep.time_budget_s without saying so: when the budget ran out before every
    configuration ended, the study records it (``ended_by``), and the summary says so."""
    budget = plan.cfg.sweep.time_budget_s
    if budget is None or elapsed < budget or not outcome.unfinished:
        return
    ended_by = f"sweep.time_budget_s={budget:g} (after {elapsed:.0f} s)"
    _set_study_attrs(plan, outcome.sweep_id, {"ended_by": ended_by})
    outcome.record["ended_by"] = ended_by


def _start_ray_and_store(cfg: DictConfig, searched: int, trials: int) -> bool:
    """Ray starts while, on threads, MLflow is imported and its store opened, and what the end of the sweep draws
    with is imported (seconds each, while the driver waits for Ray's processes); all of it happens in the tracker's
    client process instead, which also draws the end, for a sweep of ``trials`` that wants one
    (``client_process.wanted``). The drawing imports are not waited for: the end of the sweep uses them. They run
    at normal priority: a starved thread would hold the GIL the driver's threads wait for.
    ``searched``: how many parameters the sweep searches (the report's figures depend on it)."""
    if not cfg.tracking.enabled:
        return start_ray(cfg, trials)
    from concurrent.futures import ThreadPoolExecutor

    from sweeplab.sweep.tracker_calls import warm_up
    from sweeplab.tracking.client_process import client_process, wanted
    from sweeplab.tracking.store import client_for, tracking_uri

    uri = tracking_uri(cfg)  # launch_sweep found it answering
    warm_args = (searched, cfg.tracking.log_models > 0)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # MLflow prints a link as each run ends
    if not wanted(cfg.tracking.client_process, trials):
        threading.Thread(target=warm_up, args=warm_args, name="sweeplab-warm-up", daemon=True).start()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-store") as pool:
            store = pool.submit(client_for, uri)
            started = start_ray(cfg, trials)
            store.result()  # a store that cannot be opened: its UserError, before any trial starts
        return started
    # MLflow's import, the store's opening and the warm-up for the end's drawing, in the tracker's client process
    client = client_process(uri, warm_up=(warm_up, warm_args))
    try:
        started = start_ray(cfg, trials)
        client.ready()
    except BaseException:
        client.close()
        raise
    return started


def _plan(ref: str, overrides: Sequence[str], resume: bool) -> tuple[SweepPlan, str | None]:
    """A new sweep's plan (its id is claimed later), or an interrupted one's plan and id (recorded file and
    overrides: trials compose as before)."""
    if resume:
        return recorded_plan(ref, overrides)
    return plan_sweep(ref, overrides), None


# Where a sweep's files, stores and cluster are: a resume or sync names them on its own command line (the printed
# resume command does, with an absolute output_dir), and they may be relative to where the sweep ran
LOCATION_KEYS = frozenset({"output_dir", "cluster.storage_path", "cluster.optuna_storage", "cluster.address",
                           "tracking.uri"})


def _locating(key: str) -> bool:
    """Whether an override says where a sweep's files, stores and cluster are (LOCATION_KEYS, and the cluster's own
    settings, which start its Ray and compose no trial): the command line's replace the recorded ones."""
    return key in LOCATION_KEYS or key == "cluster" or key.startswith("cluster.")


def _resumed_overrides(recorded: Sequence[str], given: Sequence[str], sweep_id: str) -> list[str]:
    """The recorded overrides, each masked one replaced by the same key's override on this command line, and the
    command line's locating overrides in place of the recorded ones. Any other override must be one the sweep began
    with: its trials go on composing what they began with, and a change would be lost without a word."""
    masked = {override_key(o) for o in recorded if f":{MASK}@" in o}
    for override in given:
        key = override_key(override)
        if _locating(key) or key in masked or override in recorded:
            continue
        began = next((o for o in recorded if override_key(o) == key), None)
        raise ConfigError(
            f"{redact(override)} is not what sweep {sweep_id} began with "
            f"({'it had ' + began if began else f'it gave no {key}'}); its trials go on as they began, so give only "
            f"where its files, stores and cluster are (output_dir, cluster.*, tracking.uri) and retyped passwords, "
            "or start a new sweep")
    by_key = {override_key(o): o for o in given}
    located = [o for o in given if _locating(override_key(o))]
    kept = [o for o in recorded if not _locating(override_key(o)) or override_key(o) not in by_key]
    return [by_key.get(override_key(o), o) if f":{MASK}@" in o else o for o in kept] + located


def recorded_plan(ref: str, overrides: Sequence[str]) -> tuple[SweepPlan, str]:
    """An earlier sweep's plan and id, from the file and overrides its study recorded (``overrides`` locate the
    Optuna storage and the rest of the sweep's files, stores and cluster, and give its secrets)."""
    from sweeplab.sweep.results import find_sweep

    record = find_sweep(optuna_storage_url(compose(overrides)), ref)
    recorded, path = record.get("sweep_text"), Path(record["sweep_file"])  # no text: recorded by an earlier version
    if recorded is not None and (not path.is_file() or read_sweep_text(path) != recorded):
        raise ConfigError(f"sweep file {path} {'changed' if path.is_file() else 'is gone'} since sweep "
                          f"{record['sweep_id']} started, and its trials must go on composing what they began with: "
                          "put the file back as it was (the study keeps its text in the attribute 'sweep_text', "
                          "optuna.load_study(...).user_attrs), or start a new sweep")
    sweep_id = record["sweep_id"]
    return plan_sweep(str(path), _resumed_overrides(record["overrides"], overrides, sweep_id), recorded=True), sweep_id


def _callbacks(plan: SweepPlan, sweep_id: str, spec: TrialSpec, quiet: bool, sync_command: str) -> list[Callback]:
    """The searcher's Trials at hand, the live view, Tune's result.json and progress.csv per trial (TensorBoard's
    files with tracking.tensorboard), the MLflow tracker, the packs' callback."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from sweeplab.sweep.searcher import TrialsSeen
    from sweeplab.sweep.view import LiveView

    metric, mode = plan.objectives[0]
    sc = plan.cfg.sweep
    view = LiveView(spec.space_keys, metric, mode, int(plan.cfg.train.epochs), sc.max_failures, quiet,
                    total_trials=plan.num_trials)
    callbacks: list[Callback] = [TrialsSeen(), view, JsonLoggerCallback(), CSVLoggerCallback()]
    if plan.cfg.tracking.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
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


def _new_tuner(plan: SweepPlan, sweep_id: str, spec: TrialSpec, root: str, callbacks: list):
    from ray import tune

    from sweeplab.sweep.searcher import OptunaSearcher

    sc, epochs = plan.cfg.sweep, int(plan.cfg.train.epochs)
    metric, mode = plan.objectives[0]
    searcher = OptunaSearcher(plan.dims, _plain(sc.sampler), sc.sampler_seed, plan.optuna_storage, sweep_id,
                              plan.objectives, list(sc.seeds), plan.num_configs, epochs)
    for key, value in sweep_record(plan, sweep_id, experiment_path(root, sweep_id)).items():
        searcher.study.set_user_attr(key, value)
    return tune.Tuner(
        _trainable(spec, sc.resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(sc.scheduler, metric, mode, epochs, plan.dims),
            num_samples=plan.num_trials,
            max_concurrent_trials=sc.max_concurrent,
            time_budget_s=sc.time_budget_s,
            reuse_actors=True,  # no new Python process (torch import, data load) per trial
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=sweep_id,
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=sc.max_failures),
            # Ray snapshots the whole experiment (O(trials)) after every num_to_keep-th checkpoint of a trial:
            # with 1 that was after every trial's last epoch, O(trials^2) in all. A trial checkpoints at its
            # last epoch, its scheduler rungs and every checkpoint_interval_s, so with 3 most trials force none.
            # PBT: every checkpoint is kept (Ray's PBT restarts a trial's checkpoint numbering after an exploit,
            # and pruning by number then deletes a folder that a newer checkpoint still names)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if sc.scheduler.kind == "pbt" else 3),
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
                               resume_unfinished=True, resume_errored=False)
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
