"""One training run from a composed config: the function every caller shares.

The CLI, the Ray Tune trainable, the benchmarks and the tests call ``train``;
only the ``reporter`` that receives each epoch's metrics differs.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn import functional as F

from sweeplab.checks import validate
from sweeplab.config.schema import DataConfig, Loss, MemoryFormat, OptimizerConfig, TrainConfig
from sweeplab.data.batches import BatchSource, training_starts
from sweeplab.data.datasets import DatasetBundle, dataset_record, load_dataset
from sweeplab.errors import ConfigError, UserError
from sweeplab.graphs import Capture, finished, step_runner
from sweeplab.models import build_model, count_parameters
from sweeplab.optim import apply_hyperparameters, build_optimizer, build_schedule
from sweeplab.structured import typed

# reporter(metrics, checkpoint): metrics of one finished epoch; checkpoint() builds the
# state to save, only when the reporter wants it (Ray Tune does, the CLI at the end).
Reporter = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> mean loss
# on_batch(epoch, batches_done, batches_total) after each training step: the CLI's progress bar;
# None (Ray trials, benchmarks) costs one comparison per batch.
BatchCallback = Callable[[int, int, int], None]


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


def granted_device(device: str, gpu_ids: list) -> str:
    """A trial's ``train.device`` as Ray granted it: ``auto`` is a GPU only where Ray gave the trial one. Ray 2.60
    leaves CUDA_VISIBLE_DEVICES as it is for a trial granted no GPU (``sweep.resources.gpu=0``), so the trial
    would find every GPU of its node and train on one that Ray does not count, beside the trials it gave it to.
    An explicit cuda with no GPU granted is refused as the sweep is planned (``sweeplab.sweep.plan``). A trial
    granted GPUs sees them alone (Ray sets CUDA_VISIBLE_DEVICES to them), from ``cuda:0``: ``cuda:1`` of a trial
    granted one GPU names the node's second, which the trial cannot see, and trains on ``cuda``."""
    if not gpu_ids:
        return "cpu" if device == "auto" else device
    index = device.partition(":")[2]
    return "cuda" if index.isdigit() and int(index) >= len(gpu_ids) else device


def memory_format(choice: MemoryFormat, device: torch.device, model: nn.Module) -> torch.memory_format:
    """The layout of a run's images, activations and convolution weights. ``auto`` gives a convnet on the CPU
    channels_last, oneDNN's own layout there: a LeNet step took 0.66× the time, its convolutions' backward and its
    max-pooling half (docs/performance.md, "A convnet's layout on the CPU"); on CUDA it changed nothing measurable
    (B6). A model without a 2-d convolution (the MLP, the RNN) keeps its images as they are."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.contiguous_format
    if choice == MemoryFormat.auto:
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format
    return torch.channels_last if choice == MemoryFormat.channels_last else torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loss_fn(name: Loss, num_classes: int) -> Criterion:
    if name == Loss.cross_entropy:
        return F.cross_entropy
    # Loss.mse, the textbook squared error: 0.5 * sum((softmax - one_hot)^2), batch mean
    return lambda logits, y: 0.5 * (logits.softmax(1) - F.one_hot(y, num_classes).float()).pow(2).sum(1).mean()


def run_dataset(cfg: DictConfig) -> dict[str, Any]:
    """The run's dataset.json (sweeplab.data.dataset_record) for ``cfg.data``: the bundle is the one
    ``load_dataset`` keeps for this process, so this costs no loading after training."""
    data = typed(cfg.data, DataConfig)
    return dataset_record(load_dataset(data), data.normalize)


@torch.no_grad()
def evaluate(model: nn.Module, source: BatchSource, split: str, batch_size: int, criterion: Criterion,
             num_classes: int) -> tuple[float, float, np.ndarray]:
    """(loss, accuracy, confusion matrix) over a whole split; one host sync at the end."""
    model.eval()
    total_loss = torch.zeros((), device=source.device)
    n = 0
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=source.device)
    for x, y in source.batches(split, batch_size):
        logits = model(x)
        total_loss += criterion(logits, y) * len(y)
        n += len(y)
        counts += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    confusion = counts.view(num_classes, num_classes).cpu().numpy()
    return float(total_loss) / n, float(np.trace(confusion) / n), confusion


@dataclass
class TrainState:
    """What a checkpoint holds; a run restored from it continues exactly.

    Saved as a plain dict of tensors, lists and numbers (``as_dict``), so
    ``torch.load(..., weights_only=True)`` reads it back.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any] | None
    rng: dict[str, Any]
    history: list[dict[str, float]]
    confusion: torch.Tensor  # a tensor: weights_only loading refuses numpy arrays
    num_params: int
    class_names: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        return cls(**{f.name: state[f.name] for f in fields(cls)})


