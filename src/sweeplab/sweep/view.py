"""The live terminal view of a sweep: one line per event, a progress line per trial end."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from ray import tune


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class LiveView(tune.Callback):
    def __init__(self, space_keys, metric: str, mode: str, max_epochs: int, max_failures: int,
                 quiet: bool = False, stream: TextIO | None = None) -> None:
        self.space_keys, self.metric, self.mode = list(space_keys), metric, mode
        self.max_epochs, self.max_failures, self.quiet = max_epochs, max_failures, quiet
        self.stream = stream  # None: sys.stdout at print time (Tune pickles callbacks)
        self.started = time.monotonic()
        self.ended: dict[str, str] = {}  # trial id -> status
        self.best: tuple[float, str] | None = None

    def _print(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", file=self.stream or sys.stdout, flush=True)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "stream": None}

    def _params(self, trial) -> str:
        shown = {k: trial.config[k] for k in self.space_keys if k in trial.config}
        shown["seed"] = trial.config.get("seed")
        return " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._print(f"{trial} started   {self._params(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("invalid"):
            return
        value = result.get(self.metric)
        if not self.quiet:
            self._print(
                f"{trial} epoch {int(result.get('epoch', 0)):>2}/{self.max_epochs}  "
                f"{self.metric} {_metric(self.metric, value)}  train/loss {result.get('train/loss', float('nan')):.4f}  "
                f"{result.get('epoch_seconds', 0):.1f}s"
            )

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if result.get("invalid"):
            status = "invalid"
            self._print(f"{trial} INVALID   {result.get('invalid_reason')}")
        else:
            epoch = int(result.get("epoch", 0))
            status = "completed" if epoch >= self.max_epochs else "stopped"
            value = result.get(self.metric)
            if status == "completed" and value is not None and (
                self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            ):
                self.best = (value, str(trial))
            what = "completed" if status == "completed" else f"stopped early at epoch {epoch} (scheduler)"
            self._print(f"{trial} {what}   {self.metric} {_metric(self.metric, result.get(self.metric))}")
        self.ended[trial.trial_id] = status
        self._progress(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "error"
        self._print(f"{trial} ERROR after {trial.num_failures} attempt(s): {_last_error_line(trial)}")
        self._progress(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"{trial} crashed ({_last_error_line(trial)}); retry {trial.num_failures}/{self.max_failures} "
                    "from its last checkpoint")

    def _progress(self, trials) -> None:
        counts: dict[str, int] = {}
        for status in self.ended.values():
            counts[status] = counts.get(status, 0) + 1
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended)
        done = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        best = f"; best {self.metric} {_metric(self.metric, self.best[0])} ({self.best[1]})" if self.best else ""
        self._print(f"progress: {running} running, {done}{best}")


def _metric(name: str, value) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.2f}%" if name.endswith("acc") else f"{value:.4g}"


def _last_error_line(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return "see the trial's error.txt"
