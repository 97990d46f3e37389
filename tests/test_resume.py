"""Ctrl+C in the middle of a sweep, then `sweeplab sweep <id> --resume`: the Optuna study, the Ray
experiment and the MLflow runs all continue; nothing runs twice and nothing is logged twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SWEEPLAB = [sys.executable, "-m", "sweeplab.cli"]


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    import optuna
    from mlflow import MlflowClient

    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    overrides = [f"output_dir={tmp_path}", "sweep.num_trials=4", "sweep.max_concurrent=1", "train.epochs=3",
                 "sweep.scheduler.kind=none", "data.subset=300"]
    first = subprocess.Popen([*SWEEPLAB, "sweep", "smoke", *overrides], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if "trial_001_seed0 epoch  1/3" in line:  # the second trial is half-way
            first.send_signal(signal.SIGINT)
            break
    output = "".join(seen) + first.communicate(timeout=180)[0]
    assert first.returncode == 130, output[-3000:]
    assert "--resume" in output
    sweep_id = next(line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("sweep smoke-"))

    second = subprocess.run([*SWEEPLAB, "sweep", sweep_id, "--resume", f"output_dir={tmp_path}"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # the resumed sampler drew new points

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(r.info.run_name for r in children) == [f"trial_00{i}_seed0" for i in range(4)]
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3]
        assert run.info.status == "FINISHED"
    interrupted = next(r for r in children if r.info.run_name == "trial_001_seed0")
    assert interrupted.data.tags["sweeplab.restarts"] == "1"
