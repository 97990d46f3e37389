"""Ray's Population Based Training, run beside the Optuna searcher.

Ray refuses any searcher with PBT, since PBT changes a trial's config behind the searcher's back.
The Optuna searcher expects it: Optuna keeps the values it asked for as the trial's params, and the
values PBT left a trial with as ``final_params`` beside its outcome (sweeplab.sweep.searcher).
"""
from __future__ import annotations

from typing import Any, cast

from ray.tune.schedulers import PopulationBasedTraining


class _WithoutSearcher:
    """The Tune controller as PBT's ``on_trial_add`` sees it: every attribute but the searcher."""

    search_alg = None

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


class SearchedPBT(PopulationBasedTraining):
    def __init__(self, *args: Any, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_epoch = last_epoch

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(cast(Any, _WithoutSearcher(tune_controller)), trial)

    def _quantiles(self) -> tuple[list, list]:
        """Ray's ranking without the trials at their last epoch: a copy made there, or of one of them,
        would have no epoch left to train with its new values."""
        lower, upper = super()._quantiles()

        def going(trial: Any) -> bool:
            result: dict[str, Any] = self._trial_state[trial].last_result or {}
            return int(result.get(self._time_attr, 0)) < self.last_epoch

        lower, upper = [t for t in lower if going(t)], [t for t in upper if going(t)]
        return (lower, upper) if lower and upper else ([], [])
