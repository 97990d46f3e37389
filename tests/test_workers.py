"""Trials on the workers a local Ray starts with itself (sweeplab.sweep.workers): how many Ray pre-starts, and a
real sweep whose trials run in those very processes, so no trial waits for a new worker to import torch."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only

import pytest  # noqa: E402
from sweep_helpers import TINY, write_sweep  # noqa: E402

from sweeplab.compose import compose  # noqa: E402
from sweeplab.sweep.workers import local_ray_config, trial_actors  # noqa: E402


@pytest.mark.parametrize(("overrides", "num_cpus", "actors"), [
    ([], 2, 2),  # 2 at a time x 1 CPU
    (["sweep.max_concurrent=8"], 2, 2),  # as many as the CPUs allow
    (["sweep.max_concurrent=4", "sweep.resources.cpu=0.5"], 2, 4),
    (["sweep.max_concurrent=4", "sweep.resources.gpu=0.5", "cluster.num_gpus=1"], 16, 2),  # as the GPU allows
    # GPUs Ray has yet to find: as many as the CPUs allow (no fewer workers than the GPUs could keep busy)
    (["sweep.max_concurrent=4", "sweep.resources.gpu=1"], 16, 4),
    (["sweep.max_concurrent=3", "sweep.resources.cpu=0"], 2, 3),
])
def test_trial_actors_is_what_runs_at_once(overrides, num_cpus, actors):
    assert trial_actors(compose(overrides), num_cpus) == actors


@pytest.mark.parametrize(("overrides", "trials", "cap"), [
    (["cluster.num_cpus=2"], None, None),  # 2 trials at a time on 2 CPUs: Ray's own count, one per CPU
    (["cluster.num_cpus=16"], None, 2),  # 2 at a time on 16 CPUs: 14 idle workers would import torch for nothing
    (["cluster.num_cpus=2", "sweep.max_concurrent=1"], None, 1),
    (["cluster.num_cpus=2"], 1, 1),  # a sweep of one trial
    (["cluster.num_cpus=16", "sweep.fuse=4", "sweep.fuse_on_cpu=true"], None, None),  # its packs start workers too
    (["cluster.num_cpus=16", "sweep.fuse=4"], None, 2),  # on CPUs that sweep.fuse does not fuse: the cap stays
])
def test_ray_pre_starts_only_the_workers_that_will_hold_trials(overrides, trials, cap):
    config = local_ray_config(compose(overrides), trials)
    assert config["enable_worker_prestart"] is True
    assert config.get("worker_maximum_startup_concurrency") == cap
    assert os.environ["PL_DISABLE_FORK"] == "1"  # what Tune's runtime_env would have set, inherited instead


@pytest.mark.slow
@pytest.mark.parametrize("at_once", [2, 1])
def test_the_trials_run_in_the_workers_ray_started_with_itself(tmp_path, at_once):
    """Ray starts as many workers as trials run at once (2 CPUs here), and every trial runs in one of them. One at
    a time, Ray on its own would pre-start a second worker, idle, that imports torch (0.46 GB of its own memory)."""
    import ray

    from sweeplab.sweep.launch import launch_sweep, start_ray

    ray.shutdown()
    start_ray(compose(["cluster.num_cpus=2", f"sweep.max_concurrent={at_once}"]))
    try:
        raylet_log = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "raylet.out"
        path = write_sweep(tmp_path, "workers", f"""
train: {{epochs: 1}}
sweep:
  sampler: random
  num_trials: 4
  max_concurrent: {at_once}
  scheduler: {{kind: none}}
  space:
    optimizer.lr: {{type: float, low: 0.01, high: 0.1, log: true}}
""")
        outcome = launch_sweep(str(path), [f"output_dir={tmp_path / 'out'}", *TINY, "tracking=none"], quiet=True)
        assert [t.status for t in outcome.trials] == ["completed"] * 4
        started = re.findall(r"Started worker process with pid (\d+)", raylet_log.read_text())
        # every trial ran in one of the workers Ray pre-started as it came up: Tune's actors (no runtime_env of
        # their own) took them (on a loaded machine Ray may start one more meanwhile, which no trial used)
        ran = {str(json.loads(line)["pid"]) for result in Path(outcome.record["ray_path"]).glob("*/result.json")
               for line in result.read_text().splitlines()}
        assert ran and ran <= set(started[:at_once]), (ran, started)
        if at_once == 1:  # at most one worker starts at a time, and the one trial actor keeps it: no other starts
            assert len(started) == 1, started
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_the_sweep_s_local_ray_stops_without_waiting_on_its_monitor():
    """Ray's shutdown stops the GCS, then the autoscaler monitor, whose SIGTERM handler reports to that GCS, so Ray
    waited a second before killing it; sweeplab kills the monitor of its local Ray first, and every process ends."""
    import ray

    from sweeplab.sweep.launch import start_ray
    from sweeplab.sweep.workers import stop_local_ray

    ray.shutdown()
    start_ray(compose(["cluster.num_cpus=1"]))
    node = ray._private.worker._global_node
    processes = [info.process for infos in node.all_processes.values() for info in infos]
    left_to_ray: list[str] = []
    kill_all = node.kill_all_processes

    def spy(**options):
        left_to_ray.extend(node.all_processes)
        kill_all(**options)

    node.kill_all_processes = spy
    stop_local_ray()
    assert left_to_ray and "monitor" not in left_to_ray, left_to_ray
    assert not ray.is_initialized() and all(p.poll() is not None for p in processes)
