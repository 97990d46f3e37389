"""Fused trials: K trials that share an architecture and differ only in continuous
hyperparameters train as one batched model (``torch.func`` stack + vmap).

Each member starts from the weights ``train`` would give it, draws its own shuffle order,
keeps its own SGD momentum and learning-rate schedule, and reports its own epochs, so a
member's curve is the unfused trial's curve up to float reassociation. ``train_pack`` is
what callers use: it fuses where that pays (a GPU) and otherwise runs ``train`` per trial.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from sweeplab.checks import input_shape, validate
from sweeplab.config.schema import DataConfig, OptimizerConfig, TrainConfig
from sweeplab.data import DATASETS
from sweeplab.data.batches import BatchSource, random_crop_flip, training_starts
from sweeplab.data.datasets import DatasetBundle, load_dataset
from sweeplab.errors import ConfigError
from sweeplab.fusion import MEMBER_KEYS, shared_settings, should_fuse
from sweeplab.graphs import Capture, finished, step_runner
from sweeplab.models import build_model, count_parameters
from sweeplab.optim import build_optimizer, build_schedule
from sweeplab.structured import typed
from sweeplab.train import (
    Reporter,
    StopTraining,
    TrainingDiverged,
    TrainResult,
    evaluate,
    loss_fn,
    resolve_device,
    seed_everything,
    train,
)

# An outcome per trial: its TrainResult, or the TrainingDiverged that train() would have raised.
Outcome = TrainResult | TrainingDiverged
# Told each trial's outcome (its position in the caller's list) as soon as that trial has ended, while the others
# may train on: a sweep's pack ends a diverged member's trial there, and its resources go to the next trial.
OnEnd = Callable[[int, Outcome], None]


def fusable(cfgs: Sequence[DictConfig]) -> str | None:
    """None when ``cfgs`` can train as one pack; otherwise why not, in words."""
    if not cfgs:
        return "no trials to fuse"
    shared = [shared_settings(cfg) for cfg in cfgs]
    if shared[0].get("optimizer.name") != "sgd":
        return f"optimizer.name={shared[0].get('optimizer.name')}: only sgd trains fused"
    for i, other in enumerate(shared[1:], start=1):
        for key in sorted(set(shared[0]) | set(other)):
            if shared[0].get(key) != other.get(key):
                return (f"trials 0 and {i} differ in {key} ({shared[0].get(key)!r} vs {other.get(key)!r}); "
                        f"a fused pack may differ only in {', '.join(MEMBER_KEYS)}")
    return _model_reason(cfgs[0])


def _model_reason(cfg: DictConfig) -> str | None:
    """Why this architecture cannot run as a vmapped pack, or None."""
    shape = input_shape(cfg)
    model = build_model(cfg.model, shape, DATASETS.get(cfg.data.name).num_classes)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            return (f"model {cfg.model.name!r} has batch norm ({name}), whose running statistics "
                    f"update in place; fused trials support models without it")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return (f"model {cfg.model.name!r} has dropout ({name}, p={module.p}), whose random masks "
                    f"cannot match the unfused trials'; set its dropout to 0 or train unfused")
    if any(True for _ in model.buffers()):
        return f"model {cfg.model.name!r} keeps buffers (state updated in place); fused trials need stateless layers"
    criterion = loss_fn(cfg.train.loss, DATASETS.get(cfg.data.name).num_classes)

    def member_loss(params, buffers, x, y):
        return criterion(functional_call(model, (params, buffers), (x,)), y)

    try:  # one tiny training step of a 2-member pack and its evaluation (no grad, as _evaluate_pack runs it): an
        #   op without a batching rule fails here (LSTM and GRU have one only under grad, which decomposes them)
        params, buffers = stack_module_state([model, model])
        images, labels = torch.zeros(2, 2, *shape), torch.zeros(2, 2, dtype=torch.long)
        with warnings.catch_warnings():  # torch's note on the slow fallback it takes meanwhile: this is a probe
            warnings.simplefilter("ignore", UserWarning)
            vmap(grad_and_value(member_loss))(params, buffers, images, labels)
            with torch.no_grad():
                vmap(lambda p, b, x: functional_call(model, (p, b), (x,)), in_dims=(0, 0, None))(
                    params, buffers, images[0])
    except Exception as err:
        first = str(err).split(". ")[0].strip()
        return (f"model {cfg.model.name!r} with train.loss={cfg.train.loss} cannot run under torch.func.vmap "
                f"({type(err).__name__}: {first})")
    return None


@dataclass(eq=False)  # members are told apart by identity
class _Member:
    """One trial of a pack: what train() would hold for it, minus the stacked weights."""

    index: int  # position in the caller's list
    opt_cfg: OptimizerConfig
    reporter: Reporter | None
    model: nn.Module  # receives the member's weights whenever a checkpoint or result is built
    optimizer: torch.optim.Optimizer  # holds the lr schedule's state and, on write-back, the momentum
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    confusion: np.ndarray  # val confusion matrix of the last epoch
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class _Pack:
    """The stacked weights and momentum buffers of the members still training."""

    def __init__(self, members: list[_Member], device: torch.device, nesterov: bool) -> None:
        self.members = members
        self.nesterov = nesterov
        params, self.buffers = stack_module_state([m.model for m in members])
        self.params = {n: p.detach() for n, p in params.items()}
        self.momentum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.device = device
        self._hyper()

    def _hyper(self) -> None:
        self.weight_decay = self._per_element([m.opt_cfg.weight_decay for m in self.members])
        self.decays = any(m.opt_cfg.weight_decay != 0 for m in self.members)
        self.beta = self._per_element([m.opt_cfg.momentum for m in self.members])
        self.set_lr([m.lr for m in self.members])

    def _per_element(self, values: list[float]) -> list[torch.Tensor]:
        """One value per member, laid out like each stacked parameter (what _foreach ops need)."""
        column = torch.tensor(values, dtype=torch.float32, device=self.device)
        return [column.view((-1,) + (1,) * (p.dim() - 1)).expand_as(p).contiguous() for p in self.params.values()]

    def set_lr(self, lrs: list[float]) -> None:
        self.neg_lr = self._per_element([-lr for lr in lrs])

    def keep(self, keep: list[int]) -> None:
        """Drop every member whose position is not in ``keep`` (all of them: the pack ends)."""
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in keep]
        self.params = {n: p.index_select(0, index) for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
        self.momentum = {n: b.index_select(0, index) for n, b in self.momentum.items()}
        self._hyper()

    @torch.no_grad()
    def sgd_step(self, grads: dict[str, torch.Tensor]) -> None:
        """torch.optim.SGD's update (dampening 0), each member with its own lr, momentum, weight decay;
        multi-tensor ops, so a GPU runs a few kernels per step rather than a few per parameter."""
        params, bufs = list(self.params.values()), list(self.momentum.values())
        d_p = [grads[name] for name in self.params]
        if self.decays:
            d_p = list(torch._foreach_addcmul(d_p, self.weight_decay, params))  # grad + weight_decay * param
        torch._foreach_mul_(bufs, self.beta)
        torch._foreach_add_(bufs, d_p)  # buf starts at 0: the first step sets buf = d_p, as SGD does
        d_p = list(torch._foreach_addcmul(d_p, self.beta, bufs)) if self.nesterov else bufs
        torch._foreach_addcmul_(params, self.neg_lr, d_p)  # param - lr * d_p

    def write_back(self, member: _Member) -> None:
        """Copy a member's weights and momentum into its own model and optimizer."""
        k = self.members.index(member)
        with torch.no_grad():
            for name, p in member.model.named_parameters():
                p.copy_(self.params[name][k])
        if member.opt_cfg.momentum != 0 and member.history:  # torch.optim.SGD keeps no buffer otherwise
            for name, p in member.model.named_parameters():
                member.optimizer.state[p]["momentum_buffer"] = self.momentum[name][k].clone()


