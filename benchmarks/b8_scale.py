"""B8 scale: many one-epoch MLP trials on `digits` with tracking on: wall and driver CPU per trial,
how they grow with the trial count, where the driver's CPU goes (a profiled run), and the same on a
multi-node ray.cluster_utils.Cluster on loopback with more trials at once."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from harness import Check, CpuAccount, Result, study_times, sweeplab_sweep, write_sweep

SIZES = {  # trial counts (small, large); the profiled run and the cluster run use the small count. At full size
    # the profiled run is one of its own (cProfile slows the driver); the smoke run profiles its small run
    "full": {"counts": [128, 1024], "cluster_nodes": 3, "cluster_concurrency": 6, "own_profiled_run": True},
    "smoke": {"counts": [4, 8], "cluster_nodes": 2, "cluster_concurrency": 4, "own_profiled_run": False},
}


def sweep_body(trials: int, concurrency: int) -> str:
    return f"""
# sweeplab sweep <this file>   (benchmark B8: {trials} one-epoch MLP trials on digits, TPE, tracking on)
defaults:
  - override /model: mlp
  - override /data: digits
  - _self_
train: {{epochs: 1, num_threads: 1, lr_schedule: none, device: cpu}}
sweep:
  name: bench_scale
  sampler: tpe
  num_trials: {trials}
  max_concurrent: {concurrency}
  scheduler: {{kind: none}}
  resources: {{cpu: 1, gpu: 0}}
  space:
    optimizer.lr: {{type: float, low: 0.01, high: 0.3, log: true}}
    model.hidden_sizes: {{type: categorical, choices: [[64], [128], [128, 64]]}}
"""


def one_sweep(trials: int, concurrency: int, profile: bool = False, address: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-b8-{trials}-") as tmp:
        tmp = Path(tmp)
        sweep = write_sweep(tmp, "bench_scale", sweep_body(trials, concurrency))
        out, stats = tmp / "outputs", tmp / "driver.json"
        overrides = [f"output_dir={out}", *([f"cluster.address={address}"] if address else [])]
        os.environ["BENCH_PROFILE"] = "1" if profile else "0"  # read by driver.py through child_env
        try:
            with CpuAccount() as processes:
                timed = sweeplab_sweep(sweep, overrides, cwd=tmp, driver=stats)
        finally:
            os.environ.pop("BENCH_PROFILE", None)
        times = study_times(out, timed.started_at)
        driver = json.loads(stats.read_text())
    ended = sum(t["complete"] is not None for t in times.trials)
    if ended != trials:
        raise RuntimeError(f"{ended} of {trials} trials ended in the {trials}-trial sweep")
    cpu = driver["user_s"] + driver["sys_s"]
    return {"trials": trials, "concurrency": concurrency, "wall_s": timed.wall, "wall_per_trial_s": timed.wall / trials,
            # from the first trial's start on its worker, as B2 counts: the first workers' start is fixed, and
            # counted in, it would weigh on the small count's cost per trial more than on the large one's
            "trial_phase_s": times.training, "trial_phase_per_trial_s": times.training / trials,
            "from_first_ask_s": times.steady,
            "driver_cpu_s": cpu, "driver_cpu_per_trial_s": cpu / trials,
            "driver_results_per_cpu_s": trials / cpu,  # one epoch result per trial
            # the tracker's MLflow client process, where a sweep has one (tracking.client_process)
            "client_process_cpu_s": processes.by_role().get("driver's helpers", 0.0),
            "startup_s": times.first_start,
            **{k: v for k, v in driver.items() if k in ("main_thread_cpu_s", "components_s", "packages_s")}}


def on_cluster(trials: int, nodes: int, concurrency: int) -> dict:
    """A head and nodes-1 workers on loopback, each claiming 2 CPUs (logical: the cores are shared)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        return {**one_sweep(trials, concurrency, address=cluster.address), "nodes": nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


def run(size: str, **_) -> Result:
    p = SIZES[size]
    small, large = p["counts"]
    own = p["own_profiled_run"]
    runs = {small: one_sweep(small, 2, profile=not own), large: one_sweep(large, 2)}
    profiled = one_sweep(small, 2, profile=True) if own else runs[small]
    cluster = on_cluster(small, p["cluster_nodes"], p["cluster_concurrency"])
    # what one more trial costs, start-up and teardown cancelled out
    marginal_cpu = (runs[large]["driver_cpu_s"] - runs[small]["driver_cpu_s"]) / (large - small)
    marginal_wall = (runs[large]["wall_s"] - runs[small]["wall_s"]) / (large - small)
    with_process = {n: run["driver_cpu_s"] + run["client_process_cpu_s"] for n, run in runs.items()}
    marginal_with_process = (with_process[large] - with_process[small]) / (large - small)
    parts = dict(profiled["components_s"])
    parts["rest: Ray's tune loop, imports, other"] = profiled["main_thread_cpu_s"] - sum(parts.values())
    shares = {name: seconds / profiled["main_thread_cpu_s"] for name, seconds in parts.items()}
    growth = runs[large]["trial_phase_per_trial_s"] / runs[small]["trial_phase_per_trial_s"]
    return Result("B8", "scale: many short trials, tracking on", size, checks=[
        Check(f"{small} trials, wall time, start-up included", runs[small]["wall_s"], "<= 45" if small == 128 else "",
              "s"),
        Check(f"wall per trial at {large} trials, start-up included", runs[large]["wall_per_trial_s"], "<= 0.25", "s"),
        Check(f"trial phase per trial from the first trial's start on its worker, {large} / {small} trials", growth,
              "<= 1.5"),
        Check(f"the same from the first trial's ask (until 2026-12-02), {large} / {small} trials",
              (runs[large]["from_first_ask_s"] / large) / (runs[small]["from_first_ask_s"] / small), ""),
        Check(f"driver CPU per extra trial ({small} -> {large} trials)", marginal_cpu, "", "s"),
        Check("trial results the driver handles per CPU second (1 / the above)",
              1 / marginal_cpu if marginal_cpu > 0 else None, ">= 20"),
        Check("driver and its MLflow client process: CPU per extra trial", marginal_with_process, "", "s"),
        Check(f"wall per extra trial ({small} -> {large} trials), 2 at a time", marginal_wall, "", "s"),
        *(Check(f"driver main-thread CPU share: {name}", share, "") for name, share in shares.items()),
        Check(f"cluster ({p['cluster_nodes']} nodes, {p['cluster_concurrency']} at once): wall per trial at {small}",
              cluster["wall_per_trial_s"], "", "s"),
    ], figures={"runs": runs, "profiled": profiled, "cluster": cluster, "marginal_driver_cpu_s": marginal_cpu,
                "marginal_driver_and_client_process_cpu_s": marginal_with_process,
                "marginal_wall_s": marginal_wall, "main_thread_cpu_by_part_s": parts,
                "profile_note": f"profiled: {'a separate run' if own else 'the run'} at the small count; components_s "
                                "and packages_s are its main-thread CPU from cProfile (thread time, with cProfile's "
                                "own overhead); "
                                "driver_cpu_s: all the driver's threads (getrusage)"})
