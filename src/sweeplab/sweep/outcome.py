"""A sweep's outcome as read back from its Optuna study: one row per configuration."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sweeplab.errors import UserError
from sweeplab.metrics import TrialStatus


@dataclass
class TrialRow:
    number: int
    params: dict[str, Any]
    state: str  # Optuna's: COMPLETE | PRUNED | FAIL | RUNNING
    status: str  # a TrialStatus value
    values: list[float] | None  # mean over seeds of each objective's final-epoch value
    std: list[float] | None
    epochs: int | None
    reason: str = ""
    seeds: dict[str, dict[str, Any]] = field(default_factory=dict)  # seed -> that run's outcome

    def value(self, index: int = 0) -> float:
        """Objective ``index``'s value; only rows with values (every completed one) have it."""
        if self.values is None:
            raise ValueError(f"trial {self.number} ({self.status}) has no values")
        return self.values[index]

    def seed_values(self, index: int = 0) -> list[float]:
        """Objective ``index``'s value of each seed the row's value is the mean of: those that ran every epoch, when
        any did (searcher._tell)."""
        seeds = [o for o in self.seeds.values() if "values" in o]
        return [o["values"][index] for o in [o for o in seeds if o.get("status") == TrialStatus.COMPLETED] or seeds]

    def completed_seeds(self) -> list[str]:
        return [s for s, o in self.seeds.items() if o.get("status") == TrialStatus.COMPLETED]


@dataclass
class SweepOutcome:
    record: dict[str, Any]  # the sweep's attributes, see launch.sweep_record, plus "storage"
    trials: list[TrialRow]

    @property
    def sweep_id(self) -> str:
        return self.record["sweep_id"]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(metric, mode) for metric, mode in self.record["objectives"]]

    def completed(self) -> list[TrialRow]:
        """Configurations that ran every epoch: the only ones ranked or put on a Pareto front."""
        return [t for t in self.trials if t.status == TrialStatus.COMPLETED and t.values]

    def ranked(self) -> list[TrialRow]:
        """Completed configurations, best first by the first objective's final-epoch value."""
        _, mode = self.objectives[0]
        return sorted(self.completed(), key=lambda t: t.value(), reverse=(mode == "max"))

    def best(self) -> TrialRow | None:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def pareto_front(self) -> list[int]:
        """Numbers of the non-dominated completed configurations over every objective."""
        signs = [1 if mode == "max" else -1 for _, mode in self.objectives]
        points = {t.number: [s * t.value(i) for i, s in enumerate(signs)] for t in self.completed()}

        def dominated(a: list[float]) -> bool:
            return any(all(x <= y for x, y in zip(a, b, strict=True)) and a != b for b in points.values())

        return sorted(n for n, p in points.items() if not dominated(p))

    @property
    def unfinished(self) -> bool:
        """Interrupted before every configuration ended (Ctrl+C, a lost driver), or still running."""
        ended = [t for t in self.trials if t.status != TrialStatus.RUNNING]
        return len(ended) < int(self.record.get("num_configs", len(ended)))

    def driver_alive(self) -> bool | None:
        """Whether the process that drives the unfinished sweep still runs: None where that cannot be told from here
        (another host, or a sweep recorded before its process was)."""
        import os
        import socket

        import psutil

        pid, host = self.record.get("pid"), self.record.get("host")
        if pid is None or host != socket.gethostname():
            return None
        if int(pid) == os.getpid():  # this process asks: it is not driving the sweep now
            return False
        try:  # a process of that number that is no sweeplab is another one that reused it
            return "sweeplab" in " ".join(psutil.Process(int(pid)).cmdline())
        except psutil.Error:
            return False

    def refuse_while_running(self, then: str) -> None:
        """What must not run beside the sweep's own driver (a second driver, a second sender of its journal): a
        UserError while it runs here, ``then`` saying what to do instead."""
        if self.driver_alive():
            raise UserError(f"sweep {self.record['sweep_id']} is still running (process {self.record['pid']} on this "
                            f"host): {then}")

    @property
    def interrupted(self) -> bool:
        """Unfinished, not by its time budget, and its driver is known to be gone: ``--resume`` continues it."""
        return self.unfinished and not self.record.get("ended_by") and self.driver_alive() is False

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    def counts_text(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
