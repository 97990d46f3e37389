"""The checks of a composed config that need no data, model or torch: the CLI runs them before loading
anything, a sweep's driver before Ray starts, each trial before it trains."""
from __future__ import annotations

from omegaconf import DictConfig

from sweeplab.config.schema import check_ranges
from sweeplab.data.datasets import dataset_entry
from sweeplab.models import check_architecture, check_model
from sweeplab.optim import OPTIMIZERS


def validate(cfg: DictConfig, shapes: bool = True) -> None:
    """Everything knowable before data or model exist: registered names, ranges and, with
    ``shapes``, whether every layer fits the dataset's input (names outside an Enum fail earlier,
    at composition)."""
    check_ranges(cfg)
    OPTIMIZERS.get(cfg.optimizer.name)
    dataset_entry(cfg.data)
    if not shapes:
        check_model(cfg.model)
        return
    check_architecture(cfg.model, input_shape(cfg))


def input_shape(cfg: DictConfig) -> tuple[int, int, int]:
    """(channels, height, width) of the images a model of ``cfg`` sees: the dataset's, after data.resize."""
    channels, height, width = dataset_entry(cfg.data).input_shape
    if cfg.data.get("resize"):
        return channels, cfg.data.resize, cfg.data.resize
    return channels, height, width
