"""The MLflow servers people reach: the compose stack's basic-auth app refuses anonymous requests and
takes sweeplab's runs with the credentials from the environment; `sweeplab ui` answers only the host
names it is given. Real `mlflow server` processes on loopback."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
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


def _compose_mlflow(tmp_path, port: int) -> tuple[list[str], dict[str, str]]:
    """docker-compose's mlflow service, command and environment as the file gives them, but for what only a
    container has: loopback and a free port for 0.0.0.0:5000 (its Host added to the allowed ones, as clients of
    the published port send the file's), folders in tmp for its volumes, test values for the secrets compose takes
    from the shell. The store's URI reaches the server from its environment, as in the stack."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["mlflow"]
    words = shlex.split(service["command"])
    moved = {"--host": "127.0.0.1", "--port": str(port), "--artifacts-destination": str(tmp_path / "mlartifacts")}
    assert set(moved) <= set(words) and "--allowed-hosts" in words, words
    command = [moved.get(before, word) for before, word in zip(["", *words[:-1]], words, strict=True)]
    hosts = command.index("--allowed-hosts") + 1
    command[hosts] += f",127.0.0.1:{port}"  # the Host that clients of the moved port send; the file's stay
    ini = (ROOT / "docker" / "mlflow-auth.ini").read_text()
    (tmp_path / "auth.ini").write_text(ini.replace("sqlite:////auth/basic_auth.db",
                                                   f"sqlite:///{tmp_path / 'basic_auth.db'}"))
    given = {"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
             "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "key-for-tests",
             "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    environment = {key: str(value) for key, value in service["environment"].items()}
    from_shell = {key for key, value in environment.items() if "${" in value}
    assert from_shell <= set(given), f"give the test a value for {sorted(from_shell - set(given))}"
    return command, {**os.environ, **environment, **given}


@pytest.fixture
def auth_server(tmp_path):
    """The compose stack's MLflow server (`_compose_mlflow`), its basic-auth users' database in tmp."""
    port = free_port()
    command, env = _compose_mlflow(tmp_path, port)
    assert command[:2] == ["mlflow", "server"], command
    with open(tmp_path / "mlflow.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", *command[1:]], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
        except AssertionError as err:
            pytest.fail(f"{err}: {(tmp_path / 'mlflow.log').read_text()[-2000:]}")
        yield url
        _stop(proc)


def test_the_basic_auth_server_refuses_strangers_and_logs_sweeplabs_runs(auth_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    page = f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(page) == 401
    for host in ("mlflow:5000", "127.0.0.1:5000"):  # the stack's driver, a browser on the published port
        assert _status(page, {"Host": host}) == 401, host  # let in, to log in
    assert _status(page, {"Host": "attacker.example"}) in (400, 403)  # compose's --allowed-hosts
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
    # in the store compose names in the server's environment, not a default one beside it
    stored = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(runs[0].info.run_id)
    assert stored.data.metrics["val/acc"] == runs[0].data.metrics["val/acc"]


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
