"""MLflow tracking of a sweep from the Ray Tune driver.

One parent run per sweep launch and one child run per trial. Only the driver
writes to the store, so eight concurrent trials never contend for the SQLite
file. Every MLflow call goes through one background thread, in order, so Tune's
event loop never waits for the store and the next trial starts at once. A trial's
artifacts are the files its last checkpoint holds (sweeplab.run_files), logged
as they are: nothing is rendered per trial; the best trial's figures are drawn
once, at the end. A retried or resumed trial finds its own child run again (tag
sweeplab.trial_name) and skips epochs already logged.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.experiment import Trial

from sweeplab.metrics import TrialEnd, TrialStatus, error_line, trial_end
from sweeplab.redact import hide, redact, reveal
from sweeplab.sweep.samplers import sampler_label
from sweeplab.sweep.storage import experiment_path, ray_root
from sweeplab.tracking import runs

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from omegaconf import DictConfig

    from sweeplab.sweep.plan import SweepPlan
    from sweeplab.sweep.trainable import TrialSpec


class MlflowSweepTracker(tune.Callback):
    def __init__(self, cfg: DictConfig, plan: SweepPlan, sweep_id: str, spec: TrialSpec) -> None:
        from omegaconf import OmegaConf

        from sweeplab.tracking.store import artifact_root, tracking_uri

        self.uri = hide(tracking_uri(cfg))  # Tune pickles callbacks into tuner.pkl: no password there
        self.artifact_root = artifact_root(cfg)
        self.experiment_name = cfg.tracking.experiment or plan.name
        self.background = bool(cfg.tracking.async_logging)
        self.sweep_id = sweep_id
        self.sweep_file = str(plan.sweep_file)
        self.optuna_storage = hide(plan.optuna_storage)
        self.log_models = int(cfg.tracking.log_models)
        self.plan_info = {
            "sweep_id": sweep_id,
            "sweep_name": plan.name,
            "sampler": sampler_label(plan.cfg.sweep.sampler),
            "scheduler": json.dumps(OmegaConf.to_container(plan.cfg.sweep.scheduler)),
            "space": json.dumps(OmegaConf.to_container(plan.cfg.sweep.space)),
            "objectives": json.dumps(plan.objectives),
            "seeds": json.dumps(list(plan.cfg.sweep.seeds)),
            "num_configs": str(plan.num_configs),
            "max_epochs": str(plan.cfg.train.epochs),
            "overrides": json.dumps([redact(o) for o in plan.overrides]),
            "optuna_storage": redact(plan.optuna_storage),
            "ray_path": experiment_path(ray_root(plan), sweep_id),  # what Tuner.restore / ExperimentAnalysis open
        }
        self.spec = spec  # the TrialSpec: composes a trial's config for its params
        self._client: MlflowClient | None = None
        self._queue: ThreadPoolExecutor | None = None
        self._failed: list[str] = []
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}  # trial name -> run id
        self._last_step: dict[str, int] = {}
        self._placed: set[str] = set()
        self._restarts: dict[str, int] = {}  # trial name -> restarts before this launch (resume)
        self._ended: set[str] = set()  # trials whose run has its final status (the rest are open)
        self._source_tags: dict[str, str] = {}  # MLflow's source/user/commit tags, for every child run too

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into tuner.pkl
        return {**self.__dict__, "_client": None, "_queue": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from sweeplab.tracking.store import client_for

            self._client = client_for(reveal(self.uri))
        return self._client

    def _submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call(*args)`` on the tracking thread, after every call submitted before it."""
        if not self.background:
            self._run(call, *args)
            return
        if self._queue is None:
            self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeplab-mlflow")
        self._queue.submit(self._run, call, *args)

    def _run(self, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except Exception as err:  # a tracking failure must not end the sweep; it is reported at the end
            self._failed.append(f"{getattr(call, '__name__', call)}: {str(err).splitlines()[0][:300]}")

    def _drain(self) -> None:
        if self._queue is not None:
            self._queue.shutdown(wait=True)
            self._queue = None

    # -- the sweep's parent run ----------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        from mlflow.entities import Param, RunTag

        from sweeplab.tracking.store import get_or_create_experiment

        self.experiment_id = get_or_create_experiment(self.client, self.experiment_name, self.artifact_root)
        found = self.client.search_runs([self.experiment_id], f"tags.`sweeplab.sweep_id` = '{self.sweep_id}' "
                                        "and tags.`sweeplab.kind` = 'sweep'", max_results=1)
        if found:  # a resumed sweep keeps its parent run
            self._reopen(self.experiment_id, found[0].info.run_id)
            return
        provenance = runs.provenance_tags()
        self._source_tags = {k: v for k, v in provenance.items() if k.startswith("mlflow.")}
        tags = {"sweeplab.kind": "sweep", "sweeplab.sweep_id": self.sweep_id, **provenance}
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_id, tags=tags)
        self.parent_run_id = run.info.run_id
        params = [Param(k, runs.param_value(v)) for k, v in self.plan_info.items()]
        self.client.log_batch(self.parent_run_id, params=params,
                              tags=[RunTag("mlflow.note.content", f"sweeplab sweep {self.plan_info['sweep_name']}: "
                                           f"sampler {self.plan_info['sampler']}, space {self.plan_info['space']}")])
        self.client.log_artifact(self.parent_run_id, self.sweep_file, "sweep")

    def _reopen(self, experiment_id: str, parent_run_id: str) -> None:
        self.parent_run_id = parent_run_id
        self._source_tags = {k: v for k, v in runs.provenance_tags().items() if k.startswith("mlflow.")}
        self.client.update_run(parent_run_id, status="RUNNING")
        for child in self.client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                             max_results=5000):
            name = child.data.tags["sweeplab.trial_name"]
            self._children[name] = child.info.run_id
            if child.info.status in ("RUNNING", "KILLED"):  # cut off by the interruption: it restarts
                self._restarts[name] = int(child.data.tags.get("sweeplab.restarts", "0"))
            else:
                self._ended.add(name)
            history = self.client.get_metric_history(child.info.run_id, "val/loss")
            self._last_step[name] = max((m.step for m in history), default=0)

    # -- one child run per trial -------------------------------------------------------------
    def _create_child(self, name: str, trial_id: str, config: dict[str, Any]) -> None:
        if name in self._children:
            return
        from mlflow.entities import Param

        from sweeplab.errors import UserError
        from sweeplab.sweep.trainable import compose_trial

        try:
            params = runs.config_params(compose_trial(self.spec, config))
        except UserError:  # the trial itself will end invalid with the reason; log what was sampled
            params = [Param(k, runs.param_value(v)) for k, v in config.items()]
        tags = {
            **self._source_tags,
            "mlflow.parentRunId": str(self.parent_run_id),
            "sweeplab.kind": "trial",
            "sweeplab.sweep_id": self.sweep_id,
            "sweeplab.trial_name": name,
            "sweeplab.trial_id": trial_id,
            "sweeplab.optuna_trial": str(config.get("optuna_trial")),
            "sweeplab.status": "running",
            "sweeplab.restarts": "0",
        }
        assert self.experiment_id is not None, "setup() creates the experiment before any trial starts"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        number = Param("optuna_trial", str(config.get("optuna_trial")))
        params = [p for p in params if p.key != "optuna_trial"] + [number]
        self.client.log_batch(run.info.run_id, params=params)  # the client splits it into batches of 100
        self._children[name] = run.info.run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        name = str(trial)
        self._submit(self._create_child, name, trial.trial_id, dict(trial.config))
        if name in self._restarts:  # continued by a resumed sweep
            self._restarts[name] += 1
            self._submit(self._mark, name, "RUNNING")
            self._submit(self._set_tag, name, "sweeplab.restarts", str(self._restarts[name] + trial.num_failures))

    def _mark(self, name: str, status: str) -> None:
        self.client.update_run(self._children[name], status=status)

    def _set_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_tag(self._children[name], key, value)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if result.get("invalid") or "epoch" not in result:
            return
        name = str(trial)
        step = int(result["epoch"])
        if step <= self._last_step.get(name, 0):
            return  # a retried trial repeats no epoch it already logged
        self._last_step[name] = step
        if name not in self._placed:
            self._placed.add(name)
            pack = f", pack {result['pack']}" if "pack" in result else ""  # sweep.fuse
            self._submit(self._set_tag, name, "sweeplab.placement",
                         f"node {result.get('node_ip', '?')}, GPUs [{result.get('gpu_ids', '')}]{pack}")
        self._submit(self._log_epoch, name, runs.epoch_metrics(result))

    def _log_epoch(self, name: str, metrics: list[Any]) -> None:
        self.client.log_batch(self._children[name], metrics=metrics)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit(self._set_tag, str(trial), "sweeplab.restarts",
                     str(self._restarts.get(str(trial), 0) + trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        objectives = [metric for metric, _ in json.loads(self.plan_info["objectives"])]
        self._finish(trial, trial_end(trial.last_result, int(self.plan_info["max_epochs"]), objectives))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, trial_end(trial.last_result, int(self.plan_info["max_epochs"]), error=error_line(trial)))

    def _finish(self, trial: Trial, end: TrialEnd) -> None:
        restarts = self._restarts.get(str(trial), 0) + trial.num_failures
        self._ended.add(str(trial))
        self._submit(self._end_child, str(trial), end, restarts, trial.checkpoint)

    def _end_child(self, name: str, end: TrialEnd, restarts: int, checkpoint: tune.Checkpoint | None) -> None:
        from mlflow.entities import RunTag

        run_id = self._children[name]
        tags = [RunTag("sweeplab.status", end.status.value), RunTag("sweeplab.restarts", str(restarts))]
        if end.reason:
            tags.append(RunTag("sweeplab.failure_reason", end.reason[:5000]))
        self.client.log_batch(run_id, tags=tags)
        if checkpoint is not None:
            self._log_checkpoint(run_id, checkpoint)
        self.client.set_terminated(run_id, "FAILED" if end.status == TrialStatus.ERROR else "FINISHED")

    def _log_checkpoint(self, run_id: str, checkpoint: tune.Checkpoint) -> None:
        """The trial's files, as its last checkpoint (in Ray's shared storage) holds them, and its dataset."""
        from sweeplab.run_files import RUN_FILES, read_dataset

        with checkpoint.as_directory() as folder:
            for name in RUN_FILES:
                if (Path(folder) / name).exists():
                    self.client.log_artifact(run_id, str(Path(folder) / name))
            dataset = Path(folder) / "dataset.json"
            if dataset.exists():
                self.client.log_inputs(run_id, datasets=runs.dataset_inputs(read_dataset(dataset)))

    # -- the end: figures of the best trial, the report on the parent -------------------------
    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Every trial's calls are done; the best trial's figures and the report are drawn on the tracking
        thread while the driver shuts Ray down (``finish`` waits for them)."""
        self._drain()
        if self.parent_run_id is None:  # setup() never ran
            return
        open_runs = [name for name in self._children if name not in self._ended]
        planned = int(self.plan_info["num_configs"]) * len(json.loads(self.plan_info["seeds"]))
        if open_runs or len(trials) < planned:  # stopped (Ctrl-C, SIGTERM): --resume continues every run
            self._submit(self._kill, self.parent_run_id, open_runs)
        else:
            self._submit(self._conclude, self.parent_run_id)

    def _kill(self, parent: str, names: list[str]) -> None:
        """An interrupted sweep: its parent and the runs of unfinished trials end KILLED, not FINISHED."""
        for name in names:
            self._run(self.client.set_terminated, self._children[name], "KILLED")
        self.client.set_terminated(parent, "KILLED")

    def _conclude(self, parent: str) -> None:
        from sweeplab.tracking.report import build_report

        try:
            self._run(log_sweep_metrics, self.client, parent, reveal(self.optuna_storage), self.sweep_id)
            self._run(log_best_trial_figures, self.client, parent, reveal(self.optuna_storage), self.sweep_id)
            self._run(log_best_models, self.client, parent, reveal(self.optuna_storage), self.sweep_id, self.log_models)
            self._run(build_report, self.client, parent, None, True, reveal(self.optuna_storage))
        finally:
            self.client.set_terminated(parent, "FINISHED")

    def finish(self) -> None:
        """Wait for every MLflow call, the report included; say what failed."""
        self._drain()
        if self._failed:
            print(f"sweeplab sweep: {len(self._failed)} MLflow call(s) failed; first: {self._failed[0]}",
                  file=sys.stderr, flush=True)
            self._failed.clear()


def log_sweep_metrics(client: MlflowClient, parent_run_id: str, optuna_storage: str, sweep_id: str) -> None:
    """The sweep's best value and its trials by status as metrics of the parent run, so sweeps sort and
    compare in the MLflow UI (``best/val/acc``, ``trials/completed``, ...)."""
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
    client.log_batch(parent_run_id, metrics=metrics)


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
