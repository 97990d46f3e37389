"""Retries from checkpoints, GPU shares and many concurrent trials on the local stores,
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


# --- a cluster.address where no Ray head answers: one line in seconds, not minutes of retries ----------------
@pytest.fixture
def plain_tcp_listener():
    """A port that accepts TCP connections and never says a word: not a Ray head."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in accepted:
        connection.close()


@pytest.mark.parametrize("kind", ["closed port", "not ray"])
def test_a_dead_cluster_address_fails_fast_with_one_line(kind, tmp_path, request):
    import time

    from servers import free_port
    from sweep_helpers import cli

    address = request.getfixturevalue("plain_tcp_listener") if kind == "not ray" else f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = cli("sweep", "smoke", f"cluster.address={address}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    elapsed = time.monotonic() - started

    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"sweeplab sweep: error: cluster.address={address}: ")
    assert "ray start --head" in result.stderr and "leave cluster.address empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert elapsed < 60  # planning included; minutes before
    assert not (tmp_path / "out").exists()  # no store was created for a sweep that cannot run


# --- two sweeps launched together in one fresh folder ---------------------------------------------------------
def test_sweep_ids_claimed_in_the_same_second_are_distinct(tmp_path):
    from sweeplab.sweep.sweep_id import claim_sweep_id

    storage = str(tmp_path / "optuna.journal")
    ids = [claim_sweep_id(storage, "smoke", [("val/acc", "max")]) for _ in range(3)]
    assert len(set(ids)) == 3 and all(i.startswith("smoke-") for i in ids)


def test_two_sweeps_started_together_in_a_fresh_folder_both_complete(tmp_path):
    """Both join one loopback Ray head (two local Rays starting at once on 2 busy cores outrun Ray's fixed 30 s
    raylet start-up wait); what they race on is the folder: the sweep id and the first use of both stores."""
    import subprocess
    import sys

    import optuna
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster
    from sweep_helpers import journal_in

    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    command = [sys.executable, "-m", "sweeplab.cli", "sweep", "smoke", f"output_dir={tmp_path / 'out'}", *TINY,
               "sweep.num_trials=1", "train.epochs=1", "sweep.max_concurrent=1", f"cluster.address={head.address}",
               "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                  for _ in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in sweeps]
    finally:
        head.shutdown()
    for p, output in zip(sweeps, outputs, strict=True):
        assert p.returncode == 0, output[-3000:]

    studies = optuna.get_all_study_summaries(journal_in(tmp_path / "out"))
    assert len(studies) == 2 and all(s.n_trials == 1 for s in studies)
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    parents = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert sorted(r.data.tags["sweeplab.sweep_id"] for r in parents) == sorted(s.study_name for s in studies)
    assert all(r.info.status == "FINISHED" for r in parents)


def test_a_ray_head_on_an_ipv6_address_is_reached_through_its_brackets():
    """[::1]:PORT: gRPC needs the brackets the address check had stripped, and took an answering head for "not a
    Ray head"."""
    from concurrent import futures

    import grpc

    from sweeplab.sweep.address import check_ray_address

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("[::1]:0")
    server.start()
    try:
        check_ray_address(f"[::1]:{port}", "cluster.address")  # answers: no error
    finally:
        server.stop(0)
