"""MLflow tracking of a sweep from the Ray Tune driver.

One parent run per sweep launch and one child run per trial. Only the driver
writes to the store, so eight concurrent trials never contend for the SQLite
file. Every MLflow call goes through one background thread, in order, so Tune's
event loop never waits for the store and the next trial starts at once; from 128 trials
the client it calls runs in a process of its own (sweeplab.tracking.client_process), and the
calls that do more than call MLflow run there whole (sweeplab.sweep.tracker_calls). A trial's
artifacts are the files its last checkpoint holds (sweeplab.run_files), logged
as they are: nothing is rendered per trial; the best trial's figures are drawn
once, at the end. A retried or resumed trial finds its own child run again (tag
sweeplab.trial_name) and skips epochs already logged.

A tracking store that goes down does not stop the sweep: every call is journaled on disk before it is
tried (sweeplab.tracking.outbox) and sent when the store answers again; what is still unsent at the end
is sent by ``sweeplab sync`` (or a resumed sweep). Each call therefore takes JSON arguments and, when it
may have reached the store before, first checks what is there, so that nothing is logged twice.
"""
from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, cast

from ray import tune
from ray.tune.experiment import Trial

from sweeplab.metrics import TrialEnd, error_line, result_config, trial_end
from sweeplab.redact import hide, redact, reveal
from sweeplab.sweep import tracker_calls as calls
from sweeplab.sweep.samplers import sampler_label
from sweeplab.sweep.storage import experiment_path, ray_root
from sweeplab.tracking import runs
from sweeplab.tracking.client_process import wanted as client_process_wanted
from sweeplab.tracking.client_process import with_client
from sweeplab.tracking.journal import Journal, journal_path
from sweeplab.tracking.outbox import Outbox

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from omegaconf import DictConfig

    from sweeplab.sweep.plan import SweepPlan
    from sweeplab.sweep.trainable import TrialSpec
    from sweeplab.tracking.client_process import ClientProcess


class Call(enum.StrEnum):
    """The tracking calls a sweep journals; each is the tracker method ``_<value>``."""

    CREATE_CHILD = "create_child"
    SET_TAG = "set_tag"
    LOG_EPOCH = "log_epoch"
    END_CHILD = "end_child"
    MARK = "mark"
    KILL = "kill"
    CONCLUDE = "conclude"


def own_checkpoint(trial: Trial) -> dict[str, str] | None:
    """The trial's latest checkpoint, journaled as its place in Ray's storage, whose files its run gets; None where it
    has none of its own: after a PBT exploit, until the trial saves one, Ray's latest is the donor's, whose files
    (config, weights) are another trial's."""
    checkpoint = trial.checkpoint
    if checkpoint is None or trial.path is None or \
            not PurePosixPath(checkpoint.path).is_relative_to(PurePosixPath(trial.path)):
        return None
    fs = checkpoint.filesystem.type_name if checkpoint.filesystem is not None else "local"
    return {"path": checkpoint.path, "fs": fs}


class MlflowSweepTracker(tune.Callback):
    def __init__(self, cfg: DictConfig, plan: SweepPlan, sweep_id: str, spec: TrialSpec,
                 sync_command: str) -> None:
        from omegaconf import OmegaConf

        from sweeplab.tracking.store import artifact_root, tracking_uri

        self.uri = hide(tracking_uri(cfg))  # Tune pickles callbacks into tuner.pkl: no password there
        self.artifact_root = artifact_root(cfg)
        self.experiment_name = cfg.tracking.experiment or plan.name
        self.background = bool(cfg.tracking.async_logging)
        self.flush_wait_s = float(cfg.tracking.flush_wait_s)
        self.in_own_process = client_process_wanted(cfg.tracking.client_process, plan.num_trials)
        self.journal_file = journal_path(cfg.output_dir, sweep_id)
        self.sync_command = sync_command  # sends what a down store missed (launch.sync_command)
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
        self._outbox: Outbox | None = None
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._children: dict[str, str] = {}  # trial name -> run id
        self._last_step: dict[str, int] = {}
        self._seen_config: dict[str, dict] = {}  # trial name -> the config of its last result
        self._restarted: set[str] = set()  # trials of _restarts this launch has started
        self._placed: set[str] = set()
        self._restarts: dict[str, int] = {}  # trial name -> restarts before this launch (resume)
        self._ended: set[str] = set()  # trials whose run has its final status (the rest are open)
        # trials started in this launch or left open by the last, kept on Tune's thread: _children fills only as
        # the store answers, on the tracking thread
        self._opened: set[str] = set()
        self._source_tags: dict[str, str] = {}  # MLflow's source/user/commit tags, for every child run too

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into tuner.pkl
        return {**self.__dict__, "_client": None, "_outbox": None}

    @property
    def client(self) -> MlflowClient:
        """An MlflowClient, or its methods run in a process of their own (sweeplab.tracking.client_process)."""
        if self._client is None:
            from sweeplab.tracking.client_process import client_process
            from sweeplab.tracking.store import client_for

            uri = reveal(self.uri)
            self._client = cast("MlflowClient", client_process(uri)) if self.in_own_process else client_for(uri)
        return self._client

    @property
    def outbox(self) -> Outbox:
        """The journal of this sweep's calls and the thread that sends them (an earlier launch's unsent calls
        first)."""
        if self._outbox is None:
            self._outbox = Outbox(Journal(self.journal_file), self._send, self._store_answers, self.background)
        return self._outbox

    def _submit(self, call: Call, **args: Any) -> None:
        """Journal ``call(**args)``, then run it on the tracking thread after every call submitted before it."""
        self.outbox.put(call.value, args)

    def _send(self, op: str, args: dict[str, Any], retry: bool) -> None:
        getattr(self, f"_{Call(op).value}")(retry=retry, **args)

    def _store_answers(self) -> bool:
        """Whether the tracking store is up: a failed call then failed for a reason of its own."""
        from sweeplab.tracking.store import check_reachable

        try:
            check_reachable(reveal(self.uri), timeout=3.0)
            self.client.search_experiments(max_results=1)
        except Exception:  # UserError included: the server's health check does not answer
            return False
        return True

    # -- the sweep's parent run ----------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        from mlflow.entities import Param, RunTag

        from sweeplab.tracking.store import get_or_create_experiment

        self.experiment_id = get_or_create_experiment(self.client, self.experiment_name, self.artifact_root)
        self._source_tags = {k: v for k, v in runs.provenance_tags().items() if k.startswith("mlflow.")}
        found = self._find_parent()
        if found:  # a resumed sweep keeps its parent run, and first sends what its last launch could not
            self.parent_run_id = found
            self.outbox.flush()
            self._reopen(self.experiment_id, found)
            return
        tags = {"sweeplab.kind": "sweep", "sweeplab.sweep_id": self.sweep_id, **runs.provenance_tags()}
        run = self.client.create_run(self.experiment_id, run_name=self.sweep_id, tags=tags)
        self.parent_run_id = run.info.run_id
        params = [Param(k, runs.param_value(v)) for k, v in self.plan_info.items()]
        self.client.log_batch(self.parent_run_id, params=params,
                              tags=[RunTag("mlflow.note.content", f"sweeplab sweep {self.plan_info['sweep_name']}: "
                                           f"sampler {self.plan_info['sampler']}, space {self.plan_info['space']}")])
        self.client.log_artifact(self.parent_run_id, self.sweep_file, "sweep")

    def _find_parent(self) -> str | None:
        """This sweep's parent run, made by an earlier launch, if any."""
        assert self.experiment_id is not None
        found = self.client.search_runs([self.experiment_id], f"tags.`sweeplab.sweep_id` = '{self.sweep_id}' "
                                        "and tags.`sweeplab.kind` = 'sweep'", max_results=1)
        return found[0].info.run_id if found else None

    def attach(self) -> bool:
        """Find the sweep's experiment and parent run without changing them (``sweeplab sync``); False when
        the store has neither."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return False
        self.experiment_id = experiment.experiment_id
        self.parent_run_id = self._find_parent()
        return self.parent_run_id is not None

    def _reopen(self, experiment_id: str, parent_run_id: str) -> None:
        self.parent_run_id = parent_run_id
        self.client.update_run(parent_run_id, status="RUNNING")
        for child in self.client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                             max_results=5000):
            name = child.data.tags["sweeplab.trial_name"]
            self._children[name] = child.info.run_id
            if child.info.status in ("RUNNING", "KILLED"):  # cut off by the interruption: it restarts
                self._restarts[name] = int(child.data.tags.get("sweeplab.restarts", "0"))
                self._opened.add(name)
            else:
                self._ended.add(name)
            history = self.client.get_metric_history(child.info.run_id, "val/loss")
            self._last_step[name] = max((m.step for m in history), default=0)
        for entry in self.outbox.journal.pending():  # epochs still unsent (the store went down again) count too
            if entry.op == Call.LOG_EPOCH:
                step = max(int(m[3]) for m in entry.args["metrics"])
                self._last_step[entry.args["name"]] = max(self._last_step.get(entry.args["name"], 0), step)

    # -- one child run per trial -------------------------------------------------------------
    def _child(self, name: str) -> str | None:
        """The run id of a trial's child run: known, or found by its tags (it may have been created by a call
        whose answer was lost, or by an earlier launch)."""
        if name not in self._children:
            found = self.client.search_runs(
                [str(self.experiment_id)], f"tags.`sweeplab.sweep_id` = '{self.sweep_id}' "
                f"and tags.`sweeplab.kind` = 'trial' and tags.`sweeplab.trial_name` = '{name}'", max_results=1)
            if not found:
                return None
            self._children[name] = found[0].info.run_id
        return self._children[name]

    def _create_child(self, name: str, trial_id: str, config: dict[str, Any], retry: bool = False) -> None:
        if name in self._children and not retry:
            return
        tags = {
            "mlflow.parentRunId": str(self.parent_run_id),
            "sweeplab.kind": "trial",
            "sweeplab.sweep_id": self.sweep_id,
            "sweeplab.trial_name": name,
            "sweeplab.trial_id": trial_id,
            "sweeplab.optuna_trial": str(config.get("optuna_trial")),
            "sweeplab.status": "running",
            "sweeplab.restarts": "0",
            **self._source_tags,
        }
        assert self.experiment_id is not None, "setup() creates the experiment before any trial starts"
        run_id = self._child(name) if retry else None  # made before the store stopped answering: params again
        self._children[name] = with_client(self.client, calls.trial_run, self.experiment_id, run_id, name, tags,
                                           self.spec, config)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        name = str(trial)
        self._opened.add(name)
        self._submit(Call.CREATE_CHILD, name=name, trial_id=trial.trial_id, config=dict(trial.config))
        if name in self._restarts and name not in self._restarted:  # continued by a resumed sweep: its KILLED run
            self._restarted.add(name)  # is running again (once: Tune starts a trial again after each pause too)
            self._restarts[name] += 1
            self._submit(Call.MARK, name=name, status="RUNNING")
            self._submit(Call.SET_TAG, name=name, key="sweeplab.restarts",
                         value=str(self._restarts[name] + trial.num_failures))

    def _mark(self, name: str, status: str, retry: bool = False) -> None:
        self.client.update_run(self._run_id(name), status=status)

    def _set_tag(self, name: str, key: str, value: str, retry: bool = False) -> None:
        self.client.set_tag(self._run_id(name), key, value)

    def _run_id(self, name: str) -> str:
        run_id = self._child(name)
        if run_id is None:  # only if its create_child call was refused; that failure is reported already
            raise LookupError(f"trial {name} has no MLflow run")
        return run_id

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if result.get("invalid") or "epoch" not in result:
            return
        name = str(trial)
        step = int(result["epoch"])
        config = result_config(result)
        exploited = config != self._seen_config.setdefault(name, config)  # PBT gave the trial another's config
        self._seen_config[name] = config
        if step <= self._last_step.get(name, 0) and not exploited:
            return  # a retried trial repeats no epoch it already logged
        # (an epoch again after an exploit: the donor was behind, and the trial trains those epochs anew from its
        # weights with the new values; its run logs them at their steps)
        self._last_step[name] = step
        tags: dict[str, str] = {}
        if exploited:  # the values it trains on from now, beside the params it was asked with (params are final)
            tags.update({f"{runs.EXPLOITED_PREFIX}{key}": runs.param_value(value) for key, value in config.items()
                         if key not in ("seed", "optuna_trial")})
        if name not in self._placed:  # where the trial runs: a tag sent with its first epoch's metrics
            self._placed.add(name)
            pack = f", pack {result['pack']}" if "pack" in result else ""  # sweep.fuse
            tags["sweeplab.placement"] = f"node {result.get('node_ip', '?')}, GPUs [{result.get('gpu_ids', '')}]{pack}"
        metrics = [[m.key, m.value, m.timestamp, m.step] for m in runs.epoch_metrics(result)]
        self._submit(Call.LOG_EPOCH, name=name, metrics=metrics, tags=tags)

    def _log_epoch(self, name: str, metrics: list[list[Any]], tags: dict[str, str] | None = None,
                   retry: bool = False) -> None:  # tags None: journaled by a version that sent them apart
        from mlflow.entities import Metric, RunTag

        run_id = self._run_id(name)
        batch = [Metric(key, value, timestamp, step) for key, value, timestamp, step in metrics]
        if retry:  # it may have gone through before the store stopped answering: skip what is there
            keys = {m.key for m in batch}
            logged = {key: {m.step for m in self.client.get_metric_history(run_id, key)} for key in keys}
            batch = [m for m in batch if m.step not in logged[m.key]]
        run_tags = [RunTag(key, value) for key, value in (tags or {}).items()]  # setting a tag again changes nothing
        if batch or run_tags:
            self.client.log_batch(run_id, metrics=batch, tags=run_tags)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit(Call.SET_TAG, name=str(trial), key="sweeplab.restarts",
                     value=str(self._restarts.get(str(trial), 0) + trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        objectives = [metric for metric, _ in json.loads(self.plan_info["objectives"])]
        self._finish(trial, trial_end(trial.last_result, int(self.plan_info["max_epochs"]), objectives))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        end = trial_end(trial.last_result, int(self.plan_info["max_epochs"]), error=error_line(trial))
        self._finish(trial, end, crashed=True)

    def _finish(self, trial: Trial, end: TrialEnd, crashed: bool = False) -> None:
        """``crashed``: Tune counted the failure that ended the trial, which no restart followed."""
        failures = max(trial.num_failures - 1, 0) if crashed else trial.num_failures
        restarts = self._restarts.get(str(trial), 0) + failures
        self._ended.add(str(trial))
        self._submit(Call.END_CHILD, name=str(trial), status=end.status.value, reason=end.reason,
                     restarts=restarts, checkpoint=own_checkpoint(trial))

    def _end_child(self, name: str, status: str, reason: str, restarts: int, checkpoint: dict[str, str] | None,
                   retry: bool = False) -> None:
        with_client(self.client, calls.end_trial_run, self._run_id(name), status, reason, restarts, checkpoint)

    # -- the end: figures of the best trial, the report on the parent -------------------------
    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """After every trial's calls, the best trial's figures and the report are drawn on the tracking
        thread while the driver shuts Ray down (``finish`` waits for them)."""
        if self.parent_run_id is None:  # setup() never ran
            return
        open_runs = sorted(self._opened - self._ended)
        planned = int(self.plan_info["num_configs"]) * len(json.loads(self.plan_info["seeds"]))
        if open_runs or len(trials) < planned:  # stopped (Ctrl-C, SIGTERM): --resume continues every run
            self._submit(Call.KILL, names=open_runs)
        else:
            self._submit(Call.CONCLUDE)

    def _kill(self, names: list[str], retry: bool = False) -> None:
        """An interrupted sweep: its parent and the runs of unfinished trials end KILLED, not FINISHED."""
        for name in names:
            self.client.set_terminated(self._run_id(name), "KILLED")
        self.client.set_terminated(str(self.parent_run_id), "KILLED")

    def _conclude(self, retry: bool = False) -> None:
        from sweeplab.tracking.report import log_report

        parent, storage = str(self.parent_run_id), reveal(self.optuna_storage)
        completed = self._drawing("sweep metrics", calls.log_sweep_metrics, parent, storage, self.sweep_id)
        self._drawing("figures", calls.log_best_trial_figures, parent, storage, self.sweep_id)
        if self.log_models > 0:  # its module imports torch
            self._drawing("models", calls.log_best_models, parent, storage, self.sweep_id, self.log_models)
        self._drawing("report", log_report, parent, storage)
        # a sweep with no completed configuration has failed, as the command's exit status says
        self.client.set_terminated(parent, "FAILED" if completed is False else "FINISHED")

    def _drawing(self, what: str, draw: Callable[..., object], *args: Any) -> object:
        """``draw(client, *args)`` (in the client process when there is one): what it returns, or None when it
        failed. A figure or report that cannot be drawn is reported and leaves the runs as they are; a store that
        went down meanwhile fails the whole call, which is tried again."""
        try:
            return with_client(self.client, draw, *args)
        except Exception as err:
            if not self._store_answers():
                raise
            self.outbox.failed.append(f"{what}: {redact(str(err).splitlines()[0][:300])}")
            return None

    def finish(self, command: str = "sweep") -> None:
        """Wait for every MLflow call, the report included, or for at most tracking.flush_wait_s while the store
        does not answer; say what failed and what is left to send, and how."""
        if self._outbox is None:
            return
        outbox, self._outbox = self._outbox, None

        def waiting(pending: int) -> None:
            print(f"sweeplab {command}: the MLflow store {self._shown_uri()} does not answer; waiting up to "
                  f"{self.flush_wait_s:g} s to send {pending} tracking call(s)", file=sys.stderr, flush=True)

        left = outbox.close(self.flush_wait_s, waiting)
        if self._client is not None and self.in_own_process:  # every call has been sent, or waits in the journal
            cast("ClientProcess", self._client).close()
            self._client = None
        if outbox.failed:
            print(f"sweeplab {command}: {len(outbox.failed)} MLflow call(s) failed; first: {outbox.failed[0]}",
                  file=sys.stderr, flush=True)
        if left:
            print(f"sweeplab {command}: {left} tracking call(s) not sent (the MLflow store {self._shown_uri()} does "
                  f"not answer), kept in {self.journal_file}; send them with: {self.sync_command}",
                  file=sys.stderr, flush=True)

    def _shown_uri(self) -> str:
        return redact(self.uri)