def train_fused(
    cfgs: Sequence[DictConfig],
    reporters: Sequence[Reporter | None] | None = None,
    bundle: DatasetBundle | None = None,
    on_end: OnEnd | None = None,
) -> list[Outcome]:
    """Train ``cfgs`` as one vmapped pack; one outcome per cfg, in order, each also given to ``on_end`` once
    its member has ended.

    Each reporter sees exactly what ``train`` would hand it; StopTraining from a reporter
    ends that member only, as does a non-finite loss (its outcome is then the
    TrainingDiverged that ``train`` would have raised). ``epoch_seconds`` is the pack's epoch,
    ``samples_per_second`` a member's own images over it (the pack's throughput is the sum).
    A reporter's checkpoint() must be called during its report, as Ray Tune's reporter does."""
    reason = fusable(cfgs)
    if reason is not None:
        raise ConfigError(f"these {len(cfgs)} trials cannot train fused: {reason}")
    reporters = list(reporters) if reporters is not None else [None] * len(cfgs)
    if len(reporters) != len(cfgs):
        raise ValueError(f"{len(cfgs)} configs but {len(reporters)} reporters")
    for cfg in cfgs:
        validate(cfg)
    data_cfg: DataConfig = typed(cfgs[0].data, DataConfig)
    train_cfg: TrainConfig = typed(cfgs[0].train, TrainConfig)
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = resolve_device(train_cfg.device)
    bundle = bundle or load_dataset(data_cfg)
    criterion = loss_fn(train_cfg.loss, bundle.num_classes)
    source = BatchSource(bundle, device, data_cfg.normalize)

    members = []
    for index, (cfg, reporter) in enumerate(zip(cfgs, reporters, strict=True)):
        member_train: TrainConfig = typed(cfg.train, TrainConfig)
        opt_cfg: OptimizerConfig = typed(cfg.optimizer, OptimizerConfig)
        seed_everything(member_train.seed)  # as train() does: same seed, same initial weights
        model = build_model(cfg.model, bundle.input_shape, bundle.num_classes).to(device)
        optimizer = build_optimizer(model, opt_cfg)
        schedule = build_schedule(optimizer, member_train)
        generator = torch.Generator().manual_seed(member_train.seed)
        no_epoch_yet = np.zeros((bundle.num_classes, bundle.num_classes), dtype=np.int64)
        members.append(_Member(index, opt_cfg, reporter, model, optimizer, schedule, generator, no_epoch_yet))
    num_params = count_parameters(members[0].model)
    pack = _Pack(members, device, members[0].opt_cfg.nesterov)
    base = copy.deepcopy(members[0].model).to("meta")

    def member_loss(params, buffers, x, y):
        logits = functional_call(base, (params, buffers), (x,))
        return criterion(logits, y), logits

    train_step = vmap(grad_and_value(member_loss, has_aux=True))
    outcomes: dict[int, Outcome] = {}

    def ended(member: _Member, outcome: Outcome) -> None:
        outcomes[member.index] = outcome
        if on_end is not None:
            on_end(member.index, outcome)

    def finish(member: _Member) -> None:
        pack.write_back(member)
        final = dict(member.history[-1]) if member.history else {}
        if bundle.test is not None and member.history:
            test_loss, test_acc, _ = evaluate(member.model, source, "test", train_cfg.eval_batch_size,
                                              criterion, bundle.num_classes)
            final.update({"test/loss": test_loss, "test/acc": test_acc})
        ended(member, TrainResult(final, member.history, member.model, member.confusion, bundle.class_names,
                                  bundle.input_shape, num_params, _state(member, bundle, num_params)))

    def checkpoint(member: _Member) -> Callable[[], dict[str, Any]]:
        def build() -> dict[str, Any]:
            pack.write_back(member)
            return _state(member, bundle, num_params)

        return build

    train_split = source.splits["train"]
    n = len(train_split)
    capture = Capture()
    for epoch in range(1, train_cfg.epochs + 1):
        started = time.perf_counter()
        k = len(pack.members)
        lrs = [m.lr for m in pack.members]
        pack.set_lr(lrs)
        # each member's own shuffle, drawn exactly as BatchSource.batches draws it
        orders = torch.stack([torch.randperm(n, generator=m.generator) for m in pack.members]).to(device)
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.long)

        def step(x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor = loss_sum,
                 correct: torch.Tensor = correct) -> None:  # this epoch's sums (a graph keeps their addresses)
            grads, (loss, logits) = train_step(pack.params, pack.buffers, x, y)
            pack.sgd_step(grads)
            loss_sum.add_(loss.detach() * y.shape[1])
            correct.add_((logits.detach().argmax(-1) == y).sum(1))

        # the pack's weights, learning rates and members change between epochs: a graph per epoch
        run_step = step_runner(step, device, train_cfg.cuda_graphs, capture=capture)
        seen = 0
        for start in training_starts(n, train_cfg.batch_size):
            idx = orders[:, start : start + train_cfg.batch_size]
            x = source.take("train", idx)
            if data_cfg.augment:
                x = torch.stack([random_crop_flip(x[i], m.generator, source.black) for i, m in enumerate(pack.members)])
            run_step(x, train_split.labels[idx])
            seen += idx.shape[1]
        finished(device)
        train_seconds = time.perf_counter() - started
        for m in pack.members:
            if m.schedule is not None:
                with warnings.catch_warnings():  # the schedule's optimizer never steps: the pack does
                    warnings.simplefilter("ignore", UserWarning)
                    m.schedule.step()
        val_loss, val_acc, confusion = _evaluate_pack(base, pack, source, train_cfg.eval_batch_size, criterion,
                                                      bundle.num_classes)
        train_loss = [s / seen for s in loss_sum.tolist()]  # as train(): float(sum) / seen
        train_acc = [c / seen for c in correct.tolist()]
        epoch_seconds = time.perf_counter() - started
        leaving = []
        for i, m in enumerate(pack.members):
            if not (math.isfinite(train_loss[i]) and math.isfinite(val_loss[i])):
                bad = train_loss[i] if not math.isfinite(train_loss[i]) else val_loss[i]
                ended(m, TrainingDiverged(f"the loss became {bad} at epoch {epoch} "
                                          f"(optimizer.lr={m.opt_cfg.lr}): lower optimizer.lr"))
                leaving.append(i)
                continue
            m.confusion = confusion[i]
            metrics = {
                "epoch": epoch,
                "train/loss": train_loss[i],
                "train/acc": train_acc[i],
                "val/loss": val_loss[i],
                "val/acc": val_acc[i],
                "epoch_seconds": epoch_seconds,
                "samples_per_second": seen / train_seconds,
                "lr": lrs[i],
                "params": num_params,
            }
            m.history.append(metrics)
            if m.reporter is not None:
                try:
                    m.reporter(metrics, checkpoint(m))
                except StopTraining:
                    finish(m)
                    leaving.append(i)
        if leaving:
            pack.keep([i for i in range(k) if i not in leaving])
        if not pack.members:
            break
    for m in pack.members:
        finish(m)
    return [outcomes[i] for i in range(len(cfgs))]


