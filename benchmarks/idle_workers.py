"""The Python workers a local Ray starts for a sweep that runs fewer trials at once than the machine has cores, and
what they hold: sweeplab's cap on Ray's startup concurrency (`sweeplab.sweep.workers.local_ray_config`) against
Ray's default, one after the other.

    .venv/bin/python benchmarks/idle_workers.py [--cpus 16] [--runs 1]

The sweep: 2 one-epoch trials, one at a time, `tracking=none`. `--cpus N` makes Ray see an N-core machine:
`cluster.num_cpus=N`, and the startup concurrency Ray derives from the core count (`min(cpu_count, num_cpus)`,
ray/_private/services.py) computed as N cores would give it, so a 2-core machine starts what a 16-core one would. The
workers' imports then share the real cores: the wall and CPU times are this machine's, not an N-core one's. Each
line: workers started, the most alive at once, their unique memory (USS) at that moment, the CPU of Ray's workers,
the wall time. Worker memory is read every 0.5 s (`psutil`), so a worker that lives under half a second may be missed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil
from harness import CpuAccount, child_env, process_role

SWEEP = ["sweep", "smoke", "sweep.num_trials=2", "sweep.max_concurrent=1", "train.epochs=1", "data.subset=300",
         "tracking=none", "--quiet"]
# The driver: sweeplab's main in a process whose multiprocessing.cpu_count() is the emulated core count; with
# IDLE_WORKERS_SETTING=ray-default, local_ray_config without sweeplab's startup cap
DRIVER = """
import multiprocessing, os, sys
cpus = int(os.environ["IDLE_WORKERS_CPUS"])
multiprocessing.cpu_count = lambda: cpus
from sweeplab.sweep import workers
if os.environ["IDLE_WORKERS_SETTING"] == "ray-default":
    capped = workers.local_ray_config
    def uncapped(cfg, trials=None):
        config = capped(cfg, trials)
        config.pop("worker_maximum_startup_concurrency", None)
        return config
    workers.local_ray_config = uncapped
from sweeplab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def is_ray_worker(proc: psutil.Process) -> bool:
    try:
        return process_role(" ".join(proc.cmdline())) == "trial workers"
    except psutil.Error:
        return False


class WorkerWatch:
    """Ray's worker processes below ``root``: every pid seen, and the largest count alive at once with their USS."""

    def __init__(self, root: int, poll_s: float = 0.5) -> None:
        self.root, self.poll_s = psutil.Process(root), poll_s
        self.started: set[int] = set()
        self.most_alive, self.uss_at_most = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                alive = [p for p in self.root.children(recursive=True) if is_ray_worker(p)]
            except psutil.Error:
                continue
            uss = 0
            for proc in alive:
                self.started.add(proc.pid)
                with contextlib.suppress(psutil.Error):  # it ended meanwhile
                    uss += proc.memory_full_info().uss
            if len(alive) > self.most_alive or (len(alive) == self.most_alive and uss > self.uss_at_most):
                self.most_alive, self.uss_at_most = len(alive), uss


def one_run(setting: str, cpus: int) -> dict:
    env = child_env() | {"IDLE_WORKERS_CPUS": str(cpus), "IDLE_WORKERS_SETTING": setting}
    with tempfile.TemporaryDirectory(prefix="bench-idle-workers-") as tmp, CpuAccount() as cpu:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, *SWEEP, f"cluster.num_cpus={cpus}"], cwd=tmp, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with WorkerWatch(proc.pid) as watch:
            out, err = proc.communicate(timeout=1800)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep exited {proc.returncode}: {(out + err).strip().splitlines()[-3:]}")
    return {"setting": setting, "cpus": cpus, "workers_started": len(watch.started),
            "most_alive_at_once": watch.most_alive, "their_uss_gb": round(watch.uss_at_most / 2**30, 2),
            "ray_workers_cpu_s": cpu.by_role().get("trial workers", 0.0), "wall_s": round(wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="the core count Ray sees (default: "
                        "this machine's)")
    parser.add_argument("--runs", type=int, default=1, help="rounds of the two settings, one after the other")
    options = parser.parse_args()
    for _ in range(options.runs):
        for setting in ("ray-default", "sweeplab"):
            print(json.dumps(one_run(setting, options.cpus)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
