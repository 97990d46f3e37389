"""The sweep tracker's MlflowClient in a process of its own: calls and their errors come back as they would
in-process, a store that cannot be opened is named at ready(), a killed process is started again, and Ctrl-C
is left to the driver."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from sweeplab.errors import UserError
from sweeplab.tracking.client_process import ClientProcess, with_client
from sweeplab.tracking.store import client_for


@pytest.fixture
def client(tmp_path):
    process = ClientProcess(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield process
    process.close()


def test_calls_run_in_the_client_process_and_return_what_mlflow_returns(client, tmp_path):
    client.ready()
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment, run_name="r", tags={"k": "v"})
    client.log_batch(run.info.run_id, params=[Param("lr", "0.1")])
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.1"} and got.data.tags["k"] == "v" and got.info.run_name == "r"
    assert client._process.pid != os.getpid() and client._process.is_alive()
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST|not found|No Run"):
        client.get_run("0" * 32)


def test_closed_it_ends_at_once_with_its_store_whole(tmp_path):
    """Closed, the process ends without the interpreter's teardown (``quick_exit``), but closes its SQLite
    connections first: the store's write-ahead log is folded back into mlflow.db, which alone then holds every run."""
    import sqlite3

    process = ClientProcess(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = process.create_run(process.create_experiment("e")).info.run_id
    assert (tmp_path / "mlflow.db-wal").stat().st_size > 0  # written through the log while the process runs
    process.close()
    assert process._process.exitcode == 0
    assert not (tmp_path / "mlflow.db-wal").exists() or (tmp_path / "mlflow.db-wal").stat().st_size == 0
    with sqlite3.connect(f"file:{tmp_path / 'mlflow.db'}?mode=ro", uri=True) as db:  # read-only: no log of its own
        assert db.execute("select count(*) from runs where run_uuid = ?", (run,)).fetchone() == (1,)


def pid_and_experiments(client, *, prefix: str) -> tuple[int, list[str]]:
    return os.getpid(), [e.name for e in client.search_experiments() if e.name.startswith(prefix)]


def refuse(client, what: str) -> None:
    raise UserError(f"no {what} here")


def test_a_function_of_the_client_runs_whole_in_the_process(client, tmp_path):
    """The tracker's composite calls (a trial's run with its composed params, the end's drawing) run there whole;
    on a plain MlflowClient, the same function runs in this process."""
    client.ready()
    client.create_experiment("sweep-a", artifact_location=(tmp_path / "art").as_uri())
    assert client.run(pid_and_experiments, prefix="sweep") == (client._process.pid, ["sweep-a"])
    assert with_client(client, pid_and_experiments, prefix="sweep")[0] == client._process.pid
    with pytest.raises(UserError, match="no figure here"):
        with_client(client, refuse, "figure")
    assert with_client(client_for(client.tracking_uri), pid_and_experiments, prefix="sweep") == (os.getpid(),
                                                                                                 ["sweep-a"])


def note_pid(path: str) -> None:
    Path(f"{path}.part").write_text(str(os.getpid()))
    os.replace(f"{path}.part", path)  # whole or not at all, for the reader that waits for it


def test_the_warm_up_runs_in_the_process_once_the_store_is_open(tmp_path):
    noted = tmp_path / "warm-up.pid"
    process = ClientProcess(f"sqlite:///{tmp_path / 'mlflow.db'}", warm_up=(note_pid, (str(noted),)))
    try:
        process.ready()
        deadline = time.monotonic() + 30
        while not noted.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert noted.read_text() == str(process._process.pid)
    finally:
        process.close()


def test_a_store_that_cannot_be_opened_is_named_at_ready(tmp_path):
    (tmp_path / "mlflow.db").write_text("this is not SQLite")
    process = ClientProcess(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with pytest.raises(UserError, match="is not an MLflow SQLite store"):
            process.ready()
    finally:
        process.close()


def test_ctrl_c_is_left_to_the_driver_and_a_killed_process_starts_again(client):
    client.ready()
    first = client._process.pid
    os.kill(first, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    time.sleep(0.5)
    assert client._process.is_alive() and client.search_experiments(max_results=1)
    os.kill(first, signal.SIGKILL)
    client._process.join(timeout=10)
    assert client.search_experiments(max_results=1) and client._process.pid != first


def test_a_sweep_gets_the_process_from_128_trials_unless_its_config_says():
    from sweeplab.tracking.client_process import wanted

    assert [wanted(None, n) for n in (16, 127, 128, 1024)] == [False, False, True, True]
    assert wanted(True, 1) and not wanted(False, 10_000)
