"""Metrics, stated once: which keys a trial reports each epoch, how a value is shown, which epoch
ranks a trial, and how a trial's end (completed | stopped | invalid | error) follows from its
last result. The terminal, the live view, Optuna, MLflow and the HTML report all ask here."""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Reported by train() after every epoch (and logged to MLflow per step).
METRIC_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "epoch_seconds", "samples_per_second", "lr")
# A sweep's trials also report MLflow's system metrics under this prefix (sweeplab.sweep.system).
SYSTEM_PREFIX = "system/"
# Every key of a trial's per-epoch result: a sweep objective must be one of these.
REPORTED_KEYS = (*METRIC_KEYS, "epoch", "params")
# Computed once after training (datasets with a test split); trials do not report them, so a
# sweep cannot be steered by them (that would also select on the test set).
FINAL_ONLY_KEYS = ("test/loss", "test/acc")

# A trial's value is its last epoch's: the weights it saved and what `sweeplab best` reruns.
RANKED_BY = "final epoch"


def result_config(result: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's config as a result of it holds it (Tune flattens it to config/<key> for searchers): after a PBT
    exploit, the new one."""
    nested = result.get("config")
    if isinstance(nested, dict):
        return nested
    return {k[len("config/"):]: v for k, v in result.items() if k.startswith("config/")}


class TrialStatus(enum.StrEnum):
    COMPLETED = "completed"  # ran every epoch
    STOPPED = "stopped"  # ended early by the scheduler (ASHA, median rule)
    INVALID = "invalid"  # the configuration cannot train (composition, shapes, divergence)
    ERROR = "error"  # crashed, or never reported what the sweep optimises
    RUNNING = "running"


@dataclass(frozen=True)
class TrialEnd:
    status: TrialStatus
    epoch: int
    reason: str = ""


def trial_end(result: Mapping[str, Any] | None, max_epochs: int, objectives: Sequence[str] = (),
              error: str | None = None) -> TrialEnd:
    """How a trial ended, from its last reported result. ``error`` is the crash reason when the
    trial raised; ``objectives`` are the metrics the sweep needs from every valid trial."""
    result = result or {}
    epoch = int(result.get("epoch", 0))
    if result.get("invalid"):
        return TrialEnd(TrialStatus.INVALID, epoch, str(result.get("invalid_reason", "")))
    if error is not None:
        return TrialEnd(TrialStatus.ERROR, epoch, error)
    missing = [m for m in objectives if result.get(m) is None]
    if missing:
        return TrialEnd(TrialStatus.ERROR, epoch, f"the trial reported no {missing[0]}")
    if epoch >= max_epochs:
        return TrialEnd(TrialStatus.COMPLETED, epoch)
    return TrialEnd(TrialStatus.STOPPED, epoch, f"stopped by the scheduler after epoch {epoch}")


def error_line(trial: Any) -> str:
    """The last line of a crashed Ray trial's error file: the reason shown and recorded."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return "see the trial's error.txt"


def final_value(values_by_epoch: Mapping[int, float]) -> float:
    """A trial's value of a metric (see RANKED_BY) from its per-epoch values."""
    return values_by_epoch[max(values_by_epoch)]


def ranked_label(metric: str) -> str:
    """A column or axis title that says which epoch's value ranks trials: 'val/acc (final epoch)'."""
    return f"{metric} ({RANKED_BY})"


def is_fraction(metric: str) -> bool:
    """Accuracies are stored as fractions and shown as percentages."""
    return metric.endswith("acc")


def better_mode(metric: str) -> str | None:
    """The mode that improves ``metric`` where its meaning fixes one: min for a loss, max for an accuracy."""
    if metric.endswith("loss"):
        return "min"
    return "max" if is_fraction(metric) else None


def display_scale(metric: str) -> float:
    """Factor from a stored value to the shown one (plots): 100 for accuracies."""
    return 100.0 if is_fraction(metric) else 1.0


def axis_label(metric: str) -> str:
    return metric + (" (%)" if is_fraction(metric) else "")


def format_metric(metric: str, value: float | None) -> str:
    """One value as every output shows it: '93.20%' for an accuracy, 4 significant digits else."""
    if value is None or value != value:  # missing, or NaN from a table
        return "-"
    if is_fraction(metric):
        return f"{value * 100:.2f}%"
    if metric == "params":
        return f"{value:,.0f}"
    return f"{value:.4g}"
