"""What every benchmark shares: the result record, its JSON line and Markdown rows, the machine
header, and running `sweeplab sweep` (or any command) as a subprocess timed from its start."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
VENDOR = BENCH_DIR / ".vendor"  # `make bench-deps`: plugins whose declared requirements clash with ours
SWEEPLAB = Path(sys.executable).with_name("sweeplab")  # the console script a user runs

# Every process a benchmark starts: one torch thread, no display, Ray on loopback, this checkout's src.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "PYTHONUNBUFFERED": "1",
}


def child_env(extra_paths: Sequence[Path] = ()) -> dict[str, str]:
    paths = [str(ROOT / "src"), str(BENCH_DIR), *map(str, extra_paths)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, **CHILD_ENV, "PYTHONPATH": os.pathsep.join(paths)}


# --- results -------------------------------------------------------------------------------
@dataclass
class Check:
    """One figure held against its target from issue 7."""

    what: str
    value: float | None
    target: str  # e.g. "<= 1.20"; "" for a figure reported without a target
    unit: str = ""
    missing_is_unmet: bool = False  # no value means the target was not reached (B5)

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        if self.value is None:
            return False if self.missing_is_unmet else None
        op, bound = self.target.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)


@dataclass
class Result:
    benchmark: str  # B1 ... B8
    title: str
    size: str  # smoke | full
    status: str = "ok"  # ok | skipped | error
    reason: str = ""  # why skipped or what failed
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # the raw numbers behind the checks
    seconds: float = 0.0  # the benchmark's own wall time

    def record(self, env: dict[str, Any]) -> dict[str, Any]:
        out = asdict(self)
        out["checks"] = [{"what": c.what, "value": c.value, "target": c.target, "unit": c.unit, "met": c.met}
                         for c in self.checks]
        out["env"] = env
        return out

    def markdown_rows(self) -> list[str]:
        if self.status != "ok":
            return [f"| {self.benchmark} | {self.title} | {self.status}: {self.reason} | | |"]
        rows = []
        for c in self.checks:
            met = {True: "met", False: "**not met**", None: "-"}[c.met]
            value, target = value_text(c.value, c.unit), target_text(c.target)
            rows.append(f"| {self.benchmark} | {c.what} | {value} | {target} | {met} |")
        return rows


def value_text(value: float | None, unit: str) -> str:
    """A check's value as the tables show it: 3 significant digits and its unit."""
    return "n/a" if value is None else f"{value:.3g}{' ' + unit if unit else ''}"


def target_text(target: str) -> str:
    return target.replace("<=", "≤").replace(">=", "≥")


MARKDOWN_HEADER = "| benchmark | figure | value | target | met |\n|---|---|---:|---|---|"


