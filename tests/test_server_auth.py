"""The MLflow servers people reach: the compose stack's basic-auth app refuses anonymous requests and
takes sweeplab's runs with the credentials from the environment; `sweeplab ui` answers only the host
names it is given. Real `mlflow server` processes on loopback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, wait_healthy
from sweep_helpers import SWEEPLAB, cli

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ADMIN, PASSWORD = "admin-for-tests", "a-long-password-for-tests"


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10).status
    except urllib.error.HTTPError as err:
        return err.code


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers
    proc.wait(timeout=30)


@pytest.fixture
def auth_server(tmp_path):
    """`mlflow server --app-name basic-auth` as the compose stack runs it: its ini (docker/mlflow-auth.ini)
    with the users' database moved into tmp, the admin from the environment."""
    ini = (ROOT / "docker" / "mlflow-auth.ini").read_text()
    (tmp_path / "auth.ini").write_text(ini.replace("sqlite:////auth/basic_auth.db",
                                                   f"sqlite:///{tmp_path / 'basic_auth.db'}"))
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
           "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "key-for-tests",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(tmp_path / "mlflow.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--artifacts-destination", str(tmp_path / "mlartifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
        except AssertionError as err:
            pytest.fail(f"{err}: {(tmp_path / 'mlflow.log').read_text()[-2000:]}")
        yield url
        _stop(proc)


def test_the_basic_auth_server_refuses_strangers_and_logs_sweeplabs_runs(auth_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    assert _status(f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    train = ["train", "model=mlp", "data=digits", "train.epochs=1", "train.num_threads=1", "tracking=server",
             f"tracking.uri={auth_server}", f"output_dir={tmp_path / 'out'}"]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    anonymous = cli(*train, cwd=tmp_path)
    assert anonymous.returncode == 2, anonymous.stderr
    assert anonymous.stderr.startswith("sweeplab train: error: cannot open the MLflow store"), anonymous.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    done = cli(*train, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = MlflowClient(auth_server).search_runs([MlflowClient(auth_server).get_experiment_by_name("train")
                                                 .experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] and "val/acc" in runs[0].data.metrics


def test_ui_answers_only_the_allowed_hosts(tmp_path):
    from sweeplab.tracking.store import client_for

    client_for(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")  # a store to serve
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(tmp_path / "ui.log", "w") as log:
        proc = subprocess.Popen([str(SWEEPLAB), "ui", f"output_dir={tmp_path / 'out'}", "--port", str(port),
                                 "--allowed-hosts", f"sweeps.example,127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            page = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
            assert _status(page) == 200
            assert _status(page, {"Host": "sweeps.example"}) == 200
            assert _status(page, {"Host": "attacker.example"}) in (400, 403)
        finally:
            _stop(proc)


def test_ui_warns_when_it_would_serve_beyond_loopback_without_allowed_hosts(tmp_path):
    done = cli("ui", f"output_dir={tmp_path}", "--host", "192.0.2.1", "--port", str(free_port()), cwd=tmp_path)
    warning, error = done.stderr.strip().splitlines()
    assert "warning" in warning and "--allowed-hosts" in warning
    assert done.returncode == 2 and error.startswith("sweeplab ui: error: cannot listen on 192.0.2.1")
