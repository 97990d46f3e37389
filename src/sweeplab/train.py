"""One training run from a composed config: the function every caller shares.

The CLI, the Ray Tune trainable, the benchmarks and the tests call ``train``;
only the ``reporter`` that receives each epoch's metrics differs.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from sweeplab.config.schema import DataConfig, Loss, OptimizerConfig, TrainConfig, check_ranges
from sweeplab.data.batches import BatchSource
from sweeplab.data.datasets import DatasetBundle, dataset_entry, load_dataset
from sweeplab.errors import ConfigError, UserError
from sweeplab.models import build_model, check_architecture, check_model, count_parameters
from sweeplab.optim import OPTIMIZERS, build_optimizer, build_schedule
from sweeplab.structured import typed as _typed  # train() types its groups with the one shared helper

METRIC_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "epoch_seconds", "samples_per_second", "lr")
# also reported: epoch, params; after training test/loss, test/acc for datasets with a test split
REPORTED_KEYS = (*METRIC_KEYS, "epoch", "params")

# reporter(metrics, checkpoint): metrics of one finished epoch; checkpoint() builds the
# state to save, only when the reporter wants it (Ray Tune does, the CLI at the end).
Reporter = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]


class StopTraining(Exception):
    """A reporter raises this to end training after the current epoch."""


class TrainingDiverged(UserError):
    """The loss became inf/NaN: the configuration (usually the learning rate) cannot train."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # the last epoch's
    history: list[dict[str, float]]
    model: nn.Module
    confusion: np.ndarray  # val confusion matrix of the last epoch, rows = true class
    class_names: list[str]
    input_shape: tuple[int, int, int]
    num_params: int
    state: dict[str, Any] = field(repr=False, default_factory=dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loss_fn(name: Loss, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == Loss.cross_entropy:
        return F.cross_entropy
    # Loss.mse, the textbook squared error: 0.5 * sum((softmax - one_hot)^2), batch mean
    return lambda logits, y: 0.5 * (logits.softmax(1) - F.one_hot(y, num_classes).float()).pow(2).sum(1).mean()


def validate(cfg: DictConfig, shapes: bool = True) -> None:
    """Everything knowable before data or model exist: registered names, ranges and, with
    ``shapes``, whether every layer fits the dataset's input (names outside an Enum fail earlier,
    at composition)."""
    check_ranges(cfg)
    OPTIMIZERS.get(cfg.optimizer.name)
    entry = dataset_entry(cfg.data)
    if not shapes:
        check_model(cfg.model)
        return
    shape = entry.input_shape
    if cfg.data.get("resize"):
        shape = (shape[0], cfg.data.resize, cfg.data.resize)
    check_architecture(cfg.model, shape)


@torch.no_grad()
def evaluate(model: nn.Module, source: BatchSource, split: str, batch_size: int, criterion, num_classes: int):
    """(loss, accuracy, confusion matrix) over a whole split."""
    model.eval()
    total_loss, n = 0.0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=source.device)
    for x, y in source.batches(split, batch_size):
        logits = model(x)
        total_loss += criterion(logits, y).item() * len(y)
        n += len(y)
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).cpu().numpy()
    return total_loss / n, float(np.trace(confusion) / n), confusion


def train(
    cfg: DictConfig,
    reporter: Optional[Reporter] = None,
    resume: Optional[dict[str, Any]] = None,
    bundle: Optional[DatasetBundle] = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; resume continues exactly from a saved state."""
    data_cfg: DataConfig = _typed(cfg.data, DataConfig)
    train_cfg: TrainConfig = _typed(cfg.train, TrainConfig)
    opt_cfg: OptimizerConfig = _typed(cfg.optimizer, OptimizerConfig)
    validate(cfg)
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = resolve_device(train_cfg.device)
    bundle = bundle or load_dataset(data_cfg)

    seed_everything(train_cfg.seed)
    model = build_model(cfg.model, bundle.input_shape, bundle.num_classes).to(device)
    optimizer = build_optimizer(model, opt_cfg)
    schedule = build_schedule(optimizer, train_cfg)
    criterion = loss_fn(train_cfg.loss, bundle.num_classes)
    source = BatchSource(bundle, device, data_cfg.normalize)
    generator = torch.Generator().manual_seed(train_cfg.seed)
    num_params = count_parameters(model)

    history: list[dict[str, float]] = []
    start_epoch = 0
    confusion = np.zeros((bundle.num_classes, bundle.num_classes), dtype=np.int64)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if schedule is not None and resume.get("schedule"):
            schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["rng"]["generator"])
        torch.set_rng_state(resume["rng"]["torch"])
        if torch.cuda.is_available() and resume["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
        history = list(resume["history"])
        start_epoch = resume["epoch"]
        confusion = np.asarray(resume.get("confusion", confusion), dtype=np.int64)

    def state() -> dict[str, Any]:
        return {
            "epoch": len(history),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict() if schedule is not None else None,
            "rng": {
                "generator": generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "history": list(history),
            "confusion": torch.from_numpy(np.asarray(confusion)),  # a tensor: torch.load(weights_only=True) refuses numpy arrays
            "num_params": num_params,
            "class_names": list(bundle.class_names),
        }

    for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in source.batches("train", train_cfg.batch_size, generator, augment=data_cfg.augment):
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        train_seconds = time.perf_counter() - started
        if schedule is not None:
            schedule.step()
        val_loss, val_acc, confusion = evaluate(
            model, source, "val", train_cfg.eval_batch_size, criterion, bundle.num_classes
        )
        train_loss = float(loss_sum) / seen
        if not (np.isfinite(train_loss) and np.isfinite(val_loss)):
            raise TrainingDiverged(f"the loss became {train_loss if not np.isfinite(train_loss) else val_loss} "
                                   f"at epoch {epoch} (optimizer.lr={opt_cfg.lr}): lower optimizer.lr")
        metrics = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/acc": float(correct) / seen,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "epoch_seconds": time.perf_counter() - started,
            "samples_per_second": seen / train_seconds,
            "lr": lr,
            "params": num_params,
        }
        history.append(metrics)
        if reporter is not None:
            try:
                reporter(metrics, state)
            except StopTraining:
                break

    final = dict(history[-1]) if history else {}
    if bundle.test is not None and history:
        test_loss, test_acc, _ = evaluate(model, source, "test", train_cfg.eval_batch_size, criterion, bundle.num_classes)
        final.update({"test/loss": test_loss, "test/acc": test_acc})
    return TrainResult(final, history, model, confusion, bundle.class_names, bundle.input_shape, num_params, state())