class _Run:
    """One training run's pieces, built once from the config (or restored from a TrainState)."""

    def __init__(self, cfg: DictConfig, bundle: DatasetBundle | None, on_batch: BatchCallback | None = None) -> None:
        self.on_batch = on_batch
        self.data_cfg: DataConfig = typed(cfg.data, DataConfig)
        self.train_cfg: TrainConfig = typed(cfg.train, TrainConfig)
        self.opt_cfg: OptimizerConfig = typed(cfg.optimizer, OptimizerConfig)
        validate(cfg)
        if self.train_cfg.num_threads:
            torch.set_num_threads(self.train_cfg.num_threads)
        self.device = resolve_device(self.train_cfg.device)
        self.bundle = bundle or load_dataset(self.data_cfg)
        seed_everything(self.train_cfg.seed)
        self.model = build_model(cfg.model, self.bundle.input_shape, self.bundle.num_classes)
        layout = memory_format(self.train_cfg.memory_format, self.device, self.model)
        self.model.to(self.device).to(memory_format=layout)
        self.optimizer = build_optimizer(self.model, self.opt_cfg)
        self.schedule = build_schedule(self.optimizer, self.train_cfg)
        self.criterion = loss_fn(self.train_cfg.loss, self.bundle.num_classes)
        self.source = BatchSource(self.bundle, self.device, self.data_cfg.normalize, layout)
        self.generator = torch.Generator().manual_seed(self.train_cfg.seed)
        self.num_params = count_parameters(self.model)
        self.history: list[dict[str, float]] = []
        self.capture = Capture()  # the CUDA graphs of this run's epochs (sweeplab.graphs)
        classes = self.bundle.num_classes
        self.confusion = np.zeros((classes, classes), dtype=np.int64)

    def restore(self, saved: dict[str, Any]) -> None:
        state = TrainState.from_dict(saved)
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        if self.schedule is not None and state.schedule:
            self.schedule.load_state_dict(state.schedule)
        # PBT: the configs' values, not the copied trial's
        apply_hyperparameters(self.optimizer, self.schedule, self.opt_cfg, self.train_cfg)
        self.generator.set_state(state.rng["generator"])
        torch.set_rng_state(state.rng["torch"])
        if torch.cuda.is_available() and state.rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(state.rng["cuda"])
        self.history = list(state.history)
        self.confusion = np.asarray(state.confusion, dtype=np.int64)

    def state(self) -> dict[str, Any]:
        return TrainState(
            epoch=len(self.history),
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(),
            schedule=self.schedule.state_dict() if self.schedule is not None else None,
            rng={
                "generator": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            history=list(self.history),
            confusion=torch.from_numpy(np.asarray(self.confusion)),
            num_params=self.num_params,
            class_names=list(self.bundle.class_names),
        ).as_dict()

    def train_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One pass over the training split; sums stay on the device (no host sync per step)."""
        model, optimizer, criterion, on_batch = self.model, self.optimizer, self.criterion, self.on_batch
        batch_size = self.train_cfg.batch_size
        total = len(training_starts(len(self.bundle.train), batch_size))
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach() * len(y))
            correct.add_((logits.detach().argmax(1) == y).sum())

        run_step = step_runner(step, self.device, self.train_cfg.cuda_graphs, optimizer, self.capture)
        seen = 0
        batches = self.source.batches("train", batch_size, self.generator, augment=self.data_cfg.augment)
        for done, (x, y) in enumerate(batches, 1):
            run_step(x, y)
            seen += len(y)
            if on_batch is not None:
                on_batch(epoch, done, total)
        return loss_sum, correct, seen

    def epoch(self, epoch: int) -> dict[str, float]:
        """Train, step the schedule, validate; the epoch's metrics."""
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum, correct, seen = self.train_epoch(epoch)
        finished(self.device)
        train_seconds = time.perf_counter() - started
        if self.schedule is not None:
            self.schedule.step()
        val_loss, val_acc, self.confusion = evaluate(
            self.model, self.source, "val", self.train_cfg.eval_batch_size, self.criterion, self.bundle.num_classes
        )
        train_loss = float(loss_sum) / seen
        if not (np.isfinite(train_loss) and np.isfinite(val_loss)):
            raise TrainingDiverged(f"the loss became {train_loss if not np.isfinite(train_loss) else val_loss} "
                                   f"at epoch {epoch} (optimizer.lr={self.opt_cfg.lr}): lower optimizer.lr")
        metrics = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/acc": float(correct) / seen,
            "val/loss": val_loss,
            "val/acc": val_acc,
            "epoch_seconds": time.perf_counter() - started,
            "samples_per_second": seen / train_seconds,
            "lr": lr,
            "params": self.num_params,
        }
        self.history.append(metrics)
        return metrics

    def result(self) -> TrainResult:
        final = dict(self.history[-1]) if self.history else {}
        if self.bundle.test is not None and self.history:
            test_loss, test_acc, _ = evaluate(self.model, self.source, "test", self.train_cfg.eval_batch_size,
                                              self.criterion, self.bundle.num_classes)
            final.update({"test/loss": test_loss, "test/acc": test_acc})
        return TrainResult(final, self.history, self.model, self.confusion, self.bundle.class_names,
                           self.bundle.input_shape, self.num_params, self.state())


def train(
    cfg: DictConfig,
    reporter: Reporter | None = None,
    resume: dict[str, Any] | None = None,
    bundle: DatasetBundle | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; ``resume`` (a saved state) continues exactly where it stopped;
    ``on_batch`` hears of every training step (a progress bar)."""
    run = _Run(cfg, bundle, on_batch)
    if resume is not None:
        run.restore(resume)
    for epoch in range(len(run.history) + 1, run.train_cfg.epochs + 1):
        metrics = run.epoch(epoch)
        if reporter is not None:
            try:
                reporter(metrics, run.state)
            except StopTraining:
                break
    return run.result()
