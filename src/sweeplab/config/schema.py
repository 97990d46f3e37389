"""Typed schemas behind every config group in conf/.

Hydra merges each YAML file onto one of these dataclasses, so a misspelled key
or a value of the wrong type fails at composition and names the key.
Model schemas live beside their models (sweeplab.models.*).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | adam | adamw (sweeplab optimizers)
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw


@dataclass
class DataConfig:
    name: str = "mnist5k"  # sweeplab datasets lists them
    root: str = "data"  # where torchvision datasets live on disk
    download: bool = False  # fetch torchvision datasets when missing (needs internet)
    val_fraction: float = 0.2  # stratified hold-out taken from the training split
    split_seed: int = 0  # the hold-out is the same for every trial of a sweep
    normalize: bool = True
    augment: bool = False  # random crop + horizontal flip (CIFAR-style)
    subset: Optional[int] = None  # keep only this many training images (smoke runs)
    resize: Optional[int] = None  # resize images to resize x resize (e.g. 32 to run LeNet on 8x8 digits)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 512
    seed: int = 0
    loss: str = "cross_entropy"  # cross_entropy | mse (on softmax vs one-hot)
    lr_schedule: str = "none"  # none | cosine | step
    step_size: int = 5  # lr_schedule=step: epochs between decays
    gamma: float = 0.1  # lr_schedule=step: decay factor
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    num_threads: Optional[int] = None  # torch CPU threads; None keeps torch's default


@dataclass
class ParamSpec:
    """One dimension of a search space, keyed by the config path it sets."""

    type: str = MISSING  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[List[Any]] = None


@dataclass
class Objective:
    metric: str = MISSING  # a reported metric, e.g. val/acc or params
    mode: str = MISSING  # max | min


@dataclass
class SchedulerConfig:
    kind: str = "asha"  # asha | median | none
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # asha: keep 1/reduction_factor at each rung


@dataclass
class ResourcesConfig:
    cpu: float = 1.0  # CPUs per trial
    gpu: float = 0.0  # GPU share per trial: 0.25 puts four trials on one GPU


@dataclass
class SweepConfig:
    name: str = "sweep"
    sampler: str = "tpe"  # tpe | random | grid | cmaes | nsga2
    sampler_seed: Optional[int] = 0
    num_trials: int = 10  # configurations to try (grid ignores it: every grid point runs)
    max_concurrent: int = 2
    seeds: List[int] = field(default_factory=lambda: [0])  # each configuration runs once per seed
    metric: str = "val/acc"
    mode: str = "max"
    objectives: List[Objective] = field(default_factory=list)  # several: multi-objective (nsga2)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_failures: int = 2  # retries of a crashed trial, from its last checkpoint
    checkpoint_interval_s: float = 60.0  # a trial saves its state at most this often (also at the last epoch
    #                                      and where the scheduler may stop it); 0: every epoch
    space: Any = field(default_factory=dict)  # {config.path: ParamSpec}; checked by sweeplab.sweep.space


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: sqlite:///<output_dir>/mlflow.db ; or http://host:5000
    experiment: Optional[str] = None  # None: the sweep's name (or "train")
    async_logging: bool = True


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # None: start a local Ray; "auto" or host:port joins a cluster
    num_cpus: Optional[int] = None  # local Ray only; None: all cores
    num_gpus: Optional[int] = None  # local Ray only; None: all GPUs found
    storage_path: Optional[str] = None  # Ray results; None: <output_dir>/ray ; shared path on clusters
    optuna_storage: Optional[str] = None  # None: sqlite:///<output_dir>/optuna.db ; postgresql://... on clusters
    dashboard: bool = False


@dataclass
class Config:
    model: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    sweep: SweepConfig = MISSING
    tracking: TrackingConfig = MISSING
    cluster: ClusterConfig = MISSING
    output_dir: str = "outputs"