@torch.no_grad()
def _evaluate_pack(base: nn.Module, pack: _Pack, source: BatchSource, batch_size: int, criterion, num_classes: int):
    """train.evaluate for every member at once: per-member losses, accuracies and confusion matrices."""
    k = len(pack.members)
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    member_losses = vmap(criterion, in_dims=(0, None))
    offsets = torch.arange(k, device=source.device).view(k, 1) * num_classes**2
    counts = torch.zeros(k * num_classes**2, dtype=torch.long, device=source.device)
    batch_losses = []
    for x, y in source.batches("val", batch_size):
        logits = forward(pack.params, pack.buffers, x)  # [k, batch, classes]
        batch_losses.append((member_losses(logits, y), len(y)))
        cells = (offsets + y * num_classes + logits.argmax(-1)).flatten()
        counts += torch.bincount(cells, minlength=k * num_classes**2)
    total, n = [0.0] * k, 0
    for losses, size in batch_losses:  # summed in train.evaluate's order: float(loss) * size per batch
        for i, value in enumerate(losses.tolist()):
            total[i] += value * size
        n += size
    confusion = counts.view(k, num_classes, num_classes).cpu().numpy()
    acc = [float(np.trace(c) / n) for c in confusion]
    return [t / n for t in total], acc, confusion


