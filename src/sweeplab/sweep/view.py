"""The live terminal view of a sweep: one line per event, and the sweep's progress with an ETA
(sweeplab.sweep.progress): a rich bar under the lines on a terminal, a plain line at each trial end and
every PROGRESS_EVERY_S seconds otherwise."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from ray import tune

from sweeplab.metrics import TrialStatus, error_line, format_metric, trial_end
from sweeplab.sweep.progress import SweepProgress
from sweeplab.sweep.summary import format_param

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from rich.progress import Progress

PROGRESS_EVERY_S = 30.0  # off a terminal: a progress line at least this often while trials train


class LiveView(tune.Callback):
    def __init__(self, space_keys: Iterable[str], metric: str, mode: str, max_epochs: int, max_failures: int,
                 quiet: bool = False, stream: TextIO | None = None, total_trials: int = 0) -> None:
        self.space_keys, self.metric, self.mode = list(space_keys), metric, mode
        self.max_epochs, self.max_failures, self.quiet = max_epochs, max_failures, quiet
        self.stream = stream  # None: sys.stdout at print time (Tune pickles callbacks)
        self.started = time.monotonic()
        self.ended: dict[str, str] = {}  # trial id -> status
        self.best: tuple[float, str] | None = None
        self.progress = SweepProgress(total_trials, max_epochs, self.started)
        self.last_line = self.started
        self.bar: Progress | None = None  # the rich bar, on a terminal only
        self.on_terminal: bool | None = None  # decided at the first event, where the output goes then

    def _print(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", file=self.stream or sys.stdout, flush=True)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None, "bar": None, "on_terminal": None}

    def _show_progress(self) -> None:
        """Refresh the bar on a terminal; elsewhere the caller prints the plain line."""
        if self.on_terminal is False:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            console = Console(file=self.stream or sys.stdout)
            self.on_terminal = console.is_terminal
            if not self.on_terminal:
                return

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.fields[line]}"), console=console)
            self.bar.add_task("sweep", total=self.progress.budget or 1, line="")
            self.bar.start()
        self.bar.update(self.bar.task_ids[0], completed=self.progress.spent(), line=self.progress.line())

    def finish(self) -> None:
        """Take the bar down before the summary is printed."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.finish()

    def _params(self, trial: Trial) -> str:
        shown = {k: trial.config[k] for k in self.space_keys if k in trial.config}
        shown["seed"] = trial.config.get("seed")
        return " ".join(f"{k}={format_param(v)}" for k, v in shown.items())

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if not self.progress.begun:  # a resumed sweep: what its earlier launches did counts as spent, not as rate
            for other in trials:
                if other.status in ("TERMINATED", "ERROR"):
                    self.progress.end(other.trial_id)
                self.progress.restored(other.trial_id, int((other.last_result or {}).get("epoch", 0)))
        self.progress.begin()
        self._print(f"{trial} started   {self._params(trial)}")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if result.get("warning"):  # e.g. an unreadable checkpoint the trial fell back from
            self._print(f"{trial} warning: {result['warning']}")
        if not result.get("invalid"):
            self.progress.epoch(trial.trial_id, int(result.get("epoch", 0)))
        self._show_progress()
        if self.bar is None and time.monotonic() - self.last_line >= PROGRESS_EVERY_S:
            self._progress(trials)
        if result.get("invalid") or self.quiet:
            return
        self._print(
            f"{trial} epoch {int(result.get('epoch', 0)):>2}/{self.max_epochs}  "
            f"{self.metric} {format_metric(self.metric, result.get(self.metric))}  "
            f"train/loss {format_metric('train/loss', result.get('train/loss'))}  "
            f"{result.get('epoch_seconds', 0):.1f}s"
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        result = trial.last_result or {}
        end = trial_end(result, self.max_epochs, [self.metric])
        value = result.get(self.metric)
        if end.status == TrialStatus.COMPLETED and value is not None and (
            self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        ):
            self.best = (value, str(trial))
        if end.status == TrialStatus.COMPLETED:
            self._print(f"{trial} completed   {self.metric} {format_metric(self.metric, value)}")
        elif end.status == TrialStatus.STOPPED:
            self._print(f"{trial} {end.reason}   {self.metric} {format_metric(self.metric, value)}")
        else:
            self._print(f"{trial} {end.status.value.upper()}   {end.reason}")
        self.ended[trial.trial_id] = end.status.value
        self.progress.end(trial.trial_id)
        self._progress(trials)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.ended[trial.trial_id] = TrialStatus.ERROR.value
        self.progress.end(trial.trial_id)
        self._print(f"{trial} ERROR after {trial.num_failures} attempt(s): {error_line(trial)}")
        self._progress(trials)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._print(f"{trial} crashed ({error_line(trial)}); retry {trial.num_failures}/{self.max_failures} "
                    "from its last checkpoint")

    def _progress(self, trials: list[Trial]) -> None:
        counts: dict[str, int] = {}
        for status in self.ended.values():
            counts[status] = counts.get(status, 0) + 1
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended)
        done = "".join(f", {n} {s}" for s, n in sorted(counts.items()))
        best = f"; best {self.metric} {format_metric(self.metric, self.best[0])} ({self.best[1]})" if self.best else ""
        self._print(f"progress: {running} running{done}{best}; {self.progress.line()}")
        self.last_line = time.monotonic()
        self._show_progress()
