"""Range and name checks of a composed config: everything that can be known wrong before any data
is loaded, phrased for the person who wrote it. The shape check lives in sweeplab.models."""
from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeplab.errors import ConfigError

LOSSES = ("cross_entropy", "mse")
LR_SCHEDULES = ("none", "cosine", "step")
RNN_CELLS = ("rnn", "lstm", "gru")


def _fail(key: str, value: Any, want: str) -> None:
    raise ConfigError(f"{key}={value!r} is out of range: it must be {want}")


def check_values(cfg: DictConfig) -> None:
    """Names exist in their registries and numbers lie in their ranges."""
    from sweeplab.data import DATASETS
    from sweeplab.models import MODELS
    from sweeplab.models.layers import ACTIVATIONS, POOLINGS, WEIGHT_INITS
    from sweeplab.optim import OPTIMIZERS

    DATASETS.get(cfg.data.name)
    OPTIMIZERS.get(cfg.optimizer.name)
    MODELS.get(cfg.model.name)
    ACTIVATIONS.get(cfg.model.activation)
    POOLINGS.get(cfg.model.pooling)

    o, t, d, m = cfg.optimizer, cfg.train, cfg.data, cfg.model
    if not o.lr > 0:
        _fail("optimizer.lr", o.lr, "> 0")
    if not 0 <= o.momentum < 1:
        _fail("optimizer.momentum", o.momentum, "in [0, 1)")
    if o.weight_decay < 0:
        _fail("optimizer.weight_decay", o.weight_decay, ">= 0")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        _fail("optimizer.betas", list(o.betas), "two numbers in [0, 1), e.g. [0.9, 0.999]")
    if o.name == "sgd" and o.nesterov and o.momentum <= 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")

    for key in ("epochs", "batch_size", "eval_batch_size", "step_size"):
        if t[key] < 1:
            _fail(f"train.{key}", t[key], ">= 1")
    if t.num_threads is not None and t.num_threads < 1:
        _fail("train.num_threads", t.num_threads, ">= 1 (or null for torch's default)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device):
        _fail("train.device", t.device, "auto, cpu, cuda or cuda:N")
    if t.loss not in LOSSES:
        raise ConfigError(f"unknown train.loss {t.loss!r}. Known: {', '.join(LOSSES)}")
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown train.lr_schedule {t.lr_schedule!r}. Known: {', '.join(LR_SCHEDULES)}")
    if not 0 < t.gamma <= 1:
        _fail("train.gamma", t.gamma, "in (0, 1]")

    entry = DATASETS.get(d.name)
    if not 0 < d.val_fraction < 1:
        _fail("data.val_fraction", d.val_fraction, "strictly between 0 and 1")
    if d.subset is not None and d.subset < entry.num_classes:
        _fail("data.subset", d.subset, f">= the {entry.num_classes} classes (or null for all images)")
    if d.resize is not None and d.resize < 1:
        _fail("data.resize", d.resize, ">= 1 (or null)")

    if m.weight_init not in WEIGHT_INITS:
        raise ConfigError(f"unknown model.weight_init {m.weight_init!r}. Known: {', '.join(WEIGHT_INITS)}")
    if m.weight_init_std <= 0:
        _fail("model.weight_init_std", m.weight_init_std, "> 0")
    if "dropout" in m and not 0 <= m.dropout < 1:
        _fail("model.dropout", m.dropout, "in [0, 1)")
    if "cell" in m and m.cell not in RNN_CELLS:
        raise ConfigError(f"unknown model.cell {m.cell!r}. Known: {', '.join(RNN_CELLS)}")
    for key, value in OmegaConf.to_container(m, resolve=True).items():
        _check_widths(f"model.{key}", value)


def _check_widths(key: str, value: Any) -> None:
    """Layer widths and counts: every int in hidden_sizes, stages, blocks, filters ... is >= 1."""
    if isinstance(value, bool) or key.endswith(("weight_init_std", "dropout", "pool_after")):
        return
    if isinstance(value, int) and value < 1 and not key.endswith(("pad", ".conv.pad")):
        _fail(key, value, ">= 1")
    if isinstance(value, list):
        if not value and key.endswith(("stages", "blocks", "filters", "kernel_sizes")):
            _fail(key, value, "a non-empty list")
        for item in value:
            _check_widths(key, item)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_widths(f"{key}.{k}", v)
