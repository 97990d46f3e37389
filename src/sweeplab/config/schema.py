"""Typed schemas behind every config group in conf/, with their closed name sets and ranges.

Hydra merges each YAML file onto one of these dataclasses, so a misspelled key, a value of the
wrong type or a name outside a ``Choice`` fails at composition and names the key.
Each dataclass holds every default; a YAML preset sets only what differs (and the ``name`` it picks).
Each ``check()`` holds the ranges of its own fields. Model schemas live beside their models.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING, DictConfig

from sweeplab.errors import ConfigError
from sweeplab.structured import Choice, out_of_range, typed

# The config groups each trial of a sweep composes for itself, so a sweep may search them (and a pack's members
# share them); tracking, cluster and sweep are one for the whole sweep.
TRIAL_GROUPS = ("model", "optimizer", "data", "train")


class Loss(Choice):
    cross_entropy = "cross_entropy"
    mse = "mse"  # 0.5 * sum((softmax - one_hot)^2), the textbook squared error


class LrSchedule(Choice):
    none = "none"
    cosine = "cosine"
    step = "step"


class MemoryFormat(Choice):
    auto = "auto"  # channels_last for a convnet on the CPU, contiguous elsewhere
    channels_last = "channels_last"  # NHWC: a convnet's images, activations and weights channel-innermost
    contiguous = "contiguous"  # NCHW, PyTorch's default


class SchedulerKind(Choice):
    asha = "asha"
    median = "median"
    hyperband = "hyperband"
    pbt = "pbt"  # Population Based Training: weak trials copy a strong one's checkpoint, then perturb its values
    none = "none"


class Mode(Choice):
    max = "max"
    min = "min"


@dataclass
class OptimizerConfig:
    name: str = MISSING  # a registered optimizer (sweeplab.optim): sgd | adam | adamw
    lr: float = MISSING  # each optimizer preset says its own
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw

    def check(self) -> None:
        if not self.lr > 0:
            raise out_of_range("optimizer.lr", self.lr, "> 0")
        if not 0 <= self.momentum < 1:
            raise out_of_range("optimizer.momentum", self.momentum, "in [0, 1)")
        if self.weight_decay < 0:
            raise out_of_range("optimizer.weight_decay", self.weight_decay, ">= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise out_of_range("optimizer.betas", list(self.betas), "two numbers in [0, 1), e.g. [0.9, 0.999]")
        if self.name == "sgd" and self.nesterov and self.momentum <= 0:
            raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0")


@dataclass
class DataConfig:
    name: str = MISSING  # a registered dataset: sweeplab datasets lists them
    root: str = "data"  # where torchvision datasets live on disk
    download: bool = False  # fetch torchvision datasets when missing (needs internet)
    val_fraction: float = 0.2  # stratified hold-out taken from the training split
    split_seed: int = 0  # the hold-out is the same for every trial of a sweep
    normalize: bool = True
    augment: bool = False  # random crop + horizontal flip (CIFAR-style)
    subset: int | None = None  # keep only this many training images (smoke runs)
    resize: int | None = None  # resize images to resize x resize (e.g. 32 to run LeNet on 8x8 digits)

    def check(self) -> None:
        """Ranges; whether subset covers every class is the dataset's to say (sweeplab.data)."""
        if not 0 < self.val_fraction < 1:
            raise out_of_range("data.val_fraction", self.val_fraction, "strictly between 0 and 1")
        if self.split_seed < 0:  # NumPy's generators take no negative seed
            raise out_of_range("data.split_seed", self.split_seed, ">= 0")
        if self.subset is not None and self.subset < 1:
            raise out_of_range("data.subset", self.subset, ">= 1 (or null for all images)")
        if self.resize is not None and self.resize < 1:
            raise out_of_range("data.resize", self.resize, ">= 1 (or null)")


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    eval_batch_size: int = 512
    seed: int = 0
    loss: Loss = Loss.cross_entropy
    lr_schedule: LrSchedule = LrSchedule.cosine
    step_size: int = 5  # lr_schedule=step: epochs between decays
    gamma: float = 0.1  # lr_schedule=step: decay factor
    device: str = "auto"  # auto (cuda when present; a sweep's trial: when Ray granted it one) | cpu | cuda | cuda:N
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    cuda_graphs: bool = True  # on CUDA, with SGD: replay each full batch's step from a CUDA graph (sweeplab.graphs)
    memory_format: MemoryFormat = MemoryFormat.auto  # a convnet's layout (sweeplab.train.memory_format)

    def check(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "step_size"):
            if getattr(self, key) < 1:
                raise out_of_range(f"train.{key}", getattr(self, key), ">= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise out_of_range("train.num_threads", self.num_threads, ">= 1 (or null for torch's default)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise out_of_range("train.device", self.device, "auto, cpu, cuda or cuda:N")
        if not 0 < self.gamma <= 1:
            raise out_of_range("train.gamma", self.gamma, "in (0, 1]")


def check_ranges(cfg: DictConfig) -> None:
    """The ranges of the optimizer, data and train groups of a composed config."""
    groups: list[tuple[str, type[OptimizerConfig | DataConfig | TrainConfig]]] = [
        ("optimizer", OptimizerConfig), ("data", DataConfig), ("train", TrainConfig)
    ]
    for group, schema in groups:
        typed(cfg[group], schema, group).check()


@dataclass
class Objective:
    metric: str = MISSING  # a reported metric, e.g. val/acc or params
    mode: Mode = MISSING


@dataclass
class SchedulerConfig:
    kind: SchedulerKind = SchedulerKind.asha
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # asha, hyperband: keep 1/reduction_factor at each rung
    perturbation_interval: int = 1  # pbt: epochs between exploit/explore steps (a checkpoint at each)
    quantile_fraction: float = 0.25  # pbt: the bottom fraction copies the top fraction
    resample_probability: float = 0.25  # pbt: a perturbed value is drawn afresh from its range this often
    mutate: list[str] = field(default_factory=list)  # pbt: searched keys it perturbs; empty: every number key
    #                                                 that changes no weight's shape (sweeplab.sweep.pbt.SHAPE_FREE)


@dataclass
class ResourcesConfig:
    cpu: float = 1.0  # CPUs per trial
    gpu: float = 0.0  # GPU share per trial: 0.25 puts four trials on one GPU


SWEEP_NAME = r"[\w.-]+"  # what a sweep's name may hold


@dataclass
class SweepConfig:
    name: str = "sweep"  # a sweep file's name replaces it
    sampler: Any = "tpe"  # a name (sweeplab.sweep.samplers.SAMPLERS) or {_target_: optuna.samplers.X, arg: value}
    sampler_seed: int | None = 0
    num_trials: int = 10  # configurations to try (grid ignores it: every grid point runs)
    max_concurrent: int = 2
    seeds: list[int] = field(default_factory=lambda: [0])  # each configuration runs once per seed
    metric: str = "val/acc"
    mode: Mode = Mode.max
    objectives: list[Objective] = field(default_factory=list)  # several: multi-objective (nsga2)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    time_budget_s: float | None = None  # no trial starts or continues after this many seconds; None: no limit
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint
    checkpoint_interval_s: float = 60.0  # a trial saves its state at most this often (also at the last epoch
    #                                      and where the scheduler may stop it); 0: every epoch
    space: Any = field(default_factory=dict)  # {config.path or group: {type, low, high, log, step, choices, when}}:
    #                                           each a sweeplab.sweep.space.Dimension, read and checked there
    fuse: int = 1  # train up to this many trials that share an architecture as one vmapped model (GPU only); 1: off
    fuse_on_cpu: bool = False  # fuse on CPUs too, where it does not pay: for tests and benchmarks

    def check(self) -> None:
        if not re.fullmatch(SWEEP_NAME, self.name):  # it is part of the sweep's id: folders, MLflow filters, commands
            raise ConfigError(f"sweep.name={self.name!r} must hold only letters, digits, '_', '-' and '.' (it names "
                              "the sweep's folders, study and MLflow runs): set sweep.name in the file, or rename the "
                              "file, whose name is the default")
        if self.num_trials < 1:
            raise out_of_range("sweep.num_trials", self.num_trials, ">= 1")
        if self.max_concurrent < 1:
            raise out_of_range("sweep.max_concurrent", self.max_concurrent, ">= 1")
        cpu, gpu = self.resources.cpu, self.resources.gpu
        if not 0 < cpu < math.inf:  # NaN too
            raise out_of_range("sweep.resources.cpu", cpu, "> 0 (a share of a CPU, e.g. 0.5, or CPUs)")
        if not (0 <= gpu <= 1 or (1 < gpu < math.inf and gpu == int(gpu))):  # NaN too
            raise out_of_range("sweep.resources.gpu", gpu,
                               "0 (none), a share of one GPU up to 1 (0.25 puts four trials on one), or a whole "
                               "number of GPUs")
        if self.fuse < 1:
            raise out_of_range("sweep.fuse", self.fuse, ">= 1 (1: every trial trains alone)")
        if self.max_failures < 0:  # Ray reads a negative count as "retry forever"
            raise out_of_range("sweep.max_failures", self.max_failures, ">= 0 (0: a crashed trial is not retried)")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise out_of_range("sweep.time_budget_s", self.time_budget_s, "> 0 seconds (or null for no limit)")
        sc = self.scheduler
        if sc.perturbation_interval < 1:
            raise out_of_range("sweep.scheduler.perturbation_interval", sc.perturbation_interval, ">= 1 epoch")
        if not 0 < sc.quantile_fraction <= 0.5:
            raise out_of_range("sweep.scheduler.quantile_fraction", sc.quantile_fraction, "in (0, 0.5]")
        if not 0 <= sc.resample_probability <= 1:
            raise out_of_range("sweep.scheduler.resample_probability", sc.resample_probability, "in [0, 1]")


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: sqlite:///<output_dir>/mlflow.db ; or http://host:5000
    experiment: str | None = None  # None: the sweep's name (or "train")
    async_logging: bool = True  # MLflow calls on one background thread of the driver; false: inline
    log_models: int = 1  # a sweep logs an MLflow Model (runs:/<id>/model) for this many of its best trials
    flush_wait_s: float = 30.0  # at a sweep's end, how long to wait for a store that does not answer (then: sync)
    client_process: bool | None = None  # the sweep's MLflow client in a process of its own; None: from 128 trials
    tensorboard: bool = False  # a sweep also writes Ray Tune's TensorBoard files per trial; off: tensorboardX
    #                            imports torch into the sweep's driver, and MLflow has the same metrics


@dataclass
class ClusterConfig:
    address: str | None = None  # None: start a local Ray on 127.0.0.1; "auto" or host:port joins a cluster
    num_cpus: int | None = None  # local Ray only; None: all cores
    num_gpus: int | None = None  # local Ray only; None: all GPUs found
    storage_path: str | None = None  # Ray results; None: <output_dir>/ray; shared path or URI (s3://...) on clusters
    optuna_storage: str | None = None  # None: <output_dir>/optuna.journal ; a journal file path ; postgresql://...
    dashboard: bool = False  # a local Ray's dashboard on 127.0.0.1, needs ray[default] (a cluster's head runs its own)
    dashboard_port: int | None = None  # local Ray only; None: 8265, or the next free port after it


@dataclass
class Config:
    model: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    sweep: SweepConfig = MISSING
    tracking: TrackingConfig = MISSING
    cluster: ClusterConfig = MISSING
    output_dir: str = "outputs"  # run folders, the local MLflow store and the local Optuna study live here


# The config's top-level keys that all of a sweep's trials share (tracking, cluster, sweep, output_dir)
SHARED_KEYS = frozenset(f.name for f in fields(Config)) - set(TRIAL_GROUPS)


def shared_key(path: str) -> bool:
    """Whether a config path (``tracking.uri``, ``output_dir``) is one for the whole sweep, not a trial's own."""
    return path.split(".", 1)[0] in SHARED_KEYS
