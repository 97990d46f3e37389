"""deploy/kuberay: the docker-compose stack on Kubernetes, on paper. No cluster here, so the manifests are
parsed and held to the compose file: same image, env names, ports and key flags, and every secret read
from a Kubernetes Secret, never written in a manifest."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from servers import require

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "deploy" / "kuberay"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY", re.IGNORECASE)


RESOURCES = [FOLDER / name for name in yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]]


def _documents() -> list[dict]:
    return [doc for path in RESOURCES for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCS = _documents()


def _one(kind: str, name: str) -> dict:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _containers() -> dict[str, dict]:
    """Every container of every manifest, by name: Deployments, the RayCluster's groups, the RayJob's submitter."""
    out = {}
    for doc in DOCS:
        spec = doc.get("spec", {})
        templates = [spec.get("template"), spec.get("headGroupSpec", {}).get("template"),
                     spec.get("submitterPodTemplate"), *(g["template"] for g in spec.get("workerGroupSpecs", []))]
        for template in filter(None, templates):
            for container in template["spec"]["containers"]:
                out[container["name"]] = container
    return out


CONTAINERS = _containers()


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _from_secret(compose_value: str) -> str:
    """A compose value with the password interpolated, as a manifest writes it: $(POSTGRES_PASSWORD) from the Secret."""
    return re.sub(r"\$\{POSTGRES_PASSWORD[^}]*\}", "$(POSTGRES_PASSWORD)", compose_value)


def _flags(command: list[str] | str) -> dict[str, str | None]:
    """--flag value / --flag=value / --flag as a dict, from an argv list or a command string."""
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    flags: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            key, _, value = word.partition("=")
            nxt = words[i + 1] if i + 1 < len(words) else None
            flags[key] = value or (nxt if nxt is not None and not nxt.startswith("--") else None)
    return flags


def test_the_manifests_are_the_compose_services():
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "ray-job-submitter"} <= set(CONTAINERS)
    assert CONTAINERS["postgres"]["image"] == SERVICES["postgres"]["image"]
    for name in ("mlflow", "ray-head", "ray-worker", "ray-job-submitter"):
        assert CONTAINERS[name]["image"] == COMPOSE["x-sweeplab"]["image"], name
    # the Service names are the compose host names the connection strings use
    assert _one("Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    assert _one("Service", "mlflow")["spec"]["ports"][0]["port"] == 5000


def test_every_ray_node_has_the_compose_environment_and_the_shared_volume():
    compose_env = COMPOSE["x-sweeplab"]["environment"]
    for name in ("ray-head", "ray-worker"):
        env = _env(CONTAINERS[name])
        assert set(compose_env) <= set(env), f"{name} lacks {set(compose_env) - set(env)}"
        for key in ("RAY_AUTH_MODE", "MLFLOW_TRACKING_URI", "SWEEPLAB_STORAGE"):
            assert env[key]["value"] == compose_env[key], (name, key)
        # the same URL, the password now from the Secret (Kubernetes expands $(VAR) from earlier entries)
        assert env["OPTUNA_STORAGE"]["value"] == _from_secret(compose_env["OPTUNA_STORAGE"])
        assert list(env).index("POSTGRES_PASSWORD") < list(env).index("OPTUNA_STORAGE")
        assert {"name": "shared", "mountPath": "/shared"} in CONTAINERS[name]["volumeMounts"]
    assert _env(CONTAINERS["mlflow"])["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == \
        SERVICES["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
    assert set(SERVICES["postgres"]["environment"]) <= set(_env(CONTAINERS["postgres"]))


def test_the_head_serves_the_dashboard_and_the_workers_hold_gpus():
    cluster = _one("RayCluster", "sweeplab")["spec"]
    head_flags = _flags(SERVICES["ray-head"]["command"])
    params = cluster["headGroupSpec"]["rayStartParams"]
    assert params["dashboard-host"] == head_flags["--dashboard-host"] == "0.0.0.0"
    assert params["num-gpus"] == head_flags["--num-gpus"] == "0"
    ports = {p["containerPort"] for p in CONTAINERS["ray-head"]["ports"]}
    compose_dashboard = int(SERVICES["ray-head"]["ports"][0].rsplit(":", 1)[1])
    assert {int(head_flags["--port"] or 0), compose_dashboard} <= ports
    (gpu_group,) = cluster["workerGroupSpecs"]
    assert int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_mlflow_runs_the_compose_command():
    compose_flags = _flags(SERVICES["mlflow"]["command"])
    k8s_flags = _flags(CONTAINERS["mlflow"]["command"])
    assert CONTAINERS["mlflow"]["command"][:2] == shlex.split(SERVICES["mlflow"]["command"])[:2] == ["mlflow", "server"]
    assert set(k8s_flags) == set(compose_flags)
    for flag in ("--artifacts-destination", "--host", "--port", "--workers", "--allowed-hosts"):
        assert k8s_flags[flag] == compose_flags[flag], flag
    assert k8s_flags["--backend-store-uri"] == _from_secret(compose_flags["--backend-store-uri"] or "")


def test_the_rayjob_runs_the_sweep_as_the_compose_driver_does():
    job = _one("RayJob", "sweeplab-default")["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[:3] == ["sweeplab", "sweep", "default"]
    driver = SERVICES["sweeplab"]["command"]
    assert set(driver[2:]) <= set(words[3:])  # cluster=compose tracking=server
    assert "cluster.address=auto" in words
    assert job["clusterSelector"]["ray.io/cluster"] == _one("RayCluster", "sweeplab")["metadata"]["name"]


def test_every_secret_comes_from_a_kubernetes_secret():
    assert not [d for d in DOCS if d["kind"] == "Secret"], "a Secret with its values belongs in no repository"
    for name, container in CONTAINERS.items():
        for key, entry in _env(container).items():
            if SECRET_NAME.search(key):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], f"{name}: {key} is a literal"
    text = "\n".join(path.read_text() for path in RESOURCES)
    assert not re.search(r"postgresql://[^:/]+:(?!\$\(POSTGRES_PASSWORD\))[^@]+@", text), "a password in a URL"


def test_the_postgres_init_script_is_the_compose_one():
    init = _one("ConfigMap", "sweeplab-postgres-init")["data"]["10-optuna.sql"]
    assert init == (ROOT / "docker" / "postgres-init.sql").read_text()


def test_the_claims_the_pods_mount_exist():
    claims = {d["metadata"]["name"] for d in DOCS if d["kind"] == "PersistentVolumeClaim"}
    assert _one("PersistentVolumeClaim", "sweeplab-shared")["spec"]["accessModes"] == ["ReadWriteMany"]
    text = "\n".join(yaml.safe_dump(d) for d in DOCS)
    assert set(re.findall(r"claimName: (\S+)", text)) == claims


@pytest.mark.slow  # runs kubectl (a second or two)
def test_kubectl_builds_the_kustomization():
    require(shutil.which("kubectl") is not None, "kubectl is not installed")
    run = subprocess.run(["kubectl", "kustomize", str(FOLDER)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert {d["kind"] for d in yaml.safe_load_all(run.stdout)} >= {"RayCluster", "RayJob", "Deployment", "Service"}
