"""The batch progress bar of ``sweeplab train``: rich, with rate and ETA, only on a terminal.

Piped or captured output (tests, CI, a log file) sees no bar, only the per-epoch lines.
"""
from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Batches per second, as rich measures them over the epoch so far."""

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:.1f} batches/s", style="progress.data.speed")


class EpochBar:
    """A context whose ``on_batch`` is train()'s batch callback; a no-op unless stdout is a terminal."""

    def __init__(self, epochs: int, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout)
        self.epochs = epochs
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.epoch = 0

    @property
    def enabled(self) -> bool:
        return self.console.is_terminal

    def __enter__(self) -> EpochBar:
        if self.enabled:
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/" + str(self.epochs)), BarColumn(), MofNCompleteColumn(),
                TextColumn("batches"), RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.progress is not None:
            self.progress.stop()

    def on_batch(self, epoch: int, done: int, total: int) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.task = self.progress.add_task("train", total=total, epoch=epoch)
        elif epoch != self.epoch:
            self.progress.reset(self.task, total=total, epoch=epoch)
        self.epoch = epoch
        self.progress.update(self.task, completed=done)
