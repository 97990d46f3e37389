"""Cluster mode on loopback: PostgreSQL for MLflow and Optuna, a real `mlflow server`,
and a two-node Ray cluster — the services docker-compose starts, as local processes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from servers import MlflowServer, free_port, require

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray node on 127.0.0.1

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PG = os.environ.get("SWEEPLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _pg_ready() -> bool:
    try:
        import psycopg

        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def databases():
    require(_pg_ready(), f"PostgreSQL is not reachable at {PG} (make services starts it)")
    import psycopg

    names = {kind: f"sweeplab_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("mlflow", "optuna")}
    admin = psycopg.connect(f"{PG}/postgres", autocommit=True)
    with admin.cursor() as cur:
        for name in names.values():
            cur.execute(f"CREATE DATABASE {name}")
    yield {kind: f"{PG}/{name}" for kind, name in names.items()}
    with admin.cursor() as cur:
        for name in names.values():
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="module")
def mlflow_server(databases, tmp_path_factory):
    server = MlflowServer(databases["mlflow"], tmp_path_factory.mktemp("mlartifacts"),
                          tmp_path_factory.mktemp("logs") / "mlflow.log")
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_cluster_with_nodes_on_other_machines_needs_a_shared_storage_path(tmp_path):
    """Checkpoints in this machine's output_dir: a trial on another machine would fail at its first checkpoint,
    after its epochs, retry after retry; said in one line once the cluster's nodes are known. Nodes on this machine
    (a Cluster of loopback nodes, as B8's) share its disk."""
    from sweeplab.errors import ConfigError
    from sweeplab.sweep.launch import check_shared_storage
    from sweeplab.sweep.plan import plan_sweep

    def node(address: str, alive: bool = True) -> dict:  # as ray.nodes() lists one
        return {"NodeManagerAddress": address, "Alive": alive}

    plan = plan_sweep("smoke", [f"output_dir={tmp_path}", "cluster.address=10.0.0.1:6379"])
    root = str(tmp_path / "ray")
    check_shared_storage(plan, root, [node("10.0.0.1"), node("10.0.0.1")], "10.0.0.1")  # one machine
    check_shared_storage(plan, root, [node("10.0.0.1"), node("10.0.0.2", alive=False)], "10.0.0.1")
    with pytest.raises(ConfigError) as err:
        check_shared_storage(plan, root, [node("10.0.0.1"), node("10.0.0.2")], "10.0.0.1")
    assert str(err.value).startswith(f"the Ray cluster has nodes on other machines (10.0.0.2), and the trials' "
                                     f"checkpoints would go to {root} on this one"), str(err.value)
    shared = plan_sweep("smoke", [f"output_dir={tmp_path}", "cluster.address=10.0.0.1:6379",
                                  f"cluster.storage_path={tmp_path / 'shared'}"])
    check_shared_storage(shared, root, [node("10.0.0.1"), node("10.0.0.2")], "10.0.0.1")


def test_sweep_on_a_two_node_cluster_with_postgres_and_mlflow_server(databases, mlflow_server, ray_cluster, tmp_path,
                                                                    capfd):
    import optuna
    import ray
    from mlflow import MlflowClient

    from sweeplab.sweep.launch import launch_sweep
    from sweeplab.sweep.rerun import best_command
    from sweeplab.sweep.results import find_sweep

    overrides = [
        f"output_dir={tmp_path}",
        f"cluster.address={ray_cluster.address}",
        f"cluster.optuna_storage={databases['optuna']}",
        f"cluster.storage_path={tmp_path / 'shared'}",
        "tracking=server",
        f"tracking.uri={mlflow_server}",
        "data.subset=500",
        "train.epochs=2",
        "sweep.num_trials=2",  # two at a time: one on each node
        "sweep.scheduler.kind=none",
    ]
    outcome = launch_sweep("smoke", overrides, quiet=True)
    assert "View run" not in capfd.readouterr().out  # no MLflow link per trial between the live view's lines

    # both nodes of the cluster offered their CPU to the sweep
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert outcome.counts() == {"completed": 2}

    # the Optuna study lives in PostgreSQL, named after the sweep id
    study = optuna.load_study(study_name=outcome.sweep_id, storage=databases["optuna"])
    assert len(study.get_trials()) == 2
    assert find_sweep(databases["optuna"], "smoke")["sweep_id"] == outcome.sweep_id
    assert "sweeplab train" in best_command(outcome, outcome.best())

    # MLflow runs went through the server into PostgreSQL, artifacts through its proxy
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert len(parent) == 1
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent[0].info.run_id}'")
    assert len(children) == 2
    artifacts = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"weights.pt", "confusion_matrix.json", "config.yaml", "model_summary.txt"} <= artifacts

    # `sweeplab report` rebuilds the report from the server alone, in another process
    report = subprocess.run(
        [sys.executable, "-m", "sweeplab.cli", "report", "smoke", "tracking=server", f"tracking.uri={mlflow_server}",
         f"output_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "reports" / outcome.sweep_id / "report.html").stat().st_size > 10_000
    page = (tmp_path / "reports" / outcome.sweep_id / "report.html").read_text()
    assert 'id="plot-optimization_history"' in page  # the Optuna figures come from the study in PostgreSQL

    # the best trial's MLflow Model, registered through the server, predicts class scores from the registry
    stores = [f"cluster.optuna_storage={databases['optuna']}", "tracking=server", f"tracking.uri={mlflow_server}",
              f"output_dir={tmp_path}"]
    best = subprocess.run([sys.executable, "-m", "sweeplab.cli", "best", "smoke", "--register", "smoke-server",
                           *stores], capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stderr
    assert "registered model smoke-server version 1: models:/smoke-server/1" in best.stderr
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(mlflow_server)
    version = client.get_model_version("smoke-server", "1")
    assert client.get_run(version.run_id).data.tags["sweeplab.optuna_trial"] == str(outcome.best().number)
    scores = mlflow.pyfunc.load_model("models:/smoke-server/1").predict(np.zeros((3, 1, 28, 28), np.float32))
    assert scores.shape == (3, 10)


def test_a_sweep_asking_more_than_the_cluster_has_is_refused_once_joined(ray_cluster, tmp_path):
    """What a cluster has is known only once the driver has joined it (a local Ray's is checked before it starts:
    tests/test_user_errors.py): one error naming the cluster's CPUs rather than trials waiting forever."""
    from sweeplab.errors import ConfigError
    from sweeplab.sweep.launch import launch_sweep

    with pytest.raises(ConfigError, match=r"sweep.resources.cpu=3 \(in .*smoke.yaml\) but the Ray cluster has 2 CPUs "
                                          r"in all: no trial could start; ask for at most 2"):
        launch_sweep("smoke", [f"output_dir={tmp_path}", f"cluster.address={ray_cluster.address}",
                               "sweep.resources.cpu=3", "tracking=none"], quiet=True)


def test_the_compose_ray_head_command_serves_the_dashboard(tmp_path):
    """docker-compose's ray-head command, run as it is on loopback (its ports moved to free ones and the
    dashboard bound to 127.0.0.1 instead of the container's 0.0.0.0): the dashboard answers HTTP."""
    import json
    import shlex
    import time
    import urllib.error
    import urllib.request

    import ray
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())
    words = shlex.split(compose["services"]["ray-head"]["command"])
    moved = {"--port": free_port(), "--dashboard-port": free_port(), "--dashboard-host": "127.0.0.1", "--num-cpus": 1}
    command = [f"{w.split('=')[0]}={moved[w.split('=')[0]]}" if w.split("=")[0] in moved else w for w in words]
    assert command[:3] == ["ray", "start", "--head"] and "--include-dashboard=true" in command and "--block" in command
    extra = [f"--{flag}={free_port()}" for flag in ("ray-client-server-port", "dashboard-agent-listen-port",
                                                     "metrics-export-port", "runtime-env-agent-port")]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    token = uuid.uuid4().hex  # the stack's RAY_AUTH_TOKEN
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_TOKEN": token,
           "RAY_AUTH_MODE": compose["services"]["ray-head"]["environment"]["RAY_AUTH_MODE"]}
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen([ray_cli, *command[1:], *extra], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    url, version, refused = f"http://127.0.0.1:{moved['--dashboard-port']}/api/version", None, None
    try:
        deadline = time.time() + 180
        while version is None and time.time() < deadline and head.poll() is None:
            try:
                urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as err:
                refused = err.code  # up, and asking for the token
            except OSError:
                time.sleep(2)
                continue
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}),
                                        timeout=5) as answer:
                version = json.load(answer)
        # a driver without the stack's token is told which settings carry it, without a traceback
        tokenless = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"RAY_ADDRESS": ""}
        refused_driver = subprocess.run(
            [sys.executable, "-m", "sweeplab", "sweep", "smoke", f"cluster.address=127.0.0.1:{moved['--port']}",
             f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True, env=tokenless, timeout=300)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` takes its GCS, raylet and dashboard down with it
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a busy machine: what a minute of SIGTERM did not stop is killed
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        # `ray start` recorded this head as the machine's cluster; a later plain ray.init() would wait for it
        recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if recorded.exists() and recorded.read_text().strip().endswith(f":{moved['--port']}"):
            recorded.unlink()
    assert version is not None, (tmp_path / "head.log").read_text()[-3000:]
    assert version["ray_version"] == ray.__version__ and refused == 401
    assert refused_driver.returncode == 2, refused_driver.stderr[-3000:]
    assert "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in refused_driver.stderr
    assert "Traceback" not in refused_driver.stderr


def test_a_lost_worker_node_s_trial_is_retried_on_another_node_from_its_checkpoint(databases, mlflow_server,
                                                                                    ray_cluster, tmp_path):
    """A third node joins; once its trial has a checkpoint Ray registered, that node's raylet and the workers it
    started are SIGKILLed. Its trial is retried on a surviving node from its checkpoint; nothing is lost."""
    import json
    import threading
    import time

    import psutil
    from mlflow import MlflowClient
    from ray._private import ray_constants

    from sweeplab.metrics import METRIC_KEYS
    from sweeplab.sweep.launch import launch_sweep

    doomed = ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    raylet = doomed.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    client, epochs, trials = MlflowClient(mlflow_server), 10, 3
    killed = threading.Event()

    def doomed_trial_checkpointed() -> bool:
        """The doomed node's trial logged its second epoch, so Ray had registered its first checkpoint (a result is
        logged before Ray fetches the checkpoint it came with: one logged epoch, or a checkpoint folder, is not
        enough; the retry would start from epoch 1). Tune's results name the worker's pid."""
        workers = {p.pid for p in psutil.Process(raylet.pid).children(recursive=True)}
        for path in (tmp_path / "shared").glob("*/trial_*/result.json"):
            lines = path.read_text().splitlines()
            if len(lines) >= 2 and json.loads(lines[0])["pid"] in workers:
                return True
        return False

    def kill_when_every_node_trains() -> None:  # 3 one-CPU trials on 3 one-CPU nodes: one trial per node
        deadline = time.time() + 300
        while time.time() < deadline:
            if doomed_trial_checkpointed():
                started = psutil.Process(raylet.pid).children(recursive=True)  # the node's workers
                for pid in [raylet.pid, *(p.pid for p in started)]:  # the machine is gone: all of it, at once
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_when_every_node_trains, daemon=True)
    watcher.start()
    overrides = [
        f"output_dir={tmp_path}", f"cluster.address={ray_cluster.address}",
        f"cluster.optuna_storage={databases['optuna']}", f"cluster.storage_path={tmp_path / 'shared'}",
        "tracking=server", f"tracking.uri={mlflow_server}", "tracking.experiment=nodeloss",
        "data.subset=500", f"train.epochs={epochs}", f"sweep.num_trials={trials}", f"sweep.max_concurrent={trials}",
        "sweep.scheduler.kind=none", "sweep.checkpoint_interval_s=0",  # a checkpoint every epoch
    ]
    try:
        outcome = launch_sweep("smoke", overrides, quiet=True)
    finally:
        watcher.join(timeout=5)
        ray_cluster.remove_node(doomed, allow_graceful=False)
    assert killed.is_set(), "the trials ended before the node could be killed"

    assert outcome.counts() == {"completed": trials}
    experiment = client.get_experiment_by_name("nodeloss")
    children = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'trial'")
    assert len(children) == trials
    restarted = [run for run in children if run.data.tags["sweeplab.restarts"] != "0"]
    assert len(restarted) == 1, [run.data.tags["sweeplab.restarts"] for run in children]
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["sweeplab.status"] == "completed"
        for key in METRIC_KEYS:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, key, steps)
    # Ray's own record of the retried trial: it went on from its checkpoint, so epoch 1 was trained once
    name = restarted[0].data.tags["sweeplab.trial_name"]
    results = [json.loads(line) for line in (tmp_path / "shared" / outcome.sweep_id / name / "result.json")
               .read_text().splitlines()]
    trained = [r["epoch"] for r in results]
    assert trained.count(1) == 1 and max(trained) == epochs, trained


def test_ui_serves_a_postgresql_tracking_store(databases, tmp_path):
    """A database store is served like the local SQLite one (only an HTTP store is a server already); the URL it
    prints has its password masked (the test database trusts any)."""
    import urllib.request

    import psutil
    from servers import wait_healthy
    from sweep_helpers import SWEEPLAB

    port = free_port()
    uri = databases["mlflow"].replace("@", ":s3cret@", 1)
    with open(tmp_path / "ui.log", "w") as log:
        proc = subprocess.Popen([str(SWEEPLAB), "ui", "tracking=server", f"tracking.uri={uri}",
                                 f"output_dir={tmp_path}", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc)
            page = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
            assert urllib.request.urlopen(page, timeout=10).status == 200
            server = psutil.Process(proc.pid)  # the server (sweeplab ui execs it) and its workers
            commands = [" ".join(p.cmdline()) for p in (server, *server.children(recursive=True))]
            assert not [c for c in commands if "s3cret" in c], commands  # any user of the machine reads them (ps)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    said = (tmp_path / "ui.log").read_text()
    assert f"MLflow UI for {uri.replace(':s3cret@', ':***@')}" in said and "s3cret" not in said, said