def _state(member: _Member, bundle: DatasetBundle, num_params: int) -> dict[str, Any]:
    """The checkpoint train() would save for this trial (call after write_back); a copy, since
    the member's model and optimizer change again when the pack writes back later."""
    return {
        "epoch": len(member.history),
        "model": {k: v.detach().cpu().clone() for k, v in member.model.state_dict().items()},
        "optimizer": copy.deepcopy(member.optimizer.state_dict()),
        "schedule": member.schedule.state_dict() if member.schedule is not None else None,
        "rng": {
            "generator": member.generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "history": list(member.history),
        "confusion": torch.from_numpy(np.asarray(member.confusion)),
        "num_params": num_params,
        "class_names": list(bundle.class_names),
    }


def train_pack(
    cfgs: Sequence[DictConfig],
    reporters: Sequence[Reporter | None] | None = None,
    bundle: DatasetBundle | None = None,
    force: bool = False,
    on_end: OnEnd | None = None,
) -> list[Outcome]:
    """Train ``cfgs``: fused when that pays (``should_fuse``) and is possible (``fusable``),
    otherwise one after another through ``train``. One outcome per cfg, in order, each also given to
    ``on_end`` as soon as its trial has ended."""
    reporters = list(reporters) if reporters is not None else [None] * len(cfgs)
    if len(reporters) != len(cfgs):
        raise ValueError(f"{len(cfgs)} configs but {len(reporters)} reporters")
    device = resolve_device(typed(cfgs[0].train, TrainConfig).device) if cfgs else torch.device("cpu")
    if should_fuse(device, len(cfgs), force) and fusable(cfgs) is None:
        return train_fused(cfgs, reporters, bundle, on_end)
    outcomes: list[Outcome] = []
    for index, (cfg, reporter) in enumerate(zip(cfgs, reporters, strict=True)):
        try:
            outcomes.append(train(cfg, reporter, bundle=bundle))
        except TrainingDiverged as err:
            outcomes.append(err)
        if on_end is not None:
            on_end(index, outcomes[-1])
    return outcomes
