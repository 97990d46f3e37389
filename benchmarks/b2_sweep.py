"""B2 sweep overhead, B3 tracking cost, B4 launch latency: one workload, several ways to run it.

Workload (issue 7): LeNet trials on mnist5k, random search over optimizer.lr, no early stopping,
2 at a time x 1 CPU, one torch thread. Every wall time runs from the command's start (start-up
included). The sweeplab runs are kept for the process, so B2 and B4 share them when run together, and so does B3 at
the smoke size (at full size it runs its own: ``B3_ORDER``).
B2 and B3 also run the same trainings one at a time (``spare_trials`` of them), which leaves one of 2 cores to
the driver and Ray's services: what the same code costs where the trials do not fill every core.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    BENCH_DIR,
    VENDOR,
    Check,
    CpuAccount,
    Result,
    StudyTimes,
    child_env,
    mlflow_first_metric_watcher,
    study_times,
    sweeplab_sweep,
    write_sweep,
)

from sweeplab.tracking.store import store_template_path

SIZES = {  # spare_trials: the one-at-a-time runs' trial count, 0 for none (the smoke size: the same two functions at
    # another concurrency, for three more runs, a third of the smoke test's time)
    "full": {"trials": 16, "epochs": 5, "subset": None, "spare_trials": 16},
    "smoke": {"trials": 4, "epochs": 2, "subset": 500, "spare_trials": 0},
}
# B3's sweeps, tracking on or off, in the order they run. At full size four of its own, back to back and mirrored, so
# that a machine whose speed drifts over minutes counts alike on both sides (2026-12-02: the same sweep's trials took
# 2.69 s and 1.94 s within the hour); at the smoke size B2's tracked sweep and one untracked.
B3_ORDER = {"full": ("off", "on", "on", "off"), "smoke": ("on", "off")}
ONE_AT_A_TIME_SKIPPED = "not run at this size (spare_trials 0): `make bench` runs it"
CONCURRENCY = 2
LR_RANGE = (0.005, 0.05)  # log-uniform; small enough that no LeNet diverges (a diverged trial ends early)
SWEEP_NAME = "bench_overhead"

_runs: dict[tuple[str, bool, int, int], dict] = {}  # (size, tracking, concurrency, repeat) -> figures of that run


def _trials(size: str, concurrency: int) -> int:
    p = SIZES[size]
    return p["trials"] if concurrency == CONCURRENCY else p["spare_trials"]


def sweep_body(trials: int, epochs: int, subset, concurrency: int = CONCURRENCY) -> str:
    data = f"data: {{subset: {subset}}}\n" if subset else ""
    return f"""
# sweeplab sweep <this file>   (benchmark B2: {trials} LeNet trials x {epochs} epochs, random lr, no early stopping)
defaults:
  - override /model: lenet
  - override /data: mnist5k
  - override /optimizer: sgd
  - _self_
{data}train: {{epochs: {epochs}, num_threads: 1, lr_schedule: none, device: cpu}}
sweep:
  name: {SWEEP_NAME}
  sampler: random
  num_trials: {trials}
  max_concurrent: {concurrency}
  scheduler: {{kind: none}}
  resources: {{cpu: 1, gpu: 0}}
  space:
    optimizer.lr: {{type: float, low: {LR_RANGE[0]}, high: {LR_RANGE[1]}, log: true}}