def environment(size: str) -> dict[str, Any]:
    """Machine, versions and date: printed once and carried by every JSON line."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("sweeplab", "torch", "ray", "optuna", "mlflow", "hydra-core"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA install is still a machine to describe
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": platform.node(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "python": platform.python_version(),
        "gpu": gpu,
        "load_1min": load,
        "size": size,
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --- subprocesses ----------------------------------------------------------------------------
@dataclass
class Timed:
    """A finished command: its wall time from start, output and the epoch-time it started at."""

    wall: float
    started_at: float  # time.time() at start, to compare with timestamps the command wrote
    stdout: str
    stderr: str
    returncode: int
    events: dict[str, float] = field(default_factory=dict)  # seconds from start, set by watchers


def run_timed(cmd: Sequence[str], cwd: Path, env: dict | None = None, timeout: float = 3600,
              watch: Callable[[Timed, Callable[[], bool]], None] | None = None) -> Timed:
    """Run ``cmd``; ``watch(timed, running)`` runs in a thread meanwhile (e.g. polling a store)."""
    started_at = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timed = Timed(0.0, started_at, "", "", 0)
    watcher = None
    if watch is not None:
        watcher = threading.Thread(target=watch, args=(timed, lambda: proc.poll() is None), daemon=True)
        watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ran past {timeout:.0f} s") from None
    timed.wall = time.perf_counter() - t0
    timed.stdout, timed.stderr, timed.returncode = out, err, proc.returncode
    if watcher is not None:
        watcher.join(timeout=30)
    return timed


def check_ok(timed: Timed, what: str) -> Timed:
    if timed.returncode != 0:
        tail = "\n".join((timed.stderr or timed.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} exited {timed.returncode}:\n{tail}")
    return timed


def write_sweep(folder: Path, name: str, body: str) -> Path:
    """A sweep file as a user writes one (Hydra's global package, a defaults list, the blocks)."""
    folder = Path(folder) / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text("# @package _global_\n" + body.strip() + "\n")
    return path


def sweeplab_sweep(sweep: str | Path, overrides: Sequence[str], cwd: Path, watch=None, timeout: float = 3600,
                   driver: Path | None = None) -> Timed:
    """`sweeplab sweep SWEEP OVERRIDES --quiet`, timed from the command's start (start-up included).
    With ``driver``: through benchmarks/driver.py, which records the driver's CPU there."""
    if driver is None:
        cmd = [SWEEPLAB, "sweep", str(sweep), *overrides, "--quiet"]
    else:
        cmd = [sys.executable, BENCH_DIR / "driver.py", driver, "sweep", str(sweep), *overrides, "--quiet"]
    return check_ok(run_timed(cmd, cwd, watch=watch, timeout=timeout), f"sweeplab sweep {sweep}")


@dataclass
class StudyTimes:
    """When the trials of a sweep's Optuna study ran, as seconds from the command's start. A trial starts when
    Optuna is asked for it (``first_start``), before a worker holds it; it trains from ``began``: its end less the
    seconds Ray Tune counted it running on its worker (its config, data and epochs: ``time_total_s``), so a
    worker's start and imports before it are not in its span."""

    first_start: float
    last_complete: float
    trials: list[dict[str, Any]]  # number, state, start, began, complete, epochs, value, intermediate

    @property
    def steady(self) -> float:
        return self.last_complete - self.first_start

    @property
    def first_began(self) -> float:
        """When the first trial began on its worker (``first_start`` where Ray's results are not at hand)."""
        return min((t["began"] for t in self.trials if t.get("began") is not None), default=self.first_start)

    @property
    def training(self) -> float:
        """The first trial's beginning on its worker → the last trial's end."""
        return self.last_complete - self.first_began


def ray_seconds(output_dir: Path) -> dict[int, float]:
    """Optuna trial number → the seconds Ray Tune counted that trial running (``time_total_s`` of its last
    result), from the sweep's Ray results under ``output_dir``/ray; the longest of its seeds' trials."""
    seconds: dict[int, float] = {}
    for result in Path(output_dir).glob("ray/*/*/result.json"):
        lines = result.read_text().splitlines()
        params = result.with_name("params.json")
        if lines and params.is_file():
            number = int(json.loads(params.read_text())["optuna_trial"])
            seconds[number] = max(seconds.get(number, 0.0), json.loads(lines[-1])["time_total_s"])
    return seconds


def study_times(output_dir: Path, started_at: float) -> StudyTimes:
    """Read the (only) study of a sweep's own Optuna store in ``output_dir``."""
    import optuna

    from sweeplab.tracking.study_store import default_storage, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = default_storage(output_dir)
    storage = open_storage(where)
    names = optuna.get_all_study_names(storage)
    if len(names) != 1:
        raise RuntimeError(f"expected one study in {where}, found {names}")
    study = optuna.load_study(study_name=names[0], storage=storage)
    rows = []
    ran = ray_seconds(output_dir)
    for t in study.get_trials(deepcopy=False):
        if t.datetime_start is None:
            continue
        complete = t.datetime_complete.timestamp() - started_at if t.datetime_complete else None
        began = complete - ran[t.number] if complete is not None and t.number in ran else None
        rows.append({"number": t.number, "state": t.state.name, "status": t.user_attrs.get("status"),
                     "start": t.datetime_start.timestamp() - started_at, "began": began, "complete": complete,
                     "epochs": t.user_attrs.get("epochs"),
                     "value": t.value if t.values is not None and len(t.values) == 1 else None,
                     "intermediate": dict(sorted(t.intermediate_values.items()))})
    if not rows:
        raise RuntimeError(f"no trial started in {storage}")
    done = [r["complete"] for r in rows if r["complete"] is not None]
    return StudyTimes(min(r["start"] for r in rows), max(done) if done else float("nan"), rows)


def mlflow_first_metric_watcher(db: Path, metric: str, poll_s: float = 0.25):
    """A ``watch`` for run_timed: records ``first_metric`` (seconds from start) when the store first
    holds ``metric`` for any run, read through MlflowClient as a user's tool would.
    The client opens the store only after the sweep created it (its first run exists), so the two
    processes never race to create the tables."""

    def ready() -> bool:
        if not db.exists():
            return False
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                return con.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
        except sqlite3.Error:
            return False

    def watch(timed: Timed, running: Callable[[], bool]) -> None:
        client = None
        while running():
            try:
                if client is None and ready():
                    from mlflow import MlflowClient

                    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
                if client is not None:
                    experiments = [e.experiment_id for e in client.search_experiments()]
                    for run in client.search_runs(experiments, max_results=1000):
                        if metric in run.data.metrics and client.get_metric_history(run.info.run_id, metric):
                            timed.events["first_metric"] = time.time() - timed.started_at
                            return
            except Exception:  # noqa: BLE001 - a locked or half-written store: try again
                pass
            time.sleep(poll_s)

    return watch


def median(values: Sequence[float]) -> float:
    import statistics

    return statistics.median(values)


def print_json(result: Result, env: dict[str, Any]) -> str:
    line = json.dumps(result.record(env), default=str)
    print("BENCH_JSON " + line, flush=True)
    return line


# --- where the CPU went ---------------------------------------------------------------------
def process_role(cmdline: str) -> str:
    """Which part of a sweep (or of the bare loop) a process is, from its command line."""
    # a worker runs default_worker.py (the raylet names it too, in its --python_worker_command=... argument)
    runs_worker = any(arg.endswith("workers/default_worker.py") for arg in cmdline.split()[:3])
    if (cmdline.startswith("ray::") and "Agent" not in cmdline) or runs_worker:
        return "trial workers"  # ray::ImplicitFunc, ray::IDLE: Ray's workers, where the trials run
    if "bare_loop.py" in cmdline:
        return "bare loop"
    if "/ray/" in cmdline or "Agent" in cmdline:
        return "Ray's services"  # gcs_server, raylet, dashboard, log monitor, autoscaler monitor, agents
    if "multiprocessing.spawn" in cmdline or "multiprocessing.resource_tracker" in cmdline:
        return "driver's helpers"  # the tracker's MLflow client process (tracking.client_process), its tracker
    if "sweeplab" in cmdline or "driver.py" in cmdline:
        return "driver"
    return "other"


class CpuAccount:
    """CPU seconds (user + system) of every process this one starts, directly or not, while it is open, by
    ``process_role``, sampled from /proc every ``poll_s`` (a process that ends between two samples loses at most
    its last ``poll_s``); Linux. Processes of others on the machine (a test running beside it) are not counted."""

    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self.timeline: list[tuple[float, dict[str, float]]] = []  # (seconds since open, by_role then), each sample
        self._opened = 0.0  # time.monotonic() as it opened
        self._seen: dict[tuple[str, int], tuple[str, float]] = {}  # (pid, start tick) -> (role, CPU s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")
        self._born_after = 0

    def __enter__(self) -> CpuAccount:
        self._opened = time.monotonic()
        with open("/proc/uptime") as f:
            self._born_after = int(float(f.read().split()[0]) * self._hz) - 1
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._sample()

    def _sample(self) -> None:
        born: dict[str, tuple[list[str], str]] = {}  # pid -> (stat fields after the name, command line)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline") as f:
                    cmdline = f.read().replace("\0", " ").strip()
            except OSError:  # ended meanwhile
                continue
            if int(fields[19]) >= self._born_after and cmdline:
                born[pid] = (fields, cmdline)
        me = str(os.getpid())

        def ours(pid: str) -> bool:
            """A descendant: its parents, all born while open, lead to this process or to one already counted
            (whose own parent may have ended since)."""
            visited = set()
            while pid in born and pid not in visited:
                visited.add(pid)
                fields = born[pid][0]
                if (pid, int(fields[19])) in self._seen or fields[1] == me:
                    return True
                pid = fields[1]
            return False

        for pid, (fields, cmdline) in born.items():
            if ours(pid):
                cpu = (int(fields[11]) + int(fields[12])) / self._hz
                self._seen[(pid, int(fields[19]))] = (process_role(cmdline), cpu)
        self.timeline.append((time.monotonic() - self._opened, self.by_role()))

    def by_role(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for role, cpu in self._seen.values():
            totals[role] = totals.get(role, 0.0) + cpu
        return {role: round(cpu, 1) for role, cpu in sorted(totals.items())}
