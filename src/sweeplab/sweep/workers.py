"""Trial actors on the workers a local Ray starts with itself, ready to train.

A local Ray can pre-start one Python worker per CPU as it starts; each imports what a trial needs
(``TRIAL_IMPORTS``, Ray's ``preload_python_modules``) while the driver sets up Tune and asks Optuna for the
first trials. Ray hands a pre-started worker only to an actor without a ``runtime_env``, and Ray Tune registers
every trainable with one: ``PL_DISABLE_FORK`` and the variables it propagates (ray/tune/execution/class_cache.py).
Its trial actors then waited for new workers that imported torch on the trials' time. A local Ray's workers
inherit the environment its raylet started with, so a runtime_env that only repeats that environment changes
nothing: once ``started_local_ray`` has run, Tune registers such trainables without one. A cluster's keep Tune's.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any

from omegaconf import DictConfig

from sweeplab.fusion import fusing

# What a trial's worker imports: torch (seconds of it), Ray Tune, sweeplab's training, and the torch._dynamo that
# torch imports lazily in the first optimizer's constructor (a second of CPU; torch/_compile.py).
TRIAL_IMPORTS = ("torch", "torch._dynamo", "ray.tune", "sweeplab.train", "sweeplab.compose",
                 "sweeplab.sweep.trainable")
# What Tune's runtime_env sets beyond the variables it propagates (its DEFAULT_ENV_VARS, checked as it is used;
# importing Ray Tune to read it would cost a second before Ray starts)
TUNE_ENV = {"PL_DISABLE_FORK": "1"}
IDLE_WORKER_KEPT_MS = 60_000  # a pre-started worker waits this long for its trial (Ray's default: 1 s)
_local_env: dict[str, str] | None = None  # the environment the local Ray of this process started with
_installed = False


def trial_actors(cfg: DictConfig, num_cpus: float) -> int:
    """How many trial actors hold a worker at once: sweep.max_concurrent, as the CPUs (and the GPUs, when
    cluster.num_gpus gives their count; otherwise Ray finds them as it starts) allow."""
    res = cfg.sweep.resources
    fits = math.floor(num_cpus / res.cpu) if res.cpu > 0 else cfg.sweep.max_concurrent
    if res.gpu > 0 and cfg.cluster.num_gpus is not None:
        fits = min(fits, math.floor(cfg.cluster.num_gpus / res.gpu))
    return min(cfg.sweep.max_concurrent, fits)


def local_ray_config(cfg: DictConfig, trials: int | None = None) -> dict:
    """A local Ray's ``_system_config``; sets Tune's own variables here first, for its workers to inherit.
    Ray pre-starts a worker per CPU, as it comes up (``enable_worker_prestart``) and, even with that off, as the
    first driver connects (``prestart_worker_first_driver``), as many as its startup concurrency lets start at once
    (the cores, at most: ray/_private/services.py); each imports ``TRIAL_IMPORTS`` (0.46 GB of its own memory).
    Where fewer trials than CPUs run at once (of ``trials`` in all, when known), the concurrency is capped at that
    count, so only workers that will hold a trial start: one trial at a time on a 16-core machine would otherwise
    leave 15 idle ones. The cap bounds workers starting at once, not workers alive; a fused sweep's packs start
    workers of their own, so it has none."""
    for key, value in TUNE_ENV.items():
        os.environ.setdefault(key, value)
    num_cpus = cfg.cluster.num_cpus or os.cpu_count() or 1
    actors = trial_actors(cfg, num_cpus)
    if trials is not None:
        actors = min(actors, trials)
    # Ray may end a worker idle for over a second (its default): it ended a pre-started one as the first trial
    # started (once in four runs), and the second trial waited for a new worker to import torch
    config = {"preload_python_modules": list(TRIAL_IMPORTS), "enable_worker_prestart": True,
              "idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEPT_MS}
    if actors < num_cpus and not fusing(cfg):  # a sweep.fuse that does not fuse (on CPUs) keeps the cap
        config["worker_maximum_startup_concurrency"] = max(1, actors)
    return config


def started_local_ray() -> None:
    """Called right after this process started a local Ray: its workers have the environment we have now."""
    global _local_env
    _local_env = dict(os.environ)
    _install()


def forget_local_ray() -> None:
    """A cluster joined, or our local Ray shut down: Tune's trainables get their runtime_env again."""
    global _local_env
    _local_env = None


def stop_local_ray() -> None:
    """``ray.shutdown`` of the local Ray this process started, its autoscaler monitor killed first. Ray stops the
    GCS, then the monitor, whose SIGTERM handler reports to that GCS, so Ray waited a second before killing it at
    the end of every sweep; a local Ray's monitor scales nothing and holds nothing (docs/performance.md)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # private: without it, Ray's own shutdown as before
    if node is not None and hasattr(node, "kill_monitor") and node.is_head():
        with contextlib.suppress(Exception):  # already gone, or a Ray that keeps it otherwise
            node.kill_monitor(check_alive=False)
    ray.shutdown()


def _only_repeats_local_env() -> bool:
    """Tune's runtime_env for a trainable would set nothing the local Ray's workers lack."""
    try:
        from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE
    except ImportError:  # a Ray Tune that builds it otherwise: its own runtime_env, as before
        return False
    if _local_env is None:
        return False
    wanted = {**DEFAULT_ENV_VARS, **{k: os.environ[k] for k in ENV_VARS_TO_PROPAGATE if k in os.environ}}
    return wanted.items() <= _local_env.items()


def _install() -> None:
    global _installed
    if _installed:
        return
    try:  # private to Ray Tune (2.60): without it, trials wait for new workers, as they did
        from ray.tune.execution.class_cache import _ActorClassCache
    except ImportError:
        return
    original = _ActorClassCache.get

    def get(cache: _ActorClassCache, trainable_cls: type) -> Any:
        if trainable_cls not in cache._cache and _only_repeats_local_env():
            import ray

            cache._cache[trainable_cls] = ray.remote(trainable_cls)
        return original(cache, trainable_cls)

    setattr(_ActorClassCache, "get", get)  # noqa: B010 (Tune's controller looks it up on the class)
    _installed = True