"""


def sweeplab_run(size: str, tracking: bool, concurrency: int = CONCURRENCY, repeat: int = 0) -> dict:
    """`sweeplab sweep` on the workload, ``concurrency`` trials at a time: wall, start-up (to the first trial), steady
    phase, teardown; with tracking, also when the first epoch metric became readable in the MLflow store (B4).
    Run once per process and ``repeat``: B2, B3 and B4 share repeat 0."""
    key = (size, tracking, concurrency, repeat)
    if key in _runs:
        return _runs[key]
    p, trials = SIZES[size], _trials(size, concurrency)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        sweep = write_sweep(tmp, SWEEP_NAME, sweep_body(trials, p["epochs"], p["subset"], concurrency))
        out = tmp / "outputs"
        overrides = [f"output_dir={out}", *([] if tracking else ["tracking=none"])]
        watch = mlflow_first_metric_watcher(out / "mlflow.db", "val/acc") if tracking else None
        template = store_template_path().exists()  # else this sweep runs MLflow's migrations (make venv makes it)
        with CpuAccount() as cpu:
            timed = sweeplab_sweep(sweep, overrides, cwd=tmp, watch=watch)
        times = study_times(out, timed.started_at)
    what = f"sweeplab sweep (tracking {'on' if tracking else 'off'}, {concurrency} at a time)"
    _check_all_completed(times, trials, what)
    _runs[key] = {"wall_s": timed.wall, "startup_s": times.first_start, "steady_s": times.steady,
                  "began_s": times.first_began, "training_s": times.training,
                  "teardown_s": timed.wall - times.last_complete, "first_metric_s": timed.events.get("first_metric"),
                  "cpu_s": cpu.by_role(), **({"store_template_existed": template} if tracking else {})}
    return _runs[key]


def _check_all_completed(times: StudyTimes, trials: int, what: str) -> None:
    done = [t for t in times.trials if t["status"] == "completed"]
    if len(done) != trials:
        raise RuntimeError(f"{what}: {len(done)} of {trials} trials completed: {[t['status'] for t in times.trials]}")


def bare_run(size: str, concurrency: int = CONCURRENCY, channels_last: bool = False) -> dict:
    """The same trainings in plain PyTorch, split over ``concurrency`` processes started together; laid out
    channels_last, as sweeplab's trainer lays a convnet out on the CPU, when asked."""
    import numpy as np

    p = SIZES[size]
    lrs = np.exp(np.random.default_rng(0).uniform(*np.log(LR_RANGE), _trials(size, concurrency))).tolist()
    started_at = time.time()
    t0 = time.perf_counter()
    procs = []
    with CpuAccount() as cpu:
        for share in (lrs[i::concurrency] for i in range(concurrency)):
            cmd = [sys.executable, BENCH_DIR / "bare_loop.py", "--epochs", str(p["epochs"]),
                   *(["--subset", str(p["subset"])] if p["subset"] else []), "--lrs", *map(str, share),
                   *(["--channels-last"] if channels_last else [])]
            procs.append(subprocess.Popen(list(map(str, cmd)), env=child_env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"bare_loop.py exited {proc.returncode}: {err.strip().splitlines()[-1:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - t0  # before the account's last look at /proc, as the sweep's side is timed
    startup = min(r["first_start"] for r in reports) - started_at
    epochs = [s for r in reports for s in r["epoch_seconds"]]
    return {"wall_s": wall, "startup_s": startup, "steady_s": wall - startup, "epoch_s_mean": sum(epochs) / len(epochs),
            "cpu_s": cpu.by_role()}


def ray_naive_run(size: str) -> dict:
    p = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="bench-ray-naive-") as tmp:
        cmd = [sys.executable, BENCH_DIR / "ray_naive.py", "--trials", str(p["trials"]), "--epochs", str(p["epochs"]),
               "--storage", tmp, *(["--subset", str(p["subset"])] if p["subset"] else [])]
        from harness import check_ok, run_timed

        timed = check_ok(run_timed(cmd, Path(tmp)), "ray_naive.py")
    return {"wall_s": timed.wall}


HYDRA_APP = '''"""The B2 workload as a Hydra user writes it: a @hydra.main task, Optuna sweeper, joblib launcher.
python app.py --multirun"""
import hydra


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg) -> float:
    import torch
    from bare_loop import build, load_tensors, train_bare

    torch.set_num_threads(1)
    data = load_tensors("mnist5k", cfg.subset)
    return train_bare(build("lenet", data), data, cfg.lr, cfg.epochs)[-1]["val/acc"]


if __name__ == "__main__":
    main()
'''

HYDRA_CONFIG = """defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: random
  - override hydra/launcher: joblib
  - _self_
lr: 0.01
epochs: {epochs}
subset: {subset}
hydra:
  sweeper:
    direction: maximize
    n_trials: {trials}
    n_jobs: {concurrency}
    sampler: {{seed: 0}}
    params:
      lr: tag(log, interval({low}, {high}))
  launcher:
    n_jobs: {concurrency}
"""


def hydra_available() -> str:
    """'' when Hydra's Optuna sweeper can run here, else why not."""
    if not (VENDOR / "hydra_plugins" / "hydra_optuna_sweeper").is_dir():
        return (f"hydra-optuna-sweeper is not installed in {VENDOR} (run `make bench-deps`; it declares optuna<3, "
                "so it cannot be a dependency of this project and is installed beside it with --no-deps)")
    return ""


def hydra_run(size: str) -> dict:
    from harness import check_ok, run_timed

    p = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="bench-hydra-") as tmp:
        app = Path(tmp)
        (app / "conf").mkdir()
        (app / "app.py").write_text(HYDRA_APP)
        (app / "conf" / "config.yaml").write_text(HYDRA_CONFIG.format(
            epochs=p["epochs"], subset=p["subset"] if p["subset"] else "null", trials=p["trials"],
            concurrency=CONCURRENCY, low=LR_RANGE[0], high=LR_RANGE[1]))
        timed = check_ok(run_timed([sys.executable, "app.py", "--multirun"], app, env=child_env([VENDOR])),
                         "the Hydra Optuna sweeper app")
        completed = len(list(app.glob("multirun/*/*/*/.hydra")))
    if completed != p["trials"]:
        raise RuntimeError(f"the Hydra Optuna sweeper ran {completed} of {p['trials']} jobs")
    return {"wall_s": timed.wall}


