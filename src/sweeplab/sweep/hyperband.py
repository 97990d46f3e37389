"""Ray Tune's HyperBand with one race mended: a bracket that finishes stops every trial still paused in it.

Ray pauses a trial that reached its bracket's milestone before the others; the pause first saves a checkpoint, and
only once the save is back is the trial PAUSED. When the bracket's last trial reports while that save is in flight,
Ray 2.60's ``_Bracket.cleanup_full`` stops the PAUSED trials only: the saving one becomes PAUSED a moment later, in
a bracket that will never unpause it, and the sweep waits for it forever (two trials of a bracket reaching its
last epoch together, seen in CI). Ray's own halving step already treats a saving trial as paused; the finished
bracket here does the same.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler
from ray.tune.schedulers.hyperband import _Bracket

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


class _FinishingBracket(_Bracket):
    def cleanup_full(self, tune_controller: TuneController) -> None:
        for trial in self.current_trials():
            if trial.status == Trial.PAUSED or trial.is_saving:
                tune_controller.stop_trial(trial)


class HyperBand(HyperBandScheduler):
    def _create_bracket(self, s: int) -> _Bracket:
        return _FinishingBracket(time_attr=self._time_attr, max_trials=self._get_n0(s), init_t_attr=self._get_r0(s),
                                 max_t_attr=self._max_t_attr, eta=self._eta, s=s,
                                 stop_last_trials=self._stop_last_trials)
