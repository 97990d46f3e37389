"""The docker-compose stack: the file validates, and it wires the services the way
conf/cluster/compose.yaml and conf/tracking/server.yaml expect. The services themselves
run as local processes in test_cluster.py (no Docker engine here)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from servers import require

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


SECRETS = {  # what the stack refuses to start without, and a stand-in value for each
    "RAY_AUTH_TOKEN": "ray-token-for-tests",
    "POSTGRES_PASSWORD": "pg-password-for-tests",
    "MLFLOW_ADMIN_USER": "mlflow-admin-for-tests",
    "MLFLOW_ADMIN_PASSWORD": "mlflow-password-for-tests",
    "MLFLOW_SECRET_KEY": "flask-key-for-tests",
}


def _compose_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    require(shutil.which("docker-compose") is not None or shutil.which("docker") is not None,
            "neither docker-compose nor docker is installed (make system-deps installs docker-compose)")
    tool = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    run = subprocess.run([*tool, "-f", str(ROOT / "docker-compose.yml"), "--profile", "run", "config", *args],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    require(run.returncode == 0 or "unknown command" not in run.stderr,
            "this docker client has no compose plugin (make system-deps installs docker-compose)")
    return run


def _without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SECRETS} | {k: v for k, v in SECRETS.items()
                                                                       if k not in names}


def test_compose_file_validates_with_docker_compose():
    run = _compose_config(_without(), "--services")
    assert run.returncode == 0, run.stderr
    assert set(run.stdout.split()) == {"postgres", "mlflow", "ray-head", "ray-worker", "sweeplab"}


@pytest.mark.parametrize("secret", list(SECRETS))
def test_compose_refuses_to_start_without_each_secret(secret):
    # no default password, token or key: without one of them the stack does not start, and says which
    run = _compose_config(_without(secret), "--services")
    assert run.returncode != 0
    assert secret in run.stderr, run.stderr


def test_each_service_gets_only_the_secrets_it_uses():
    run = _compose_config(_without())
    assert run.returncode == 0, run.stderr
    resolved = yaml.safe_load(run.stdout)["services"]
    holders = {name: {k for k, v in SECRETS.items() if v in yaml.safe_dump(service)}
               for name, service in resolved.items()}
    assert holders == {
        "postgres": {"POSTGRES_PASSWORD"},
        "mlflow": {"POSTGRES_PASSWORD", "MLFLOW_ADMIN_USER", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY"},
        "ray-head": {"RAY_AUTH_TOKEN"},
        "ray-worker": {"RAY_AUTH_TOKEN"},
        "sweeplab": {"RAY_AUTH_TOKEN", "POSTGRES_PASSWORD", "MLFLOW_ADMIN_USER", "MLFLOW_ADMIN_PASSWORD"},
    }
    mlflow = resolved["mlflow"]
    assert "--app-name basic-auth" in mlflow["command"] and "--allowed-hosts" in mlflow["command"]
    driver = resolved["sweeplab"]["environment"]
    assert driver["MLFLOW_TRACKING_USERNAME"] == SECRETS["MLFLOW_ADMIN_USER"]
    assert driver["MLFLOW_TRACKING_PASSWORD"] == SECRETS["MLFLOW_ADMIN_PASSWORD"]
    assert resolved["ray-head"]["environment"]["RAY_AUTH_MODE"] == "token"


def test_published_ports_listen_on_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_driver_keeps_its_outputs_and_waits_for_a_gpu_worker():
    """`docker compose run --rm` removes the driver's container: its output_dir (the journal `sweeplab sync` sends
    after an MLflow outage, the reports) is a host folder; and it starts once the cluster counts a GPU."""
    driver = SERVICES["sweeplab"]
    assert any(v.endswith(":/app/outputs") for v in driver["volumes"]) and "shared:/shared" in driver["volumes"]
    assert driver["depends_on"]["ray-worker"]["condition"] == "service_healthy"
    assert "GPU" in " ".join(SERVICES["ray-worker"]["healthcheck"]["test"])


def test_the_build_context_leaves_out_the_venv_data_and_history():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "outputs"} <= set(ignored)


def test_gpu_workers_join_the_head_and_reserve_gpus():
    worker = SERVICES["ray-worker"]
    assert "--address=ray-head:6379" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--head" in SERVICES["ray-head"]["command"]


def test_the_long_running_services_restart_and_the_driver_runs_once():
    for name in ("postgres", "mlflow", "ray-head", "ray-worker"):
        assert SERVICES[name]["restart"] == "unless-stopped", name
    assert "restart" not in SERVICES["sweeplab"]  # `docker compose run --rm`: a sweep that ends is done


def test_every_ray_node_and_the_driver_share_the_checkpoint_volume():
    for name in ("ray-head", "ray-worker", "sweeplab", "mlflow"):
        assert "shared:/shared" in SERVICES[name]["volumes"], name
    assert SERVICES["ray-head"]["environment"]["SWEEPLAB_STORAGE"].startswith("/shared/")


def test_mlflow_and_optuna_live_in_postgres():
    # from its environment, which `mlflow server` reads: a password in its command line would show in `ps`
    assert SERVICES["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "postgresql://" not in SERVICES["mlflow"]["command"]
    assert SERVICES["sweeplab"]["environment"]["OPTUNA_STORAGE"].startswith("postgresql://")
    assert "CREATE DATABASE optuna" in (ROOT / "docker" / "postgres-init.sql").read_text()
    assert SERVICES["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_driver_runs_the_cifar10_sweep_in_cluster_mode(monkeypatch, tmp_path):
    from sweeplab.data.datasets import _EXPECTED
    from sweeplab.sweep.plan import plan_sweep

    for name in _EXPECTED["cifar10"]:  # planning checks that the dataset's files are there
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()

    env = SERVICES["sweeplab"]["environment"]
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "SWEEPLAB_STORAGE"):
        monkeypatch.setenv(key, re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "sweeplab", env[key]))
    command = SERVICES["sweeplab"]["command"]
    assert command[:2] == ["sweep", "cifar10"]
    plan = plan_sweep(command[1], [*command[2:], f"data.root={tmp_path}"])
    assert plan.cfg.cluster.address == "ray-head:6379"
    assert plan.cfg.tracking.uri == "http://mlflow:5000"
    assert plan.optuna_storage.startswith("postgresql://sweeplab:sweeplab@postgres:5432/optuna")
    assert plan.cfg.cluster.storage_path == "/shared/ray"
    assert plan.cfg.sweep.resources.gpu == 0.25


def test_the_image_carries_configs_and_sweeps():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("conf", "sweeps", "src"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    assert "SWEEPLAB_HOME=/app" in dockerfile


def test_the_ray_head_serves_its_dashboard_on_the_published_port():
    import shlex
    import tomllib

    words = shlex.split(SERVICES["ray-head"]["command"])
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    assert flags["include-dashboard"] == "true" and flags["dashboard-host"] == "0.0.0.0"  # inside the container
    assert SERVICES["ray-head"]["ports"] == [f"127.0.0.1:{flags['dashboard-port']}:{flags['dashboard-port']}"]
    # the image installs sweeplab's dependencies, and with them the dashboard's (ray[default])
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = next(d for d in dependencies if d.startswith("ray["))
    assert "default" in ray[ray.index("[") + 1:ray.index("]")].split(",")
    dockerfile = (ROOT / "Dockerfile").read_text()
    # the dependencies pinned as CI ran them, in a layer of their own; then sweeplab itself
    assert "COPY pyproject.toml constraints.txt" in dockerfile and "-c constraints.txt" in dockerfile
    assert dockerfile.index("-c constraints.txt") < dockerfile.index("COPY src ./src") < dockerfile.index(
        "pip install --no-cache-dir --no-deps -e .")
