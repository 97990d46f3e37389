"""Ray Tune's callback telemetry, counted by class name, without importing MLflow into the driver.

As ``fit`` starts, Ray Tune records which callbacks a run uses (``ray.air._internal.usage.tag_callbacks``): it
compares each callback with its built-in integrations by class name, and imports those integrations to read the
names. ``ray.air.integrations.mlflow`` imports MLflow, 2 s of CPU, so every sweep's driver imported MLflow there,
``tracking=none`` ones too. Here the same counts are recorded from the names alone. A user of an integration's
callback has imported its module to build it, so nothing is counted differently. Without the private function
(another Ray), Tune's own runs, as before.
"""
from __future__ import annotations

import collections
import json
from typing import Any

# The integrations' callbacks Tune counts by name (ray/air/_internal/usage.py, Ray 2.60), beside its default ones
INTEGRATION_CALLBACKS = ("WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback", "AimLoggerCallback")


def callback_counts(callbacks: list[Any] | None) -> dict[str, int]:
    """Tune's telemetry counts for ``callbacks``: a built-in's class name, else CustomLoggerCallback or
    CustomCallback."""
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    built_in = {*INTEGRATION_CALLBACKS, *(cls.__name__ for cls in DEFAULT_CALLBACK_CLASSES)}
    counts: dict[str, int] = collections.defaultdict(int)
    for callback in callbacks or []:
        if not isinstance(callback, Callback):
            continue  # Tune rejects it later
        name = type(callback).__name__
        if name in built_in:
            counts[name] += 1
        elif isinstance(callback, LoggerCallback):
            counts["CustomLoggerCallback"] += 1
        else:
            counts["CustomCallback"] += 1
    return dict(counts)


def install() -> None:
    """Tune's ``tag_callbacks`` records ``callback_counts`` (once per process; idempotent)."""
    try:
        from ray.air._internal import usage
    except ImportError:
        return
    record = getattr(usage, "record_extra_usage_tag", None)
    key = getattr(getattr(usage, "TagKey", None), "AIR_CALLBACKS", None)
    if record is None or key is None or getattr(usage.tag_callbacks, "_by_name", False):
        return

    def tag_callbacks(callbacks: list[Any] | None) -> bool:
        if not callbacks:
            return False
        if counts := callback_counts(callbacks):
            record(key, json.dumps(counts))
        return True

    tag_callbacks._by_name = True  # type: ignore[attr-defined]
    usage.tag_callbacks = tag_callbacks
