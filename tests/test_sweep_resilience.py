"""Retries from checkpoints, GPU shares and many concurrent trials on the local SQLite store,
with a real local Ray, real Optuna and a real MLflow store."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

pytestmark = pytest.mark.slow

TINY = ["data.subset=300", "sweep.scheduler.kind=none"]


@pytest.fixture(autouse=True)
def fresh_ray():
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def _children(out):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert len(parents) == 1
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return client, children


def test_a_crashed_trial_is_retried_from_its_checkpoint_into_the_same_child_run(tmp_path, monkeypatch):
    from sweeplab.sweep.launch import launch_sweep

    monkeypatch.setenv("SWEEPLAB_FAULT_AFTER_EPOCH", "1")  # every trial crashes once after epoch 1
    overrides = [f"output_dir={tmp_path}", *TINY, "sweep.num_trials=2", "train.epochs=3", "sweep.max_failures=2",
                 "sweep.checkpoint_interval_s=0"]  # a checkpoint every epoch: the retry continues from epoch 1
    outcome = launch_sweep("smoke", overrides, quiet=True)

    assert outcome.counts() == {"completed": 2}
    assert len(list((tmp_path / "faults").iterdir())) == 2  # both trials really crashed once
    client, children = _children(tmp_path)
    assert len(children) == 2  # the retry went on in the trial's own run
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert steps == [1, 2, 3]  # epoch 1 came from before the crash, 2 and 3 after: none twice
        assert run.data.tags["sweeplab.restarts"] == "1"
        assert run.data.tags["sweeplab.status"] == "completed"


def test_gpu_shares_pack_eight_concurrent_trials_without_losing_metrics(tmp_path):
    """Two logical GPUs (Ray's own bookkeeping; no CUDA needed) shared by trials asking for 0.25 each,
    a quarter CPU each: eight trials at once, all logging into the local SQLite store."""
    from sweeplab.sweep.launch import launch_sweep

    overrides = [f"output_dir={tmp_path}", *TINY, "sweep.num_trials=8", "sweep.max_concurrent=8", "train.epochs=3",
                 "sweep.resources.cpu=0.25", "sweep.resources.gpu=0.25", "cluster.num_gpus=2", "cluster.num_cpus=2"]
    outcome = launch_sweep("smoke", overrides, quiet=True)

    assert outcome.counts() == {"completed": 8}
    client, children = _children(tmp_path)
    assert len(children) == 8
    gpus = set()
    for run in children:
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_seconds", "samples_per_second"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
        placement = run.data.tags["sweeplab.placement"]
        gpus.add(placement.split("GPUs [")[1].rstrip("]"))
    assert gpus <= {"0", "1"} and gpus, gpus  # Ray handed each trial one of the two GPUs
