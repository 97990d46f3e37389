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
    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(cast(Any, _WithoutSearcher(tune_controller)), trial)
