"""System metrics of a trial, sampled in the process that trains it, once per epoch.

The names are MLflow's system metrics (``system/cpu_utilization_percentage``, ...), so the MLflow UI
shows them in a run's system-metrics charts. They are taken with psutil (and torch.cuda for GPUs)
directly rather than through ``mlflow.system_metrics``: importing MLflow costs each Ray worker
seconds, a sample here well under a millisecond. CPU utilisation is psutil's since the previous
sample, so one sample per epoch is the epoch's mean.
"""
from __future__ import annotations

import contextlib

import psutil

from sweeplab.metrics import SYSTEM_PREFIX


class SystemSampler:
    """Call ``sample()`` at the end of each epoch; the first call covers the time since construction."""

    def __init__(self) -> None:
        psutil.cpu_percent()  # starts psutil's interval

    def sample(self) -> dict[str, float]:
        memory = psutil.virtual_memory()
        metrics = {
            "cpu_utilization_percentage": psutil.cpu_percent(),
            "system_memory_usage_megabytes": memory.used / 1e6,
            "system_memory_usage_percentage": memory.used / memory.total * 100,
        }
        metrics |= _gpu_metrics()
        return {SYSTEM_PREFIX + key: round(float(value), 1) for key, value in metrics.items()}


def _gpu_metrics() -> dict[str, float]:
    """Memory in use on each visible GPU, and its utilisation where NVML can tell (nothing without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    out: dict[str, float] = {}
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        out[f"gpu_{index}_memory_usage_megabytes"] = (total - free) / 1e6
        out[f"gpu_{index}_memory_usage_percentage"] = (total - free) / total * 100
        with contextlib.suppress(Exception):  # torch reads utilisation through pynvml, which may be missing
            out[f"gpu_{index}_utilization_percentage"] = torch.cuda.utilization(index)
    return out
