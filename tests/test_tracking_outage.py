"""A tracking server that goes down mid-sweep for longer than the MLflow client's retry budget: the trials train
on, every call waits in the sweep's journal on disk, and reaches the server once it is back, during the sweep or,
when it is still down at the end, through the `sweeplab sync` command the sweep prints. Real `mlflow server`
processes killed by PID and started again on the same port and store; a real sweep in its own process."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import MlflowServer

from sweeplab.program import program

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EPOCHS = 3
TRIALS = 2
# the client gives up on a call within about a second: far less than the outages below
BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(f"sqlite:///{folder / 'server.db'}", folder / "mlartifacts", folder / "mlflow.log")
    yield server
    server.stop()


@pytest.fixture
def server(shared_server):
    """The module's server, up (a test kills it and starts it again on the same port and store)."""
    if shared_server.proc is None:
        shared_server.start()
    return shared_server


def _start_sweep(server: MlflowServer, out: Path, experiment: str, *extra: str) -> subprocess.Popen:
    overrides = [f"output_dir={out}", "tracking=server", f"tracking.uri={server.url}",
                 f"tracking.experiment={experiment}", "data.subset=300",
                 f"train.epochs={EPOCHS}", f"sweep.num_trials={TRIALS}", "sweep.scheduler.kind=none", *extra]
    env = {**os.environ, **BUDGET, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "sweep", "smoke", "--quiet", *overrides],
                            cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_after_first_epoch(server: MlflowServer, sweep: subprocess.Popen, experiment_name: str) -> None:
    """SIGKILL the server (and its workers) as soon as a trial's first epoch reached it."""
    from mlflow import MlflowClient

    client = MlflowClient(server.url)
    deadline = time.time() + 240
    while time.time() < deadline and sweep.poll() is None:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment and client.search_runs([experiment.experiment_id], "metrics.`val/loss` > -1"):
            server.stop(signal.SIGKILL)
            return
        time.sleep(0.2)
    pytest.fail(f"no epoch reached the server (sweep exit {sweep.poll()})")


def _pending(out: Path) -> int:
    from sweeplab.tracking.journal import Journal

    return sum(len(Journal(path).pending()) for path in (out / "tracking").glob("*.jsonl"))


