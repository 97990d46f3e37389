"""Optimizers and learning-rate schedules by name. The registry is filled without importing torch (a sweep's
driver checks names against it); building an optimizer imports it."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sweeplab.config.schema import LrSchedule, OptimizerConfig, TrainConfig
from sweeplab.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn


def _optim():
    import torch.optim

    return torch.optim


def _betas(cfg: OptimizerConfig) -> tuple[float, float]:
    beta1, beta2 = cfg.betas  # two numbers: OptimizerConfig.check
    return beta1, beta2


OPTIMIZERS: Registry[Callable[[list, OptimizerConfig], torch.optim.Optimizer]] = Registry("optimizer", "optimizer")
OPTIMIZERS.register(
    "sgd",
    lambda params, c: _optim().SGD(
        params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay
    ),
)
OPTIMIZERS.register(
    "adam", lambda params, c: _optim().Adam(params, lr=c.lr, betas=_betas(c), weight_decay=c.weight_decay)
)
OPTIMIZERS.register(
    "adamw", lambda params, c: _optim().AdamW(params, lr=c.lr, betas=_betas(c), weight_decay=c.weight_decay)
)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """``cfg.name``'s optimizer over the model's parameters (ranges: OptimizerConfig.check)."""
    return OPTIMIZERS.get(cfg.name)(list(model.parameters()), cfg)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch; None for a constant learning rate."""
    if cfg.lr_schedule == LrSchedule.cosine:
        return _optim().lr_scheduler.CosineAnnealingLR(optimizer, **_schedule_settings(cfg))
    if cfg.lr_schedule == LrSchedule.step:
        return _optim().lr_scheduler.StepLR(optimizer, **_schedule_settings(cfg))
    return None  # LrSchedule.none


def _schedule_settings(cfg: TrainConfig) -> dict[str, float]:
    """The settings of ``cfg``'s schedule, by the names its torch class takes and keeps as attributes."""
    if cfg.lr_schedule == LrSchedule.cosine:
        return {"T_max": max(cfg.epochs, 1)}
    if cfg.lr_schedule == LrSchedule.step:
        return {"step_size": cfg.step_size, "gamma": cfg.gamma}
    return {}


def apply_hyperparameters(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler | None,
                          cfg: OptimizerConfig, train: TrainConfig) -> None:
    """Set the configs' values on an optimizer and schedule restored from a checkpoint that was trained with other
    values (Population Based Training copies a trial's state, then changes its values): the optimizer's lr,
    momentum, nesterov, betas and weight decay, the schedule's step size, gamma and length. The lr keeps its place
    on the schedule: scaled by new/old base lr, so a retry with the same config changes nothing and a cosine schedule
    goes on from where the copied trial was; without a schedule it is the config's."""
    own = {"momentum": cfg.momentum, "nesterov": cfg.nesterov, "betas": _betas(cfg), "weight_decay": cfg.weight_decay}
    for group in optimizer.param_groups:
        if schedule is None:  # a constant lr, whatever schedule the copied trial had
            group["lr"] = cfg.lr
            group.pop("initial_lr", None)
        else:
            base = group.get("initial_lr", group["lr"])  # a schedule keeps the configured lr as initial_lr
            if base != cfg.lr:
                group["lr"] = group["lr"] * cfg.lr / base
            group["initial_lr"] = cfg.lr
        group.update({key: value for key, value in own.items() if key in group})  # SGD's momentum, Adam's betas
    if schedule is not None:
        schedule.base_lrs = [cfg.lr for _ in schedule.base_lrs]
        for name, value in _schedule_settings(train).items():
            setattr(schedule, name, value)
