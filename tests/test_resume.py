"""Ctrl+C or SIGTERM in the middle of a sweep, then the printed `sweeplab sweep <id> --resume ...`: the Optuna
study, the Ray experiment and the MLflow runs all continue; nothing runs twice and nothing is logged twice,
also when a trial's checkpoint was damaged in between."""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_helpers import cli, interrupt_sweep, journal_in, sweep_env

from sweeplab.program import program

pytestmark = pytest.mark.slow

SWEEPLAB = [sys.executable, "-m", "sweeplab.cli"]
ENV = sweep_env()
TINY = ["sweep.max_concurrent=1", "train.epochs=3", "sweep.scheduler.kind=none", "data.subset=300"]


def _interrupt(overrides: list[str], at_line: str, sig: signal.Signals,
               cwd: Path | None = None) -> tuple[str, int, str, list[str]]:
    """A real `sweeplab sweep smoke` (in ``cwd``) sent ``sig`` by PID once it prints ``at_line``: its output, exit
    status, sweep id and the resume command it printed (as argv for this interpreter)."""
    output, status = interrupt_sweep(overrides, at_line, sig, cwd=cwd)
    lines = output.splitlines()
    hint = [i for i, line in enumerate(lines) if "continue it with:" in line]
    assert hint, output[-3000:]
    printed, prog = shlex.split(lines[hint[0] + 1]), shlex.split(program())
    assert printed[:len(prog)] == prog, output[-3000:]  # sweeplab as this installation is called from any folder
    command = printed[len(prog):]
    sweep_id = command[1]
    assert command[:3] == ["sweep", sweep_id, "--resume"], output[-3000:]
    return output, status, sweep_id, [*SWEEPLAB, *command]


