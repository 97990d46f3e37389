"""What goes into MLflow runs: flattened params, per-epoch metrics, provenance tags."""
from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sweeplab.config.compose import flatten, project_root
from sweeplab.metrics import METRIC_KEYS


def param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def config_params(cfg) -> list:
    """Leaf values of the resolved config, so runs compare column by column in the UI."""
    from mlflow.entities import Param

    skip = ("sweep.", "tracking.", "cluster.", "output_dir", "data.root")
    return [Param(k, param_value(v)) for k, v in flatten(cfg).items() if not k.startswith(skip)]


def epoch_metrics(result: dict[str, float]) -> list:
    from mlflow.entities import Metric

    step = int(result["epoch"])
    stamp = int(time.time() * 1000)
    out = [Metric(k, float(result[k]), stamp, step) for k in METRIC_KEYS if k in result]
    if "params" in result:
        out.append(Metric("params", float(result["params"]), stamp, step))
    return out


def provenance_tags() -> dict[str, str]:
    """Git commit and dirty flag, host and package versions, for the sweep's parent run."""
    tags = {"host": socket.gethostname()}
    root = project_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["git.commit"] = commit.stdout.strip()
            tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    for package in ("sweeplab", "torch", "torchvision", "ray", "optuna", "mlflow", "hydra-core"):
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags


def log_single_run(cfg, result, folder: Path) -> str:
    """`sweeplab train` logs one run (experiment 'train' unless tracking.experiment says otherwise):
    its metrics, params, the files of its run folder and its two figures."""
    from mlflow.entities import RunTag

    from sweeplab.run_files import RUN_FILES
    from sweeplab.tracking.artifacts import _figures
    from sweeplab.tracking.store import artifact_root, client_for, get_or_create_experiment, tracking_uri

    client = client_for(tracking_uri(cfg))
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment or "train", artifact_root(cfg))
    run = client.create_run(experiment_id, run_name=folder.name, tags={"sweeplab.kind": "train", **provenance_tags()})
    run_id = run.info.run_id
    metrics = [m for h in result.history for m in epoch_metrics(h)]
    client.log_batch(run_id, metrics=metrics, params=config_params(cfg),
                     tags=[RunTag("sweeplab.status", "completed"), RunTag("sweeplab.run_folder", str(folder))])
    for name in RUN_FILES:
        client.log_artifact(run_id, str(folder / name))
    with tempfile.TemporaryDirectory() as tmp:
        _figures(Path(tmp), result.history, result.confusion, result.class_names, folder.name)
        client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, "FINISHED")
    return run_id
