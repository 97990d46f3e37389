"""A Ray Tune searcher backed by a persistent Optuna study (ask/tell).

Each configuration Optuna asks for runs once per seed. Every epoch of the first objective reaches
Optuna as an intermediate value (the mean over seeds, once every seed has reached that epoch);
when every seed has ended, the study is told the outcome:
- completed: the mean final-epoch value(s), COMPLETE;
- stopped by the scheduler: PRUNED with one objective (TPE still learns where it ended), FAIL
  with several, so a one-epoch value never enters NSGA-II's population or the Pareto front;
- invalid or crashed: FAIL.
The status and reason are kept as trial attributes, so `optuna` / optuna-dashboard show why.
Optuna's params are the values it asked for; where Population Based Training changed them during the
run, each seed's final values are kept beside its outcome (``seeds.<seed>.final_params``).
"""
from __future__ import annotations

import pickle
import statistics
from collections import deque
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.search import Searcher

from sweeplab.metrics import TrialStatus, error_line, result_config, trial_end
from sweeplab.redact import hide, reveal
from sweeplab.sweep.samplers import draws_by_trial_number, make_sampler, study_directions
from sweeplab.sweep.space import Dimension, sample
from sweeplab.tracking.study_store import open_storage


def _existing_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False))
    except KeyError:  # a new study
        return 0


_TRIALS: dict[str, Any] = {}  # Tune's Trial by its id, for a crashed trial's reason (TrialsSeen)