def _runs(out: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert len(parents) == 1
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return client, parents[0], children


def _assert_complete(out: Path, sweep_id: str, num_trials: int, epochs: int = 3) -> None:
    """Every trial COMPLETE in Optuna and FINISHED in MLflow, every epoch logged once and equal to what Optuna
    holds for that epoch (a trial that restarted left no stale step behind)."""
    import optuna

    study = optuna.load_study(study_name=sweep_id, storage=journal_in(out))
    trials = study.get_trials()
    assert len(trials) == num_trials and all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == num_trials  # the resumed sampler drew new points
    client, parent, children = _runs(out)
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == [f"trial_00{i}_seed0" for i in range(num_trials)]
    for run in children:
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in history] == list(range(1, epochs + 1))
        optuna_curve = study.trials[int(run.data.tags["sweeplab.optuna_trial"])].intermediate_values
        assert {m.step: m.value for m in history} == pytest.approx(optuna_curve)
        assert run.info.status == "FINISHED"


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    """Started with a relative output_dir; the printed command resumes it from another folder."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    output, code, sweep_id, resume = _interrupt(["output_dir=out", "sweep.num_trials=3", *TINY],
                                                "trial_001_seed0 epoch  1/3", signal.SIGINT,  # the 2nd trial half-way
                                                cwd=tmp_path)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output
    assert "Tuner.restore" not in output  # Ray's hint: sweeplab prints its own resume command
    assert "Press CTRL+C" not in output and "sweeplab sweep: stopping: saving the sweep's state" in output
    _, parent, children = _runs(out)
    assert parent.info.status == "KILLED"  # not FINISHED: the sweep did not end
    assert {r.info.run_name: r.info.status for r in children}["trial_001_seed0"] == "KILLED"
    # status tells the interrupted sweep from a running one, with the command that continues it
    listed = cli("status", f"output_dir={out}", cwd=elsewhere)
    assert "(interrupted)" in listed.stdout and f"continue {sweep_id} with: " in listed.stdout, listed.stdout
    said = shlex.split(listed.stdout.split(f"continue {sweep_id} with: ")[1].splitlines()[0])
    assert said[len(shlex.split(program())):] == resume[len(SWEEPLAB):]  # the command the sweep printed

    second = subprocess.run(resume, capture_output=True, text=True, env=ENV, timeout=600, cwd=elsewhere)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = cli(*resume[len(SWEEPLAB):], cwd=elsewhere)  # an ended sweep: nothing to resume, nothing changed
    assert again.returncode == 2 and f"sweep {sweep_id} has ended (3 completed): there is nothing to resume" \
        in again.stderr, again.stderr
    assert "Failed to fetch metrics" not in second.stdout + second.stderr  # Tune's, of trials yet to report
    assert list(elsewhere.iterdir()) == []
    _assert_complete(out, sweep_id, 3)
    _, _, children = _runs(out)
    interrupted = next(r for r in children if r.info.run_name == "trial_001_seed0")
    assert interrupted.data.tags["sweeplab.restarts"] == "1"


def test_sigterm_stops_a_sweep_like_ctrl_c_and_it_resumes_past_a_truncated_checkpoint(tmp_path):
    """SIGTERM (docker stop, a batch scheduler) ends the sweep as Ctrl-C does; then every checkpoint of every
    trial is truncated, so the interrupted trial has no intact one to fall back to and restarts from epoch 1."""
    overrides = [f"output_dir={tmp_path}", "sweep.num_trials=2", "sweep.checkpoint_interval_s=0", *TINY]
    output, code, sweep_id, resume = _interrupt(overrides, "trial_000_seed0 epoch  2/3", signal.SIGTERM)
    assert code == 143, output[-3000:]
    assert "Traceback" not in output and "SIGTERM received" not in output  # no Python or C++ stack dump
    _, parent, children = _runs(tmp_path)
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in children] == ["KILLED"]
    states = sorted((tmp_path / "ray" / sweep_id).glob("trial_*/checkpoint_*/state.pt"))
    assert states, "the interrupted trial saved a checkpoint"
    for state in states:
        state.write_bytes(state.read_bytes()[:100])

    second = subprocess.run(resume, capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Traceback" not in second.stdout + second.stderr
    warnings = [line for line in second.stdout.splitlines() if "warning: checkpoint" in line]
    assert warnings and all("state.pt is unreadable" in w and "restarting the trial from epoch 1" in w
                            for w in warnings), second.stdout[-3000:]
    _assert_complete(tmp_path, sweep_id, 2)


def test_resuming_a_sweep_whose_trial_crashed_leaves_the_crash_as_it_was(tmp_path):
    """A trial that crashed past its retries is a failed trial in Optuna, which cannot take that back: --resume does
    not run it again, so the study, its MLflow run and the summary still agree on it."""
    import optuna

    overrides = [f"output_dir={tmp_path}", "sweep.num_trials=1", "sweep.max_failures=0", *TINY]
    first = subprocess.run([*SWEEPLAB, "sweep", "smoke", "--quiet", *overrides], capture_output=True, text=True,
                           env={**ENV, "SWEEPLAB_FAULT_AFTER_EPOCH": "1"}, timeout=600)
    assert first.returncode == 1 and "1 error" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Trials did not complete" not in first.stdout + first.stderr  # the summary says which, and why
    _, parent, (child,) = _runs(tmp_path)
    assert child.data.tags["sweeplab.restarts"] == "0"  # it crashed once, and was not restarted
    assert parent.info.status == "FAILED"  # no configuration completed: the sweep failed, as its exit status says
    (sweep_id,) = [p.name for p in (tmp_path / "ray").iterdir()]
    # Optuna (and so `sweeplab status`) has the crash's own line, as MLflow has, not "see its error.txt"
    (trial,) = optuna.load_study(study_name=sweep_id, storage=journal_in(tmp_path)).trials
    assert "injected fault after epoch" in trial.user_attrs["reason"]
    assert trial.user_attrs["reason"] == child.data.tags["sweeplab.failure_reason"]
    status = subprocess.run([*SWEEPLAB, "status", sweep_id, f"output_dir={tmp_path}"], capture_output=True,
                            text=True, env=ENV, timeout=600)
    assert "injected fault after epoch" in status.stdout, status.stdout[-3000:] + status.stderr[-3000:]

    second = subprocess.run([*SWEEPLAB, "sweep", sweep_id, "--resume", f"output_dir={tmp_path}"], capture_output=True,
                            text=True, env=ENV, timeout=600)  # no fault this time: a rerun would complete
    assert second.returncode == 2, second.stdout[-3000:] + second.stderr[-3000:]  # every configuration has ended
    assert f"sweep {sweep_id} has ended (1 error): there is nothing to resume" in second.stderr, second.stderr
    assert "completed" not in second.stdout and "Traceback" not in second.stdout + second.stderr
    (trial,) = optuna.load_study(study_name=sweep_id, storage=journal_in(tmp_path)).trials
    assert trial.state.name == "FAIL" and trial.user_attrs["status"] == "error"
    client, parent, (child,) = _runs(tmp_path)
    assert parent.info.status == "FAILED"
    assert child.info.status == "FAILED" and child.data.tags["sweeplab.status"] == "error"
    assert child.data.tags["sweeplab.restarts"] == "0"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val/acc")] == [1]


def test_the_resume_command_of_a_sweep_whose_file_sets_its_folder_names_that_folder(tmp_path, monkeypatch):
    """A sweep file's own output_dir: the printed --resume (whose output_dir replaces the recorded one) names it, not
    the default ./outputs, where no sweep of that id is."""
    from types import SimpleNamespace

    from sweep_helpers import write_sweep

    from sweeplab.commands import _continue_with, _ran_with

    path = write_sweep(tmp_path, "mine", "output_dir: runs/mine\nsweep:\n  space:\n    optimizer.lr: {type: float, "
                                         "low: 0.01, high: 0.1}")
    monkeypatch.chdir(tmp_path)
    outcome = SimpleNamespace(record={"sweep_file": str(path), "sweep_text": path.read_text()})
    said = _continue_with("mine-1", [], _ran_with(outcome, []))
    assert f"output_dir={tmp_path / 'runs' / 'mine'}" in said and "outputs" not in said, said


def test_a_driver_stopped_while_it_records_its_sweep_leaves_no_half_record_for_the_commands(tmp_path):
    """A sweep's record is its study's attributes, written one by one: stopped after any of them, status, best and
    --resume read the storage without a traceback (a record with its id but not its objectives was a KeyError)."""
    import optuna

    from sweeplab.sweep.launch import sweep_record
    from sweeplab.sweep.plan import plan_sweep
    from sweeplab.tracking.study_store import open_storage

    out = tmp_path / "out"
    out.mkdir()
    plan = plan_sweep("smoke", [f"output_dir={out}"])
    record = list(sweep_record(plan, "smoke-20261203-000000", str(tmp_path / "ray")).items())
    for written in range(len(record)):
        name = f"smoke-20261203-00000{written}"  # a study of its own for each point the driver could stop at
        study = optuna.create_study(study_name=name, storage=open_storage(str(out / "optuna.journal")))
        for key, value in record[:written]:
            study.set_user_attr(key, value)
        for args in (["status"], ["status", "smoke"], ["best", "smoke"], ["sweep", "smoke", "--resume"]):
            done = cli(*args, f"output_dir={out}", cwd=tmp_path)
            assert done.returncode in (0, 2) and "Traceback" not in done.stderr, (written, args, done.stderr)


def test_a_sweep_s_driver_counts_as_running_while_a_sweeplab_process_of_its_number_lives_here():
    """What status and --resume read: the host and process the sweep recorded (a sweep resumed records its own)."""
    import socket

    from sweeplab.sweep.outcome import SweepOutcome

    def outcome(pid: int, host: str = socket.gethostname()) -> SweepOutcome:
        return SweepOutcome({"sweep_id": "s", "objectives": [["val/acc", "max"]], "num_configs": 1, "pid": pid,
                             "host": host}, [])

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sweeplab"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a number reused by another
    try:
        assert outcome(live.pid).driver_alive() is True and not outcome(live.pid).interrupted
        assert outcome(other.pid).driver_alive() is False and outcome(other.pid).interrupted
        assert outcome(live.pid, "elsewhere").driver_alive() is None  # not this host's to tell
        assert not outcome(live.pid, "elsewhere").interrupted
    finally:
        live.kill(), other.kill()
    live.wait()
    assert outcome(live.pid).driver_alive() is False and outcome(live.pid).interrupted


def test_a_sweep_file_moved_since_it_ran_still_finds_its_sweeps_by_the_path_it_ran_from(tmp_path):
    """`status ./mine.yaml` or `sweep ./mine.yaml --resume` after the file moved: the study recorded the path."""
    import optuna

    from sweeplab.errors import UserError
    from sweeplab.sweep.results import find_sweep
    from sweeplab.tracking.study_store import open_storage

    storage = str(tmp_path / "optuna.journal")
    gone = tmp_path / "mine.yaml"
    study = optuna.create_study(study_name="mine-1", storage=open_storage(storage))
    for key, value in {"sweep_id": "mine-1", "name": "mine", "sweep_file": str(gone), "started": "1"}.items():
        study.set_user_attr(key, value)
    assert find_sweep(storage, str(gone))["sweep_id"] == "mine-1"  # before: "sweep file ... does not exist"
    with pytest.raises(UserError, match=r"sweep file '.*other.yaml' does not exist, and no sweep in .* ran from .*: "
                                        r"give the sweep's name or id \(mine\)"):
        find_sweep(storage, str(tmp_path / "other.yaml"))
