"""A Ray Tune searcher backed by a persistent Optuna study (ask/tell).

Each configuration Optuna asks for runs once per seed; when every seed has
ended, the study is told the mean objective(s). Invalid configurations and
crashed trials are told as FAIL with the reason kept as a trial attribute, so
TPE learns nothing from them and `optuna` / optuna-dashboard show why.
"""
from __future__ import annotations

import pickle
import statistics
from collections import deque
from typing import Any, Optional

import optuna
from ray.tune.search import Searcher

from sweeplab.sweep.samplers import make_sampler, open_study
from sweeplab.sweep.space import Dimension


def _existing_trials(storage: str, study_name: str) -> int:
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    except KeyError:  # a new study
        return 0


class OptunaSearcher(Searcher):
    def __init__(
        self,
        dims: list[Dimension],
        sampler: str,
        sampler_seed: Optional[int],
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
        self.storage, self.study_name = storage, study_name
        self.objectives, self.seeds = objectives, list(seeds)
        self.num_configs, self.max_epochs = num_configs, max_epochs
        self._study: Optional[optuna.Study] = None
        self._asked = 0
        self._pending: deque[tuple[int, dict, int]] = deque()  # (optuna number, params, seed)
        self._live: dict[str, tuple[int, int]] = {}  # ray trial id -> (number, seed)
        self._outcomes: dict[int, dict[int, dict]] = {}  # number -> seed -> outcome
        self._storage_ids: dict[int, int] = {}  # number -> optuna storage trial id

    # -- the study ---------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            directions = ["maximize" if mode == "max" else "minimize" for _, mode in self.objectives]
            seed = self.sampler_seed
            if seed is not None:  # a resumed sweep must not replay the random draws it already made
                seed += _existing_trials(self.storage, self.study_name)
            sampler = make_sampler(self.sampler_name, self.dims, seed, len(directions) > 1)
            self._study = open_study(self.storage, self.study_name, sampler, directions)
        return self._study

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space and objectives come from the sweep file

    # -- Ray Tune's side -----------------------------------------------------------
    def suggest(self, trial_id: str) -> Optional[dict]:
        if not self._pending:
            if self._asked >= self.num_configs:
                return Searcher.FINISHED
            trial = self.study.ask({d.key: d.distribution() for d in self.dims})
            self._asked += 1
            self._storage_ids[trial.number] = trial._trial_id
            self._outcomes[trial.number] = {}
            self._pending.extend((trial.number, dict(trial.params), seed) for seed in self.seeds)
        number, params, seed = self._pending.popleft()
        self._live[trial_id] = (number, seed)
        return {**params, "seed": seed, "optuna_trial": number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate values let TPE use trials a scheduler stopped early (one seed, one objective).
        if trial_id not in self._live or len(self.seeds) > 1 or len(self.objectives) > 1:
            return
        metric = self.objectives[0][0]
        if metric in result and "epoch" in result:
            number, _ = self._live[trial_id]
            trial = optuna.Trial(self.study, self._storage_ids[number])
            trial.report(float(result[metric]), step=int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self._live:
            return
        number, seed = self._live.pop(trial_id)
        self._outcomes[number][seed] = self._outcome(trial_id, result, error)
        if len(self._outcomes[number]) == len(self.seeds):
            self._tell(number, self._outcomes.pop(number))

    def _outcome(self, trial_id: str, result: Optional[dict], error: bool) -> dict:
        result = result or {}
        if result.get("invalid"):
            return {"status": "invalid", "reason": result.get("invalid_reason", ""), "ray_trial": trial_id}
        values = [result.get(metric) for metric, _ in self.objectives]
        if error or any(v is None for v in values):
            return {"status": "error", "ray_trial": trial_id}
        epoch = int(result.get("epoch", self.max_epochs))
        status = "completed" if epoch >= self.max_epochs else "stopped"
        return {"status": status, "values": [float(v) for v in values], "epoch": epoch, "ray_trial": trial_id}

    def _tell(self, number: int, outcomes: dict[int, dict]) -> None:
        study = self.study
        attrs = {"seeds": {str(s): o for s, o in outcomes.items()}}
        invalid = [o for o in outcomes.values() if o["status"] == "invalid"]
        valid = [o for o in outcomes.values() if "values" in o]
        trial_id = self._storage_ids[number]
        if invalid or not valid:
            reason = invalid[0]["reason"] if invalid else "every seed of this configuration failed"
            attrs.update(status="invalid" if invalid else "error", reason=reason)
            self._set_attrs(trial_id, attrs)
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            return
        means = [statistics.fmean(o["values"][i] for o in valid) for i in range(len(self.objectives))]
        stds = [statistics.pstdev([o["values"][i] for o in valid]) for i in range(len(self.objectives))]
        stopped = all(o["status"] == "stopped" for o in valid)
        attrs.update(status="stopped" if stopped else "completed", std=stds, epochs=max(o["epoch"] for o in valid))
        self._set_attrs(trial_id, attrs)
        try:
            if stopped and len(self.objectives) == 1:
                if len(self.seeds) == 1:  # Ray hands the stopping epoch to on_trial_complete, not on_trial_result
                    optuna.Trial(study, trial_id).report(valid[0]["values"][0], step=valid[0]["epoch"])
                study.tell(number, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(number, means if len(means) > 1 else means[0])
        except RuntimeError as err:  # GridSampler calls study.stop() after the last grid point
            if "Study.stop" not in str(err):
                raise

    def _set_attrs(self, storage_id: int, attrs: dict) -> None:
        trial = optuna.Trial(self.study, storage_id)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    # -- resume ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"] = None  # lives in the storage; reopened on demand
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    __getstate__ = get_state  # Tune pickles the searcher into tuner.pkl: never the open study
    __setstate__ = set_state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