def run_b2(size: str, **_) -> Result:
    p = SIZES[size]
    bare = bare_run(size)
    bare_nhwc = bare_run(size, channels_last=True)  # training as fast as the sweep's: what orchestration adds
    sweep = sweeplab_run(size, tracking=True)
    ray_naive = ray_naive_run(size)
    hydra_reason = hydra_available()
    hydra = hydra_run(size) if not hydra_reason else None
    spare = bool(p["spare_trials"])
    spare_bare, spare_sweep = (bare_run(size, 1), sweeplab_run(size, True, 1)) if spare else (None, None)
    # each side from its first training's start: the workers' start and imports are start-up, as the bare
    # processes' imports and data loading are
    overhead = (sweep["training_s"] - bare_nhwc["steady_s"]) * CONCURRENCY / p["trials"]
    checks = [
        Check("sweeplab sweep / bare, wall time, start-up included", sweep["wall_s"] / bare["wall_s"], "<= 1.20"),
        Check("orchestration alone: sweeplab sweep / bare loop laid out channels_last as its trials are, wall time",
              sweep["wall_s"] / bare_nhwc["wall_s"], ""),
        Check("steady-state overhead per trial, each side from its first training's start (s beyond training, "
              "against the bare loop in its layout)", overhead, "<= 0.25", "s"),
        Check("the first workers' start: the first trial asked of Optuna -> begun on its worker",
              sweep["began_s"] - sweep["startup_s"], "", "s"),
        Check("CPU seconds of all its processes, sweeplab sweep / bare", _cpu(sweep) / _cpu(bare), ""),
        Check("the same, Ray's trial workers and services alone (no driver) / bare",
              (sweep["cpu_s"].get("trial workers", 0) + sweep["cpu_s"].get("Ray's services", 0)) / _cpu(bare), ""),
        Check("with a core to spare: one trial at a time, sweeplab sweep / bare loop in 1 process, wall time",
              _ratio(spare_sweep, spare_bare), ""),
        Check("naive Ray Tune script / bare, wall time", ray_naive["wall_s"] / bare["wall_s"], ""),
        Check("Hydra Optuna sweeper (--multirun, joblib) / bare, wall time",
              hydra["wall_s"] / bare["wall_s"] if hydra else None, ""),
    ]
    figures = {"workload": {**p, "concurrency": CONCURRENCY, "model": "lenet", "data": "mnist5k"},
               "bare": bare, "bare_channels_last": bare_nhwc, "sweeplab": sweep, "ray_naive": ray_naive,
               "hydra_optuna": hydra or hydra_reason,
               "one_at_a_time": {"trials": _trials(size, 1), "bare": spare_bare, "sweeplab": spare_sweep}
               if spare else ONE_AT_A_TIME_SKIPPED,
               "overhead_definition": "((last trial end - first trial begun on its worker) - (bare end - bare "
                                      "first epoch start), the bare loop channels_last) x concurrency / trials"}
    return Result("B2", "sweep overhead vs bare loop", size, checks=checks, figures=figures)


def _ratio(run: dict | None, other: dict | None) -> float | None:
    """``run``'s wall time over ``other``'s; None where they were not run."""
    return run["wall_s"] / other["wall_s"] if run and other else None


def _cpu(run: dict) -> float:
    """CPU seconds of every process of a run (harness.CpuAccount)."""
    return sum(run["cpu_s"].values())


def run_b3(size: str, **_) -> Result:
    order = B3_ORDER[size]
    own = len(order) > 2  # its own sweeps, none shared with B2 and B4
    if own and not _runs:  # the process's first sweep (B3 alone) pays cold caches: not on one side only
        sweeplab_run(size, tracking=False, repeat=-1)
    runs = [sweeplab_run(size, tracking=which == "on", repeat=i + 1 if own else 0) for i, which in enumerate(order)]
    ons = [r for r, which in zip(runs, order, strict=True) if which == "on"]
    offs = [r for r, which in zip(runs, order, strict=True) if which == "off"]

    def total(side: list[dict], key: str) -> float:
        return sum(r[key] for r in side)

    def driver(side: list[dict]) -> float:  # mean CPU seconds
        return sum(r["cpu_s"].get("driver", 0) for r in side) / len(side)

    spare = bool(SIZES[size]["spare_trials"])
    spare_on, spare_off = (sweeplab_run(size, True, 1), sweeplab_run(size, False, 1)) if spare else (None, None)
    return Result("B3", "tracking on vs tracking=none", size, checks=[
        Check("sweep wall, tracking on / tracking=none", total(ons, "wall_s") / total(offs, "wall_s"), "<= 1.03"),
        Check("with a core to spare: one trial at a time, tracking on / tracking=none", _ratio(spare_on, spare_off),
              ""),
        Check("trial phase (first trial begun on its worker to last end), tracking on / none",
              total(ons, "training_s") / total(offs, "training_s"), ""),
        Check("the driver's CPU, tracking on - none", driver(ons) - driver(offs), "", "s"),
    ], figures={"tracking_on": ons[0], "tracking_none": offs[0], "order": list(order), "runs": runs,
                "one_at_a_time": {"tracking_on": spare_on, "tracking_none": spare_off} if spare
                else ONE_AT_A_TIME_SKIPPED})


def run_b4(size: str, **_) -> Result:
    run = sweeplab_run(size, tracking=True)
    if run["first_metric_s"] is None:
        raise RuntimeError("no val/acc metric was ever readable in the MLflow store while the sweep ran")
    return Result("B4", "launch latency", size, checks=[
        Check("command start -> first epoch metric readable in MLflow", run["first_metric_s"], "<= 15", "s"),
        Check("command start -> first trial started (Optuna)", run["startup_s"], "", "s"),
        Check("command start -> first trial begun on its worker", run["began_s"], "", "s"),
    ], figures=run)