class TrialsSeen(Callback):
    """Tune tells a searcher only a trial's id; a crashed trial's reason is in its error file, which its Trial
    names. This driver-side callback keeps each started Trial at hand for ``OptunaSearcher.on_trial_complete``,
    which Tune calls before any callback's ``on_trial_error``; it holds no searcher (Tune pickles callbacks, and a
    resumed sweep's searcher is unpickled apart from them)."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _TRIALS[trial.trial_id] = trial


class OptunaSearcher(Searcher):
    def __init__(
        self,
        dims: list[Dimension],
        sampler: Any,  # sweep.sampler as plain data: a name or {_target_: ..., arguments}
        sampler_seed: int | None,
        storage: str,
        study_name: str,
        objectives: list[tuple[str, str]],  # [(metric, mode)], the first one drives the scheduler
        seeds: list[int],
        num_configs: int,
        max_epochs: int,
    ) -> None:
        super().__init__(metric=objectives[0][0], mode=objectives[0][1])
        self.dims = dims
        self.sampler_name, self.sampler_seed = sampler, sampler_seed
        self.storage, self.study_name = hide(storage), study_name  # pickled into Ray's folder: masked
        self.objectives, self.seeds = objectives, list(seeds)
        self.num_configs, self.max_epochs = num_configs, max_epochs
        self._backend: optuna.storages.BaseStorage | None = None
        self._study: optuna.Study | None = None
        self._asked = 0
        self._pending: deque[tuple[int, dict, int]] = deque()  # (optuna number, params, seed)
        self._live: dict[str, tuple[int, int]] = {}  # ray trial id -> (number, seed)
        self._outcomes: dict[int, dict[int, dict]] = {}  # number -> seed -> outcome
        self._curves: dict[int, dict[int, dict[int, float]]] = {}  # number -> seed -> epoch -> first objective
        self._reported: dict[int, int] = {}  # number -> last epoch given to Optuna as intermediate value
        self._storage_ids: dict[int, int] = {}  # number -> optuna storage trial id
        self._asked_params: dict[int, dict[str, Any]] = {}  # number -> the values Optuna asked for
        self._study_id: int | None = None
        self._last: dict[str, dict] = {}  # ray trial id -> its last result (HyperBand ends paused trials without one)

    # -- the study ---------------------------------------------------------------
    @property
    def backend(self) -> optuna.storages.BaseStorage:
        """The study's storage. Writing to a trial by its number after ask() (user attributes,
        intermediate values of several objectives) has no Study-level API; BaseStorage's has."""
        if self._backend is None:
            self._backend = open_storage(reveal(self.storage))
        return self._backend

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            directions = study_directions(self.objectives)
            seed = self.sampler_seed
            if seed is not None and not draws_by_trial_number(self.sampler_name):
                seed += _existing_trials(self.backend, self.study_name)  # a resumed sweep replays no random draw
            sampler = make_sampler(self.sampler_name, self.dims, seed, len(directions) > 1)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(storage=self.backend, study_name=self.study_name, sampler=sampler,
                                              directions=directions, load_if_exists=True)
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space and objectives come from the sweep file

    # -- Ray Tune's side -----------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if not self._pending:
            if self._asked >= self.num_configs:
                # Ray documents Searcher.FINISHED (a str) as suggest's end signal but types the return Optional[Dict]
                return Searcher.FINISHED  # type: ignore[return-value]
            self._queue(self.study.ask())
            self._asked += 1
        number, params, seed = self._pending.popleft()
        self._live[trial_id] = (number, seed)
        return {**params, "seed": seed, "optuna_trial": number}

    def _queue(self, trial: optuna.trial.BaseTrial) -> None:
        """A configuration Optuna asked for, one trial of it per seed to run."""
        params = sample(self.dims, trial)  # define-by-run: a conditional key only where it applies
        if self._study_id is None:
            self._study_id = self.backend.get_study_id_from_name(self.study_name)
        self._storage_ids[trial.number] = self.backend.get_trial_id_from_study_id_trial_number(
            self._study_id, trial.number
        )
        self._asked_params[trial.number] = dict(trial.params)
        self._outcomes[trial.number], self._curves[trial.number] = {}, {}
        self._pending.extend((trial.number, params, seed) for seed in self.seeds)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live:
            self._last[trial_id] = result
        self._record_epoch(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = _TRIALS.pop(trial_id, None)
        if trial_id not in self._live:
            return
        result = {**self._last.pop(trial_id, {}), **(result or {})}
        self._record_epoch(trial_id, result)  # Ray hands a trial's last epoch to on_trial_complete only
        number, seed = self._live.pop(trial_id)
        end = trial_end(result, self.max_epochs, [metric for metric, _ in self.objectives],
                        error=error_line(trial) if error else None)
        outcome: dict[str, Any] = {"status": end.status.value, "epoch": end.epoch, "ray_trial": trial_id}
        final = self._mutated(number, result_config(result))
        if final:
            outcome["final_params"] = final
        if end.status in (TrialStatus.COMPLETED, TrialStatus.STOPPED):
            outcome["values"] = [float(result[metric]) for metric, _ in self.objectives]  # the final epoch's
        elif end.reason:
            outcome["reason"] = end.reason
        self._outcomes[number][seed] = outcome
        if len(self._outcomes[number]) == len(self.seeds):
            self._tell(number, self._outcomes.pop(number))
            self._asked_params.pop(number, None)

    def _mutated(self, number: int, config: dict) -> dict[str, Any]:
        """The searched values a scheduler (PBT) changed during the run: key -> final value."""
        if not config or number not in self._storage_ids:
            return {}
        asked = self._asked_params.get(number)
        if asked is None:  # asked by a launch before a resume that kept no record of it
            asked = self.backend.get_trial(self._storage_ids[number]).params
        return {k: v for k, v in config.items() if k in asked and v != asked[k]}

    # -- intermediate values ----------------------------------------------------------
    def _record_epoch(self, trial_id: str, result: dict | None) -> None:
        metric = self.objectives[0][0]
        if trial_id not in self._live or not result or result.get("invalid"):
            return
        if metric not in result or "epoch" not in result:
            return
        number, seed = self._live[trial_id]
        self._curves.setdefault(number, {}).setdefault(seed, {})[int(result["epoch"])] = float(result[metric])
        self._report_intermediate(number)

    def _report_intermediate(self, number: int) -> None:
        """Each epoch's mean over seeds, once every seed has reached it, in epoch order."""
        curves = list(self._curves[number].values())
        if len(curves) < len(self.seeds):
            return
        reached = min(max(curve) for curve in curves)
        for step in range(self._reported.get(number, 0) + 1, reached + 1):
            if all(step in curve for curve in curves):
                value = statistics.fmean(curve[step] for curve in curves)
                self.backend.set_trial_intermediate_value(self._storage_ids[number], step, value)
        self._reported[number] = max(reached, self._reported.get(number, 0))

    # -- the outcome of a configuration ---------------------------------------------------
    def _tell(self, number: int, outcomes: dict[int, dict]) -> None:
        study = self.study
        attrs: dict[str, Any] = {"seeds": {str(s): o for s, o in outcomes.items()}}
        invalid = [o for o in outcomes.values() if o["status"] == TrialStatus.INVALID]
        valid = [o for o in outcomes.values() if "values" in o]
        if invalid or not valid:
            reasons = [o["reason"] for o in (*invalid, *outcomes.values()) if o.get("reason")]
            status = TrialStatus.INVALID if invalid else TrialStatus.ERROR
            reason = reasons[0] if reasons else "every seed of this configuration failed"
            attrs.update(status=status.value, reason=reason)
            self._set_attrs(number, attrs)
            _told(study, number, state=optuna.trial.TrialState.FAIL)
            return
        # once any seed ran every epoch, the configuration is judged on those seeds: a stopped seed's early epoch
        # is not comparable with a final one
        completed = [o for o in valid if o["status"] == TrialStatus.COMPLETED]
        judged = completed or valid
        columns = [[o["values"][i] for o in judged] for i in range(len(self.objectives))]
        stopped = not completed
        attrs.update(status=(TrialStatus.STOPPED if stopped else TrialStatus.COMPLETED).value,
                     std=[statistics.pstdev(c) for c in columns], epochs=max(o["epoch"] for o in judged))
        self._set_attrs(number, attrs)
        if stopped:
            single = len(self.objectives) == 1
            _told(study, number, state=optuna.trial.TrialState.PRUNED if single else optuna.trial.TrialState.FAIL)
        else:
            means = [statistics.fmean(c) for c in columns]
            _told(study, number, means if len(means) > 1 else means[0])

    def _set_attrs(self, number: int, attrs: dict) -> None:
        for key, value in attrs.items():
            self.backend.set_trial_user_attr(self._storage_ids[number], key, value)

    # -- resume ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_study=None, _backend=None)  # live in the storage; reopened on demand
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_curves": {}, "_reported": {}, "_last": {}, "_asked_params": {}, **state,
                              "_backend": None, "_study_id": None})

    __getstate__ = get_state  # Tune pickles the searcher into tuner.pkl: never the open study
    __setstate__ = set_state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
        self._agree_with_the_study()

    def _agree_with_the_study(self) -> None:
        """Bring the restored state to what Optuna holds. Tune's snapshot of this searcher lags the storage by up to
        its checkpoint period, so a driver killed within it (SIGKILL, out of memory) may have:
        - told Optuna of a configuration its snapshot still has running: dropped here. Tune reruns that trial on
          --resume; its results change nothing in Optuna, where writing to a finished trial raised and ended
          every resume;
        - asked Optuna for configurations its snapshot never saw, left RUNNING there: run now, as asked, so that
          no grid point is lost and no configuration beyond the sweep's count is asked."""
        trials = self.study.get_trials(deepcopy=False)
        finished = {t.number for t in trials if t.state.is_finished()}
        self._live = {ray_id: (n, seed) for ray_id, (n, seed) in self._live.items() if n not in finished}
        self._pending = deque(entry for entry in self._pending if entry[0] not in finished)
        for held in (self._outcomes, self._curves, self._reported, self._asked_params):
            for number in finished & held.keys():
                del held[number]
        known = {n for n, _ in self._live.values()} | {entry[0] for entry in self._pending} | self._outcomes.keys()
        for trial in trials:
            if trial.state == optuna.trial.TrialState.RUNNING and trial.number not in known:
                self._queue(trial)
        self._asked = max(self._asked, len(trials))


def _told(study: optuna.Study, number: int, values: Any = None, state: Any = None) -> None:
    """``study.tell``, whatever the trial's end: after the last grid point GridSampler calls study.stop(), which
    raises outside an objective function."""
    try:
        study.tell(number, values, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise
