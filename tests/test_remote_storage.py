"""cluster.storage_path as a URI: the sweep's Ray experiment on S3 (moto's server, a real S3 API on
loopback), interrupted, resumed from S3, then reported; and the one-line errors of a storage that
cannot be opened."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, require
from sweep_helpers import interrupt_sweep, journal_in, sweep_env

SWEEPLAB = [sys.executable, "-m", "sweeplab.cli"]
BUCKET = "sweeplab-test"


@pytest.mark.parametrize(("configured", "expected"), [
    ("s3://bucket/ray", "s3://bucket/ray/smoke-1"),
    ("s3://bucket/ray/", "s3://bucket/ray/smoke-1"),
    ("gs://bucket/deep/ray", "gs://bucket/deep/ray/smoke-1"),
    ("file:///mnt/shared/ray", "file:///mnt/shared/ray/smoke-1"),
    ("s3://bucket/ray?endpoint_override=127.0.0.1:9000&scheme=http",  # pyarrow's own way to name an endpoint
     "s3://bucket/ray/smoke-1?endpoint_override=127.0.0.1:9000&scheme=http"),
])
def test_a_uri_storage_path_is_joined_not_mangled(tmp_path, configured, expected):
    import pyarrow.fs

    from sweeplab.sweep.storage import experiment_path, storage_root

    assert experiment_path(storage_root(configured, tmp_path), "smoke-1") == expected
    if "endpoint_override" in expected:  # (without one, pyarrow asks AWS for the bucket's region)
        assert pyarrow.fs.FileSystem.from_uri(expected)[1] == "bucket/ray/smoke-1"  # what --resume opens


def test_a_local_storage_path_is_absolute_and_defaults_to_the_output_dir(tmp_path, monkeypatch):
    from sweeplab.sweep.storage import experiment_path, storage_root

    assert experiment_path(storage_root(None, tmp_path), "s") == str(tmp_path / "ray" / "s")
    monkeypatch.chdir(tmp_path)
    assert experiment_path(storage_root("shared/ray/", tmp_path), "s") == str(tmp_path.resolve() / "shared/ray/s")


def test_a_storage_path_pyarrow_cannot_open_is_a_config_error():
    from sweeplab.errors import ConfigError
    from sweeplab.sweep.storage import check_storage

    with pytest.raises(ConfigError, match=r"^cluster.storage_path=nosuch://bucket/ray cannot be opened: "):
        check_storage("nosuch://bucket/ray")


@pytest.mark.slow  # plans the smoke sweep (seconds), though no Ray starts
def test_a_storage_uri_pyarrow_cannot_open_is_one_line_before_ray_starts(run_cli, tmp_path):
    result = run_cli("sweep", "smoke", f"output_dir={tmp_path}", "cluster.storage_path=nosuch://bucket/ray")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeplab sweep: error: cluster.storage_path=nosuch://bucket/ray")
    assert "Traceback" not in result.stderr


# -- a real S3 API --------------------------------------------------------------------------------------------
@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on loopback (tests/s3_server.py) with one bucket; this process (and so the Ray it
    starts, and the sweeps it runs as subprocesses) reaches it through AWS_ENDPOINT_URL with dummy credentials."""
    import importlib.util
    import time
    import urllib.request

    require(importlib.util.find_spec("moto.server") is not None, "moto's server is not installed "
            "(pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto.log").open("w")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("s3_server.py")), str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "moto.log").read_text()
                time.sleep(0.5)
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_missing_bucket_is_named_before_any_trial_starts(s3, run_cli, tmp_path):
    result = run_cli("sweep", "smoke", f"output_dir={tmp_path}", "cluster.storage_path=s3://no-such-bucket/ray")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sweeplab sweep: error: cluster.storage_path=s3://no-such-bucket/ray cannot be")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_sweep_on_s3_is_interrupted_resumes_from_s3_and_reports(s3, tmp_path):
    import optuna
    from mlflow import MlflowClient
    from ray import tune

    storage = f"s3://{BUCKET}/ray"
    env = sweep_env()
    # the tracker's client in its own process: a trial's files come from S3 there (sweeplab.sweep.tracker_calls)
    overrides = [f"output_dir={tmp_path}", f"cluster.storage_path={storage}", "sweep.num_trials=2",
                 "sweep.max_concurrent=1", "train.epochs=2", "sweep.scheduler.kind=none", "data.subset=300",
                 "tracking.client_process=true"]
    output, status = interrupt_sweep(overrides, "trial_001_seed0 epoch  1/2", timeout=180)  # the second trial half-way
    assert status == 130, output[-3000:]
    sweep_id = next(line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("sweep smoke-"))
    experiment = f"{storage}/{sweep_id}"

    study_storage = journal_in(tmp_path)
    assert optuna.load_study(study_name=sweep_id, storage=study_storage).user_attrs["ray_path"] == experiment
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"ray/{sweep_id}/")["Contents"]]
    assert any(k.startswith(f"ray/{sweep_id}/experiment_state") for k in keys), keys
    assert not (tmp_path / "ray").exists()  # nothing of the experiment went to the local default
    assert tune.Tuner.can_restore(experiment)

    second = subprocess.run([*SWEEPLAB, "sweep", sweep_id, "--resume", f"output_dir={tmp_path}"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {experiment}" in second.stdout
    trials = optuna.load_study(study_name=sweep_id, storage=study_storage).get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"ray/{sweep_id}/")["Contents"]]
    for number in range(2):  # every trial's last checkpoint is on S3
        assert any(k.startswith(f"ray/{sweep_id}/trial_{number:03d}_seed0/checkpoint_") and k.endswith("state.pt")
                   for k in keys), (number, keys)

    report = subprocess.run([*SWEEPLAB, "report", sweep_id, f"output_dir={tmp_path}"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert (tmp_path / "reports" / sweep_id / "report.html").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("smoke").experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert parent.data.params["ray_path"] == experiment  # where Tuner.restore finds it, from MLflow too
    children = client.search_runs([experiment_id], "tags.`sweeplab.kind` = 'trial'")
    assert len(children) == 2
    for run in children:  # each trial's files, read from its last checkpoint on S3
        assert {"weights.pt", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}, run.info
