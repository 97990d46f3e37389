"""deploy/kuberay: the docker-compose stack on Kubernetes, on paper. No cluster here, so the manifests are
parsed and held to the compose file: same image, env names, ports and key flags, and every secret read
from a Kubernetes Secret, never written in a manifest."""
from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

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


def _helpers(container: dict) -> set[str]:
    """The names a container expands as $(NAME) in its env values or command: Kubernetes-only entries (the
    database password compose interpolates into a URL), not part of the compose environment."""
    values = [str(e.get("value", "")) for e in container.get("env", [])]
    text = " ".join([*values, *map(str, container.get("command", []))])
    return set(re.findall(r"\$\((\w+)\)", text))


def _assert_env_mirrors(name: str, compose_env: dict[str, str], extra: frozenset[str] = frozenset()) -> None:
    """The container's environment is exactly the compose one (plus its $(NAME) helpers and `extra`): a literal
    value the same, a `${VAR}` value from the Secret, a URL with the password interpolated as $(POSTGRES_PASSWORD)."""
    container = CONTAINERS[name]
    env = _env(container)
    helpers = _helpers(container)
    assert set(env) == set(compose_env) | helpers | extra, \
        f"{name}: extra {set(env) - set(compose_env) - helpers - extra}, missing {set(compose_env) - set(env)}"
    for key, value in compose_env.items():
        value = str(value)
        if re.fullmatch(r"\$\{\w+[^}]*\}", value):
            assert "secretKeyRef" in env[key].get("valueFrom", {}), f"{name}: {key} is not from the Secret"
        else:
            assert env[key].get("value") == _from_secret(value), (name, key)
    for helper in helpers:  # declared from the Secret, before any entry that expands it
        assert "secretKeyRef" in env[helper].get("valueFrom", {}), (name, helper)
        users = [i for i, e in enumerate(container["env"]) if f"$({helper})" in str(e.get("value", ""))]
        assert all(list(env).index(helper) < i for i in users), f"{name}: {helper} comes after its use"


def test_the_ray_workers_get_only_the_compose_worker_environment():
    _assert_env_mirrors("ray-worker", SERVICES["ray-worker"]["environment"])
    assert not _helpers(CONTAINERS["ray-worker"])  # no database password, no MLflow credentials


def test_the_ray_head_gets_the_compose_head_environment_and_the_drivers():
    """A RayJob's entrypoint runs on the head: it is compose's ray-head and compose's `sweeplab` driver in one
    pod. RAY_ADDRESS is left out: the entrypoint's cluster.address=auto replaces it."""
    driver = {k: v for k, v in SERVICES["sweeplab"]["environment"].items() if k != "RAY_ADDRESS"}
    _assert_env_mirrors("ray-head", {**SERVICES["ray-head"]["environment"], **driver})
    assert "cluster.address=auto" in shlex.split(_one("RayJob", "sweeplab-default")["spec"]["entrypoint"])
    for name in ("ray-head", "ray-worker"):
        assert {"name": "shared", "mountPath": "/shared"} in CONTAINERS[name]["volumeMounts"]


def test_the_rayjob_submitter_gets_only_the_ray_token():
    env = _env(CONTAINERS["ray-job-submitter"])
    assert set(env) == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert env["RAY_AUTH_MODE"]["value"] == SERVICES["sweeplab"]["environment"]["RAY_AUTH_MODE"]


def test_mlflow_and_postgres_get_the_compose_environment():
    _assert_env_mirrors("mlflow", SERVICES["mlflow"]["environment"])
    _assert_env_mirrors("postgres", SERVICES["postgres"]["environment"],
                        extra=frozenset({"PGDATA"}))  # a subfolder of the volume: its root holds lost+found


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
    compose_flags = _flags(_from_secret(SERVICES["mlflow"]["command"]))  # before the split: ${VAR:?a message}
    k8s_flags = _flags(CONTAINERS["mlflow"]["command"])
    assert CONTAINERS["mlflow"]["command"][:2] == shlex.split(SERVICES["mlflow"]["command"])[:2] == ["mlflow", "server"]
    assert set(k8s_flags) == set(compose_flags)
    for flag, value in compose_flags.items():  # --app-name basic-auth, the URL with the password from the Secret
        assert k8s_flags[flag] == value, flag


def test_mlflow_reads_the_compose_auth_config_and_keeps_its_auth_db():
    """MLFLOW_AUTH_CONFIG_PATH is a ConfigMap holding docker/mlflow-auth.ini word for word, mounted where compose
    mounts the file; the SQLite database the ini names lives on a PersistentVolumeClaim (compose: a volume)."""
    container, pod = CONTAINERS["mlflow"], _one("Deployment", "mlflow")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    path = SERVICES["mlflow"]["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    config_map = _one("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    ini_text = config_map["data"][mount["subPath"]]
    assert ini_text == (ROOT / "docker" / "mlflow-auth.ini").read_text()
    ini = configparser.ConfigParser()
    ini.read_string(ini_text)
    database = ini["mlflow"].get("database_uri", "")
    if database.startswith("sqlite:///"):
        folder = PurePosixPath(database.removeprefix("sqlite:///")).parent
        (db_mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == folder]
        assert "persistentVolumeClaim" in volumes[db_mount["name"]], "the auth DB would vanish with the pod"
    assert _one("Deployment", "mlflow")["spec"]["strategy"]["type"] == "Recreate"  # one pod on a RWO claim


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


def _secret_keys() -> dict[str, set[tuple[str, str]]]:
    """Every secretKeyRef of every container: {env name: {(container, key)}}."""
    out: dict[str, set[tuple[str, str]]] = {}
    for name, container in CONTAINERS.items():
        for key, entry in _env(container).items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "sweeplab-secrets", (name, key)
                out.setdefault(key, set()).add((name, ref["key"]))
    return out


def test_each_compose_secret_is_one_secret_key_and_the_docs_create_them_all():
    """The key is the compose variable's name in kebab case (MLFLOW_ADMIN_PASSWORD: mlflow-admin-password), the
    same wherever it is read, and docs/cluster.md's `kubectl create secret` makes exactly the keys used."""
    refs = _secret_keys()
    used = set()
    for service, name in [*((s, s) for s in ("postgres", "mlflow", "ray-head", "ray-worker")),
                          ("sweeplab", "ray-head"), ("sweeplab", "ray-job-submitter")]:
        for key, value in SERVICES[service]["environment"].items():
            match = re.fullmatch(r"\$\{(\w+)[^}]*\}", str(value))
            if match and key in _env(CONTAINERS[name]):
                expected = match.group(1).lower().replace("_", "-")
                assert (name, expected) in refs[key], (service, key, refs[key])
                used.add(expected)
        for helper in _helpers(CONTAINERS[name]):  # $(POSTGRES_PASSWORD): compose's variable of that name
            expected = helper.lower().replace("_", "-")
            assert (name, expected) in refs[helper], (name, helper, refs[helper])
            used.add(expected)
    all_keys = {k for pairs in refs.values() for _, k in pairs}
    assert all_keys == used
    docs = (ROOT / "docs" / "cluster.md").read_text()
    command = docs[docs.index("kubectl create secret generic sweeplab-secrets"):]
    command = command[:command.index("\nkubectl apply")]
    assert set(re.findall(r"--from-literal=([\w-]+)=", command)) == all_keys


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
