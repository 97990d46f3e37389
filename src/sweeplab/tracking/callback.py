"""MLflow tracking of a sweep from the Ray Tune driver.

One parent run per sweep launch and one child run per trial. Only the driver
writes to the store, so eight concurrent trials never contend for the SQLite
file; metrics go out asynchronously in one batch per epoch. A retried or
resumed trial finds its own child run again (tag sweeplab.trial_name) and
skips epochs already logged.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from sweeplab.metrics import TrialEnd, TrialStatus, error_line, trial_end
from sweeplab.tracking import runs


class MlflowSweepTracker(tune.Callback):
    def __init__(self, cfg, plan, sweep_id: str) -> None:
        from omegaconf import OmegaConf

        from sweeplab.tracking.store import artifact_root, tracking_uri

        self.uri = tracking_uri(cfg)
        self.artifact_root = artifact_root(cfg)
        self.experiment_name = cfg.tracking.experiment or plan.name
        self.async_logging = bool(cfg.tracking.async_logging)
        self.sweep_id = sweep_id
        self.sweep_file = str(plan.sweep_file)
        self.plan_info = {
            "sweep_id": sweep_id,
            "sweep_name": plan.name,
            "sampler": plan.cfg.sweep.sampler,
            "scheduler": json.dumps(OmegaConf.to_container(plan.cfg.sweep.scheduler)),
            "space": json.dumps(OmegaConf.to_container(plan.cfg.sweep.space)),
            "objectives": json.dumps(plan.objectives),
            "seeds": json.dumps(list(plan.cfg.sweep.seeds)),
            "num_configs": str(plan.num_configs),
            "max_epochs": str(plan.cfg.train.epochs),
            "overrides": json.dumps(plan.overrides),
            "optuna_storage": plan.optuna_storage,
        }
        self.spec = None  # the TrialSpec, set by launch_sweep
        self._client = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}  # trial name -> run id
        self._last_step: dict[str, int] = {}
        self._pending: list = []  # async log_batch operations
        self._placed: set[str] = set()
        self._restarts: dict[str, int] = {}  # trial name -> restarts before this launch (resume)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into tuner.pkl
        state = dict(self.__dict__)
        state.update(_client=None, _pending=[])
        return state

    @property
    def client(self):
        if self._client is None:
            from sweeplab.tracking.store import client_for

            self._client = client_for(self.uri)
        return self._client

    # -- the sweep's parent run ----------------------------------------------------------
    def setup(self, **info) -> None:
        from mlflow.entities import Param, RunTag

        from sweeplab.tracking.store import get_or_create_experiment

        self.experiment_id = get_or_create_experiment(self.client, self.experiment_name, self.artifact_root)
        found = self.client.search_runs([self.experiment_id], f"tags.`sweeplab.sweep_id` = '{self.sweep_id}' "
                                        "and tags.`sweeplab.kind` = 'sweep'", max_results=1)
        if found:  # a resumed sweep keeps its parent run
            self.parent_run_id = found[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            for child in self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                                                 max_results=5000):
                self._children[child.data.tags.get("sweeplab.trial_name")] = child.info.run_id
                if child.info.status == "RUNNING":  # cut off by the interruption: it restarts
                    self._restarts[child.data.tags.get("sweeplab.trial_name")] = int(child.data.tags.get("sweeplab.restarts", "0"))
                history = self.client.get_metric_history(child.info.run_id, "val/loss")
                self._last_step[child.data.tags.get("sweeplab.trial_name")] = max((m.step for m in history), default=0)
            return
        tags = {"sweeplab.kind": "sweep", "sweeplab.sweep_id": self.sweep_id, **runs.provenance_tags()}
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_id, tags=tags)
        self.parent_run_id = run.info.run_id
        self.client.log_batch(self.parent_run_id, params=[Param(k, runs.param_value(v)) for k, v in self.plan_info.items()],
                              tags=[RunTag("mlflow.note.content", f"sweeplab sweep {self.plan_info['sweep_name']}: "
                                           f"sampler {self.plan_info['sampler']}, space {self.plan_info['space']}")])
        self.client.log_artifact(self.parent_run_id, self.sweep_file, "sweep")

    # -- one child run per trial -------------------------------------------------------------
    def _child(self, trial) -> str:
        name = str(trial)
        if name in self._children:
            return self._children[name]
        from mlflow.entities import Param

        from sweeplab.errors import UserError
        from sweeplab.sweep.trainable import compose_trial

        try:
            params = runs.config_params(compose_trial(self.spec, trial.config))
        except UserError:  # the trial itself will end invalid with the reason; log what was sampled
            params = [Param(k, runs.param_value(v)) for k, v in trial.config.items()]
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "sweeplab.kind": "trial",
            "sweeplab.sweep_id": self.sweep_id,
            "sweeplab.trial_name": name,
            "sweeplab.trial_id": trial.trial_id,
            "sweeplab.optuna_trial": str(trial.config.get("optuna_trial")),
            "sweeplab.status": "running",
            "sweeplab.restarts": "0",
        }
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = [p for p in params if p.key != "optuna_trial"] + [Param("optuna_trial", str(trial.config.get("optuna_trial")))]
        self.client.log_batch(run.info.run_id, params=params)  # the client splits it into batches of 100
        self._children[name] = run.info.run_id
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._child(trial)
        name = str(trial)
        if name in self._restarts:  # continued by a resumed sweep
            self._restarts[name] += 1
            self.client.set_tag(run_id, "sweeplab.restarts", str(self._restarts[name] + trial.num_failures))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("invalid") or "epoch" not in result:
            return
        run_id, name = self._child(trial), str(trial)
        step = int(result["epoch"])
        if step <= self._last_step.get(name, 0):
            return  # a retried trial repeats no epoch it already logged
        self._last_step[name] = step
        if step == 1 or name not in self._placed:
            self._placed.add(name)
            self.client.set_tag(run_id, "sweeplab.placement",
                                f"node {result.get('node_ip', '?')}, GPUs [{result.get('gpu_ids', '')}]")
        operation = self.client.log_batch(run_id, metrics=runs.epoch_metrics(result),
                                          synchronous=False if self.async_logging else None)
        if operation is not None:
            self._pending.append(operation)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.client.set_tag(self._child(trial), "sweeplab.restarts",
                            str(self._restarts.get(str(trial), 0) + trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        objectives = [metric for metric, _ in json.loads(self.plan_info["objectives"])]
        self._finish(trial, trial_end(trial.last_result, int(self.plan_info["max_epochs"]), objectives))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, trial_end(trial.last_result, int(self.plan_info["max_epochs"]), error=error_line(trial)))

    def _finish(self, trial, end: TrialEnd) -> None:
        from mlflow.entities import RunTag

        run_id = self._child(trial)
        restarts = self._restarts.get(str(trial), 0) + trial.num_failures
        tags = [RunTag("sweeplab.status", end.status.value), RunTag("sweeplab.restarts", str(restarts))]
        if end.reason:
            tags.append(RunTag("sweeplab.failure_reason", end.reason[:5000]))
        self.client.log_batch(run_id, tags=tags)
        if trial.checkpoint is not None:
            self._log_checkpoint(run_id, trial)
        self.client.set_terminated(run_id, "FAILED" if end.status == TrialStatus.ERROR else "FINISHED")

    def _log_checkpoint(self, run_id: str, trial) -> None:
        """Artifacts come from the trial's last checkpoint, which Ray keeps in shared storage."""
        import torch

        from sweeplab.tracking.artifacts import write_run_artifacts

        with trial.checkpoint.as_directory() as folder:
            folder = Path(folder)
            state = torch.load(folder / "state.pt", weights_only=False)
            config_yaml = (folder / "config.yaml").read_text()
            summary = (folder / "model_summary.txt").read_text()
        classes = state.get("class_names") or [str(i) for i in range(len(state["confusion"]))]
        with tempfile.TemporaryDirectory() as tmp:
            write_run_artifacts(Path(tmp), state, config_yaml, summary, classes, str(trial))
            self.client.log_artifacts(run_id, tmp)

    # -- the end: sweep artifacts on the parent -----------------------------------------------
    def on_experiment_end(self, trials, **info) -> None:
        for operation in self._pending:
            operation.wait()
        self._pending.clear()
        from sweeplab.tracking.report import build_report

        try:
            build_report(self.client, self.parent_run_id, log_to_parent=True)
        finally:
            self.client.set_terminated(self.parent_run_id, "FINISHED")
