"""The tracker's calls that do more than one MLflow call, each a module-level function of the client, so that
``with_client`` runs it on the tracking thread or, whole, in the tracker's client process: a trial's run with the
params of its composed config, a trial's end with its files, and the end of a sweep (its metrics, the best trial's
figures and Models). In the process, the composing, reading of the study and drawing they do stays out of the sweep
driver too, and each is one round trip.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.metrics import TrialStatus
from sweeplab.tracking import runs

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from sweeplab.sweep.trainable import TrialSpec


def warm_up(searched: int, models: bool = True) -> None:
    """Import what the end of a sweep draws with (matplotlib, plotly, Optuna's figures, MLflow's pytorch flavor:
    seconds of imports) while Ray starts, not after the last trial; Optuna's importance (it imports
    scikit-learn: 2 s of CPU) only when the report will draw it for the ``searched`` parameters, and MLflow's
    pytorch flavor (torch with it: 2.6 s) only when the end logs ``models``. Whatever fails here fails again at
    the end, which reports it; on this thread it would only print a traceback."""
    with contextlib.suppress(Exception):
        import optuna.visualization  # noqa: F401

        from sweeplab.tracking import report
        from sweeplab.tracking.artifacts import pyplot

        if report.draws_importance(searched):
            import optuna.importance  # noqa: F401
        if models:
            from sweeplab.tracking import models as mlflow_models

            mlflow_models.warm_up()
        pyplot()


def trial_run(client: MlflowClient, experiment_id: str, run_id: str | None, name: str, tags: dict[str, str],
              spec: TrialSpec, config: dict[str, Any]) -> str:
    """A trial's child run (created unless ``run_id`` names it) with the params of the config the trial composes
    from ``config``; its run id."""
    from mlflow.entities import Param

    from sweeplab.errors import UserError
    from sweeplab.sweep.trainable import compose_trial

    try:
        params = runs.config_params(compose_trial(spec, config))
    except UserError:  # the trial itself will end invalid with the reason; log what was sampled
        params = [Param(k, runs.param_value(v)) for k, v in config.items()]
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    number = Param("optuna_trial", str(config.get("optuna_trial")))
    # the searched config groups' options (model=vgg16), which the composed config does not name: vgg16's
    # model.name is vgg, and the report tells architectures apart by the option
    groups = [Param(key, str(config[key])) for key in spec.group_keys if key in config]
    named = {number.key, *(p.key for p in groups)}  # each key once: MLflow refuses a batch that repeats one
    params = [p for p in params if p.key not in named] + [number, *groups]
    client.log_batch(run_id, params=params)  # the client splits it into batches of 100; same values: no-op
    return run_id


def end_trial_run(client: MlflowClient, run_id: str, status: str, reason: str, restarts: int,
                  checkpoint: dict[str, str] | None) -> None:
    """A trial's end: the files of its last checkpoint (``{"path", "fs"}``: its place in Ray's storage), then its
    status tags and the run's final state: a run tagged completed has its files, which `sweeplab best --register`
    makes its model from (a store that went down midway leaves it running, and the whole call is sent again)."""
    from mlflow.entities import RunTag

    if checkpoint is not None:
        with _checkpoint_folder(checkpoint) as folder:
            log_run_files(client, run_id, folder)
    tags = [RunTag("sweeplab.status", status), RunTag("sweeplab.restarts", str(restarts))]
    if reason:
        tags.append(RunTag("sweeplab.failure_reason", reason[:5000]))
    client.log_batch(run_id, tags=tags)
    failed = status in (TrialStatus.ERROR, TrialStatus.INVALID)  # as Optuna is told: the UI's status column agrees
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


@contextlib.contextmanager
def _checkpoint_folder(where: dict[str, str]) -> Iterator[Path]:
    """A checkpoint's folder: itself on a local disk, a downloaded copy from remote storage (Ray's filesystems)."""
    if where["fs"] == "local":
        yield Path(where["path"])
        return
    from ray import tune

    with tune.Checkpoint(f"{where['fs']}://{where['path']}").as_directory() as folder:
        yield Path(folder)


def log_run_files(client: MlflowClient, run_id: str, folder: Path) -> None:
    """The trial's files as its checkpoint folder holds them (sweeplab.run_files), and its dataset."""
    from sweeplab.run_files import RUN_FILES, read_dataset

    for name in RUN_FILES:
        if (folder / name).exists():
            client.log_artifact(run_id, str(folder / name))
    if (folder / "dataset.json").exists():
        client.log_inputs(run_id, datasets=runs.dataset_inputs(read_dataset(folder / "dataset.json")))


def log_sweep_metrics(client: MlflowClient, parent_run_id: str, optuna_storage: str, sweep_id: str) -> bool:
    """The sweep's best value and its trials by status as metrics of the parent run, so sweeps sort and
    compare in the MLflow UI (``best/val/acc``, ``trials/completed``, ...); whether any configuration completed."""
    from mlflow.entities import Metric

    from sweeplab.sweep.results import load_outcome

    outcome = load_outcome(optuna_storage, sweep_id)
    stamp = int(time.time() * 1000)
    counts = {status.value: 0 for status in TrialStatus} | outcome.counts()
    metrics = [Metric(f"trials/{status}", float(n), stamp, 0) for status, n in counts.items()]
    best = outcome.best()
    if best is not None:
        metrics += [Metric(f"best/{metric}", best.value(i), stamp, 0)
                    for i, (metric, _) in enumerate(outcome.objectives)]
    logged = client.get_run(parent_run_id).data.metrics  # a retried end (the store went down) logs each once
    client.log_batch(parent_run_id, metrics=[m for m in metrics if logged.get(m.key) != m.value])
    return best is not None


def log_best_models(client: MlflowClient, parent_run_id: str, optuna_storage: str, sweep_id: str,
                    count: int) -> list[str]:
    """MLflow Models (runs:/<id>/model) for the ``count`` best trials, built once at the end from their
    logged files (sweeplab.tracking.models says why not per trial)."""
    from sweeplab.sweep.results import best_trial_runs
    from sweeplab.tracking.models import log_model

    return [log_model(client, run.info.run_id)
            for run in best_trial_runs(client, parent_run_id, optuna_storage, sweep_id, count)]


def log_best_trial_figures(client: MlflowClient, parent_run_id: str, optuna_storage: str, sweep_id: str) -> str | None:
    """Learning curves and confusion matrix of the sweep's best trial, drawn once at the end of the sweep
    (not per trial: MLflow already charts every run's metrics) and logged to that trial's run.
    Returns the run id, or None when no trial completed."""
    import tempfile

    from sweeplab.run_files import read_confusion
    from sweeplab.sweep.results import best_trial_runs
    from sweeplab.tracking.artifacts import figures

    found = best_trial_runs(client, parent_run_id, optuna_storage, sweep_id)
    if not found:
        return None
    run = found[0]
    keys = ("train/loss", "train/acc", "val/loss", "val/acc")
    steps: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run.info.run_id, key):
            steps.setdefault(m.step, {"epoch": m.step})[key] = m.value
    history = [steps[s] for s in sorted(steps) if len(steps[s]) == len(keys) + 1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        matrix_file = client.download_artifacts(run.info.run_id, "confusion_matrix.json", tmp)
        confusion, classes = read_confusion(Path(matrix_file))
        (folder / "confusion_matrix.json").unlink()
        figures(folder, history, confusion, classes, f"best trial: {run.info.run_name}")
        client.log_artifacts(run.info.run_id, tmp)
    return run.info.run_id