def _assert_every_epoch_once(server: MlflowServer, experiment_name: str, sweep_id: str) -> None:
    from mlflow import MlflowClient

    from sweeplab.metrics import METRIC_KEYS

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(experiment_name)
    parents = client.search_runs([experiment.experiment_id], f"tags.`sweeplab.sweep_id` = '{sweep_id}' "
                                 "and tags.`sweeplab.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "report" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert len(children) == TRIALS
    logged = {}
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["sweeplab.status"] == "completed"
        assert run.data.params["train.epochs"] == str(EPOCHS) and "optimizer.lr" in run.data.params  # its config
        for key in METRIC_KEYS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (run.info.run_name, key, steps)
        logged[run.info.run_id] = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "weights.pt" in logged[run.info.run_id]
    # the end of the sweep: the best trial's figures and its MLflow Model
    assert sum({"learning_curves.png", "model"} <= files for files in logged.values()) == 1, logged


def _sweep_id(stdout: str) -> str:
    return next(line.split(":")[1].strip() for line in stdout.splitlines() if line.startswith("sweeplab sweep: smoke-"))


def test_a_server_back_before_the_sweep_ends_gets_every_call_the_sweep_journaled(server, tmp_path):
    """With the MLflow client in a process of its own (the other outage test keeps it in the driver)."""
    import psutil

    out = tmp_path / "outputs"
    sweep = _start_sweep(server, out, "outage-back-in-time", "tracking.flush_wait_s=300",
                         "tracking.client_process=true")
    _kill_after_first_epoch(server, sweep, "outage-back-in-time")
    down = time.time()
    # the calls made while it is down wait on disk: the trials' own, or on a fast machine only the end's (a trial's
    # end and the conclusion: once on 2026-12-03 the trials' epochs had all reached the server before it was killed)
    while _pending(out) < 1 or time.time() - down < 10:
        assert time.time() - down < 240, "no tracking call was journaled while the server was down"
        time.sleep(0.5)
    children = [" ".join(c.cmdline()) for c in psutil.Process(sweep.pid).children()]
    assert any("multiprocessing.spawn" in c for c in children), children  # the client's process
    server.start()
    stdout, stderr = sweep.communicate(timeout=300)

    assert sweep.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    assert "not sent" not in stderr and "MLflow call(s) failed" not in stderr, stderr[-3000:]
    assert not list((out / "tracking").glob("*.jsonl"))  # everything went through: nothing left to sync
    _assert_every_epoch_once(server, "outage-back-in-time", _sweep_id(stdout))


def test_a_server_down_past_the_sweep_end_gets_every_call_from_sweeplab_sync(server, tmp_path):
    out = tmp_path / "outputs"
    sweep = _start_sweep(server, out, "outage-past-the-end", "tracking.flush_wait_s=2")
    _kill_after_first_epoch(server, sweep, "outage-past-the-end")
    stdout, stderr = sweep.communicate(timeout=300)

    assert sweep.returncode == 0, stderr[-3000:]  # the sweep completed: its results are in Optuna
    assert "Traceback" not in stdout + stderr
    notes = [line for line in stderr.splitlines() if "not sent" in line]
    assert len(notes) == 1 and _pending(out) > 0, stderr[-3000:]
    command, prog = shlex.split(notes[0].split("send them with: ")[1]), shlex.split(program())
    assert command[:len(prog) + 2] == [*prog, "sync", _sweep_id(stdout)]

    server.start()
    sync = [sys.executable, "-m", "sweeplab.cli", *command[len(prog):]]
    # the best trial's run is among the calls the outage kept: registering it says to send them first
    register = [sys.executable, "-m", "sweeplab.cli", "best", *command[len(prog) + 1:], "--register", "outage-best"]
    refused = subprocess.run(register, cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "calls to it are still waiting: send them with '" in refused.stderr \
        and f"sync {_sweep_id(stdout)}" in refused.stderr and refused.stdout == "", refused.stdout + refused.stderr
    done = subprocess.run(sync, cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "sent" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    _assert_every_epoch_once(server, "outage-past-the-end", _sweep_id(stdout))

    again = subprocess.run(sync, cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "no tracking call is waiting" in again.stdout, again.stdout + again.stderr
    _assert_every_epoch_once(server, "outage-past-the-end", _sweep_id(stdout))


def test_a_sweep_stopped_while_the_server_is_down_journals_its_started_runs_as_killed(server, tmp_path, monkeypatch):
    """Stopped (Ctrl-C, SIGTERM) while the server is down, before it took any trial's run: the end is journaled as
    an interruption, the KILL of every started trial's run, for `sweeplab sync` to send; not as a finished sweep,
    which would draw a report and leave the trials' runs RUNNING."""
    from ray.tune.experiment import Trial

    from sweeplab.sweep.launch import sync_command, trial_spec
    from sweeplab.sweep.plan import plan_sweep
    from sweeplab.sweep.tracker import MlflowSweepTracker
    from sweeplab.tracking.journal import Journal

    for key, value in BUDGET.items():
        monkeypatch.setenv(key, value)
    plan = plan_sweep("smoke", [f"output_dir={tmp_path}", "tracking=server", f"tracking.uri={server.url}",
                                "tracking.experiment=outage-stopped", "tracking.flush_wait_s=1",
                                f"sweep.num_trials={TRIALS}", f"sweep.max_concurrent={TRIALS}"])
    sync = sync_command("smoke-stopped", [], plan.cfg)
    tracker = MlflowSweepTracker(plan.cfg, plan, "smoke-stopped", trial_spec(plan), sync)
    tracker.setup()  # the sweep's parent run, while the server answers
    server.stop(signal.SIGKILL)
    trials = [Trial("t", config={"optuna_trial": n, "seed": 0}, stub=True) for n in range(TRIALS)]
    for trial in trials:
        tracker.on_trial_start(0, trials, trial)
    tracker.on_experiment_end(trials)
    tracker.finish()

    pending = Journal(tracker.journal_file).pending()
    assert [entry.op for entry in pending] == ["create_child"] * TRIALS + ["kill"]
    assert pending[-1].args["names"] == sorted(str(t) for t in trials)
