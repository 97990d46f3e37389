"""What goes into MLflow runs: flattened params, per-epoch metrics, provenance tags."""
from __future__ import annotations

import contextlib
import getpass
import json
import socket
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.compose import flatten, project_root
from sweeplab.config.schema import shared_key
from sweeplab.metrics import FINAL_ONLY_KEYS, METRIC_KEYS, SYSTEM_PREFIX, TrialStatus

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param
    from omegaconf import DictConfig

    from sweeplab.train import TrainResult


# a PBT exploit's values, as tags of the trial's run: <prefix><key> = the value it trains on since its last exploit
# (params, set once, keep the values it was asked with)
EXPLOITED_PREFIX = "sweeplab.pbt."


def param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def config_params(cfg: DictConfig) -> list[Param]:
    """Leaf values of the resolved config, so runs compare column by column in the UI."""
    from mlflow.entities import Param

    return [Param(k, param_value(v)) for k, v in flatten(cfg).items() if not shared_key(k) and k != "data.root"]


def epoch_metrics(result: dict[str, float]) -> list[Metric]:
    from mlflow.entities import Metric

    step = int(result["epoch"])
    stamp = int(time.time() * 1000)
    out = [Metric(k, float(v), stamp, step) for k, v in result.items()
           if k in METRIC_KEYS or k.startswith(SYSTEM_PREFIX)]
    if "params" in result:
        out.append(Metric("params", float(result["params"]), stamp, step))
    return out


def provenance_tags(root: Path | None = None) -> dict[str, str]:
    """Where a run came from, for the sweep's parent run: host, user, entry point and installed versions always;
    the git commit and dirty flag only when the project root is a git checkout (a Docker image has no .git)."""
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    tags = {"host": socket.gethostname(), MLFLOW_SOURCE_NAME: "sweeplab", MLFLOW_SOURCE_TYPE: "LOCAL"}
    with contextlib.suppress(KeyError, OSError):  # a container user with no passwd entry and no $USER
        tags[MLFLOW_USER] = getpass.getuser()
    tags |= _git_tags(project_root() if root is None else root)
    for package in ("sweeplab", "torch", "torchvision", "ray", "optuna", "mlflow", "hydra-core"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{package}"] = metadata.version(package)
    return tags


def _git_tags(root: Path) -> dict[str, str]:
    """The commit and dirty flag of ``root`` when it is the top of a git checkout, else nothing (never the
    commit of some repository that merely encloses it)."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return {}
    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    if not commit:
        return {}
    return {MLFLOW_GIT_COMMIT: commit, "git.dirty": str(bool(status)).lower()}


def dataset_inputs(record: dict[str, Any], context: str = "training") -> list[Any]:
    """A run's dataset (its dataset.json, sweeplab.data.dataset_record) as an MLflow run input: name, digest,
    source (data.root as a local source, or the package that ships it) and the split sizes as its profile."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = record["source"]
    local = source.startswith("/")
    dataset = Dataset(name=record["name"], digest=record["digest"], source_type="local" if local else "code",
                      source=json.dumps({"uri": Path(source).as_uri()} if local
                                        else {"tags": {"mlflow.source.name": source}}),
                      profile=json.dumps({"num_train": record["num_train"], "num_val": record["num_val"]}))
    return [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]


class TrainRun:
    """`sweeplab train`'s one run (experiment 'train' unless tracking.experiment says otherwise), made before
    training: its params, each epoch's metrics as the epoch ends, then its test metrics, dataset, the files of
    its run folder, its two figures and its MLflow Model; or, when the training fails, the reason."""

    def __init__(self, cfg: DictConfig, folder: Path) -> None:
        from sweeplab.tracking.store import artifact_root, client_for, get_or_create_experiment, tracking_uri

        self.client = client_for(tracking_uri(cfg))
        experiment_id = get_or_create_experiment(self.client, cfg.tracking.experiment or "train", artifact_root(cfg))
        tags = {"sweeplab.kind": "train", "sweeplab.status": TrialStatus.RUNNING.value, **provenance_tags()}
        self.run_id = self.client.create_run(experiment_id, run_name=folder.name, tags=tags).info.run_id
        self.client.log_batch(self.run_id, params=config_params(cfg))
        self._unsent: list[Metric] = []

    def log_epoch(self, result: dict[str, float]) -> None:
        """An epoch's metrics as it ends. A store that stops answering does not stop the training: what it
        missed is sent with the next epoch's, or at the end."""
        self._unsent += epoch_metrics(result)
        with contextlib.suppress(Exception):
            self.client.log_batch(self.run_id, metrics=self._unsent)
            self._unsent = []

    def finish(self, result: TrainResult, folder: Path) -> None:
        """The trained run's end: tagged with its run folder (which exists only once training ended), its files,
        then completed and FINISHED, as a sweep's trial ends (``end_trial_run``)."""
        from mlflow.entities import RunTag

        from sweeplab.run_files import RUN_FILES, read_dataset
        from sweeplab.tracking.artifacts import figures
        from sweeplab.tracking.models import log_model

        self.client.log_batch(self.run_id, metrics=[*self._unsent, *final_metrics(result.metrics)],
                              tags=[RunTag("sweeplab.run_folder", str(folder))])
        self._unsent = []
        self.client.log_inputs(self.run_id, datasets=dataset_inputs(read_dataset(folder / "dataset.json")))
        for name in RUN_FILES:
            self.client.log_artifact(self.run_id, str(folder / name))
        with tempfile.TemporaryDirectory() as tmp:
            figures(Path(tmp), result.history, result.confusion, result.class_names, folder.name)
            self.client.log_artifacts(self.run_id, tmp)
        log_model(self.client, self.run_id, folder)
        self.client.set_tag(self.run_id, "sweeplab.status", TrialStatus.COMPLETED.value)
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, err: BaseException) -> None:
        """A training that raised: FAILED with the reason, as a sweep's trial ends (invalid: a config that cannot
        train; error: a crash), or KILLED when interrupted. Errors of the store are dropped: the training's own
        error is the one its user needs to see."""
        from mlflow.entities import RunTag

        from sweeplab.errors import UserError

        with contextlib.suppress(Exception):
            if isinstance(err, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (sweeplab.cli)
                self.client.log_batch(self.run_id, metrics=self._unsent)
                self.client.set_terminated(self.run_id, "KILLED")
                return
            status = TrialStatus.INVALID if isinstance(err, UserError) else TrialStatus.ERROR
            reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            tags = [RunTag("sweeplab.status", status.value), RunTag("sweeplab.failure_reason", reason[:5000])]
            self.client.log_batch(self.run_id, metrics=self._unsent, tags=tags)
            self.client.set_terminated(self.run_id, "FAILED")


def final_metrics(final: dict[str, float]) -> list[Metric]:
    """The metrics scored once after training (FINAL_ONLY_KEYS: the test split's), at the last epoch's step."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    return [Metric(k, float(final[k]), stamp, int(final["epoch"])) for k in FINAL_ONLY_KEYS if k in final]
