"""How far a sweep has come: trials ended of the total, epochs of the budget, the rate and an ETA.

The budget is every trial's full training (trials x train.epochs); a trial that ends early (stopped by
its scheduler, invalid, errored) counts its unused epochs as spent, so the ETA only shrinks as it should.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


@dataclass
class SweepProgress:
    total_trials: int
    max_epochs: int
    started: float = field(default_factory=time.monotonic)
    epochs: dict[str, int] = field(default_factory=dict)  # trial id -> epochs trained so far
    ended: set[str] = field(default_factory=set)
    trained: int = 0  # epochs actually trained in this launch: the rate's numerator
    begun: bool = False

    def begin(self, now: float | None = None) -> None:
        """The first trial started: the rate's clock starts here, not while Ray itself starts."""
        if not self.begun:
            self.started, self.begun = now or time.monotonic(), True

    @property
    def budget(self) -> int:
        return self.total_trials * self.max_epochs

    def epoch(self, trial_id: str, epoch: int) -> None:
        """A trial reported ``epoch`` (1-based; a retried trial may report one again)."""
        self.trained += max(0, epoch - self.epochs.get(trial_id, 0))
        self.epochs[trial_id] = max(epoch, self.epochs.get(trial_id, 0))

    def restored(self, trial_id: str, epoch: int) -> None:
        """A trial an earlier launch of a resumed sweep trained to ``epoch``: spent, but not trained by this one."""
        self.epochs[trial_id] = max(epoch, self.epochs.get(trial_id, 0))

    def end(self, trial_id: str) -> None:
        self.ended.add(trial_id)

    def spent(self) -> int:
        """Epochs of the budget used: an ended trial's whole share, a running trial's epochs so far."""
        running = sum(e for t, e in self.epochs.items() if t not in self.ended)
        return min(self.budget, len(self.ended) * self.max_epochs + running)

    def rate(self, now: float | None = None) -> float:
        """Epochs trained per second since the launch (all trials together)."""
        elapsed = (now or time.monotonic()) - self.started
        return self.trained / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        return (self.budget - self.spent()) / rate if rate > 0 else None

    def line(self, now: float | None = None) -> str:
        eta = self.eta(now)
        return (f"{len(self.ended)}/{self.total_trials} trials, {self.spent()}/{self.budget} epochs of the budget, "
                f"{self.rate(now) * 60:.1f} epochs/min, eta {format_duration(eta) if eta is not None else '?'}")
