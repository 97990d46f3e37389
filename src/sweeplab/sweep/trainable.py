"""The Ray Tune trainable: compose the trial's config, check it, call ``train``.

Ray reuses a worker process for many trials, so what trials share is made once
per process: the Hydra composition of each group choice (a trial only sets its
sampled values on a copy) and the dataset (``load_dataset`` keeps it). A trial
then costs its training and little else.
"""
from __future__ import annotations

import copy
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeplab.errors import ConfigError
from sweeplab.sweep.space import overrides_for
from sweeplab.sweep.system import SystemSampler

if TYPE_CHECKING:
    from ray import tune

STATE_FILE = "state.pt"  # in each Ray checkpoint of a trial: what ``train(resume=...)`` continues from


@dataclass(frozen=True)
class TrialSpec:
    """What every worker needs to compose its trial's config (picklable, small)."""

    sweep_file: str
    sweep_text: str  # the file's content: workers on other machines may not have the file
    overrides: tuple[str, ...]  # the command line's overrides plus absolute paths
    space_keys: tuple[str, ...]
    project_root: str
    group_keys: tuple[str, ...] = ()  # the space keys that pick a config group (model=vgg): composed by Hydra
    checkpoint_epochs: frozenset[int] = frozenset()  # epochs a scheduler may stop a trial at
    checkpoint_interval_s: float = 60.0  # otherwise a checkpoint at most this often, for retries
    # categorical keys whose choices travel through Optuna encoded (a list as its text): encoded -> value
    decoded: dict[str, dict[Any, Any]] = field(default_factory=dict, hash=False)
    pack_manager: str | None = None  # sweep.fuse: the actor that seats trials in packs (sweeplab.sweep.packs)


@functools.lru_cache(maxsize=16)
def _composed(sweep_file: str, sweep_text: str, overrides: tuple[str, ...], project_root: str,
              space_keys: tuple[str, ...]) -> tuple[DictConfig, bool]:
    """The sweep's config, and whether each trial resolves it once its values are set: where an interpolation may
    read a searched key (``eval_batch_size: ${train.batch_size}`` with train.batch_size searched), as a command
    line's overrides would reach it; otherwise it is resolved here, once."""
    from sweeplab.compose import compose

    os.environ.setdefault("SWEEPLAB_HOME", project_root)
    cfg = compose(overrides, Path(sweep_file), sweep_text, resolve=False)
    reads = any("${." in text or any(key in text for key in (*space_keys, "train.seed"))
                for text in _interpolations(OmegaConf.to_container(cfg, resolve=False)))
    if not reads:
        OmegaConf.resolve(cfg)
    return cfg, reads


def _interpolations(node: Any) -> Iterator[str]:
    if isinstance(node, dict | list):
        for item in node.values() if isinstance(node, dict) else node:
            yield from _interpolations(item)
    elif isinstance(node, str) and "${" in node:
        yield node


def compose_trial(spec: TrialSpec, config: dict[str, Any]) -> DictConfig:
    """The trial's config: the sweep composed once per group choice, then the sampled values set on a copy
    (typed by the schema, as a command-line override would be), and the interpolations that read them resolved."""
    from omegaconf.errors import OmegaConfBaseException

    groups = overrides_for({key: config[key] for key in spec.group_keys if key in config})
    composed, unresolved = _composed(spec.sweep_file, spec.sweep_text, (*spec.overrides, *groups), spec.project_root,
                                     spec.space_keys)
    cfg = copy.deepcopy(composed)
    values = {key: spec.decoded.get(key, {}).get(config[key], config[key])
              for key in spec.space_keys if key not in spec.group_keys and key in config}  # conditional keys: some
    for key, value in {**values, "train.seed": config["seed"]}.items():
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}={value!r} does not fit the config: {str(err).splitlines()[0]}") from None
    if unresolved:
        try:
            OmegaConf.resolve(cfg)
        except OmegaConfBaseException as err:
            raise ConfigError(f"the trial's values {overrides_for(values)} do not fit the config's interpolations: "
                              f"{str(err).splitlines()[0]}") from None
    return cfg


def trial_overrides(spec: TrialSpec, config: dict[str, Any]) -> list[str]:
    """The same trial as command-line overrides (for people: `sweeplab train ...`)."""
    params = {key: config[key] for key in spec.space_keys if key in config}
    return [*spec.overrides, *overrides_for(params), f"train.seed={config['seed']}"]


class _Checkpoints:
    """When a trial saves its state: at the last epoch (the tracker logs its files), at every epoch a
    scheduler may stop it (so a stopped trial's files match its last metrics), and otherwise at most
    every ``interval`` seconds, which bounds what a retry repeats."""

    def __init__(self, spec: TrialSpec, epochs: int) -> None:
        self.epochs, self.due_epochs, self.interval = epochs, spec.checkpoint_epochs, spec.checkpoint_interval_s
        self.last = time.monotonic()

    def due(self, epoch: int) -> bool:
        if epoch >= self.epochs or epoch in self.due_epochs or time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            return True
        return False


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    import ray
    import torch
    from ray import tune

    from sweeplab.checks import validate
    from sweeplab.compose import to_yaml
    from sweeplab.errors import UserError
    from sweeplab.run_files import write_run_files
    from sweeplab.train import granted_device, run_dataset, train

    try:
        cfg = compose_trial(spec, config)
        validate(cfg)
    except UserError as err:  # e.g. a sampled filter size that cannot fit: the sweep goes on
        tune.report({"invalid": 1, "invalid_reason": str(err), "epoch": 0})
        return
    torch.set_num_threads(max(1, int(cfg.sweep.resources.cpu)))  # one thread per granted CPU

    resume, warning = None, ""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry or a resumed sweep: continue exactly where it stopped
        resume, warning = readable_state(checkpoint)
    config_yaml = to_yaml(cfg)  # train.device as given, as in a pack member's config and `sweeplab train`'s
    if spec.pack_manager is None:  # a pack member's GPU is its pack's (sweeplab.sweep.packs)
        cfg.train.device = granted_device(cfg.train.device, ray.get_gpu_ids())
    summary: list[str] = []
    dataset: list[dict[str, Any]] = []
    placement = {"gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "node_ip": ray.util.get_node_ip_address()}
    if warning:  # the first result carries it to the driver's live view (workers do not log to the driver)
        placement["warning"] = warning
    crash_after = int(os.environ.get("SWEEPLAB_FAULT_AFTER_EPOCH", "0"))
    checkpoints = _Checkpoints(spec, int(cfg.train.epochs))
    system = SystemSampler()

    def reporter(metrics: dict, state) -> None:
        result = {**placement, **metrics, **system.sample()}  # a pack's metrics name the pack's placement
        placement.pop("warning", None)
        if not checkpoints.due(int(metrics["epoch"])):
            tune.report(result)
        else:
            snapshot = state()
            if not summary:
                summary.append(_summary(cfg, snapshot))
                dataset.append(run_dataset(cfg))
            with tempfile.TemporaryDirectory() as folder:
                torch.save(snapshot, Path(folder) / STATE_FILE)
                write_run_files(Path(folder), config_yaml, summary[0], snapshot, dataset[0])
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        if crash_after and metrics["epoch"] == crash_after:
            _inject_fault_once(cfg.output_dir, tune.get_context().get_trial_id())

    fit: Callable[..., object] = train
    if spec.pack_manager is not None:  # sweep.fuse: a pack trains this trial, which reports each epoch
        from sweeplab.sweep.packs import train_in_pack

        fit = functools.partial(train_in_pack, spec.pack_manager)
    try:
        fit(cfg, reporter=reporter, resume=resume)
    except UserError as err:  # diverged, unreadable data: retrying would fail the same way
        tune.report({"invalid": 1, "invalid_reason": str(err), "epoch": 0})


def _load_state(checkpoint: tune.Checkpoint) -> dict[str, Any]:
    import torch

    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, weights_only=True)


def _earlier_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoints Ray still keeps (sweep checkpoint_config.num_to_keep), newest first."""
    from pyarrow.fs import FileSelector, FileType
    from ray import tune

    filesystem = checkpoint.filesystem
    if filesystem is None:
        return []
    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    found = filesystem.get_file_info(FileSelector(parent))
    names = sorted((f.base_name for f in found if f.type == FileType.Directory
                    and f.base_name.startswith("checkpoint_") and f.base_name < name), reverse=True)
    return [tune.Checkpoint(f"{parent}/{n}", filesystem=filesystem) for n in names]


def readable_state(checkpoint: tune.Checkpoint) -> tuple[dict[str, Any] | None, str]:
    """The trial's newest state that loads, and a one-line warning when that is not the registered one:
    a truncated or missing state.pt falls back to an earlier checkpoint, else to a fresh start (None)."""
    try:
        return _load_state(checkpoint), ""
    except Exception as err:  # truncated, missing, not a torch file: any of them means unreadable
        reason = str(err).splitlines()[0].split(". ")[0][:160]  # torch's first sentence says it
        problem = f"checkpoint {checkpoint.path}/{STATE_FILE} is unreadable ({reason})"
    for earlier in _earlier_checkpoints(checkpoint):
        try:
            state = _load_state(earlier)
        except Exception:
            continue
        return state, f"{problem}; continuing from the earlier {earlier.path} (epoch {state.get('epoch', '?')})"
    return None, f"{problem}; restarting the trial from epoch 1"


def _inject_fault_once(output_dir: str, trial_id: str) -> None:
    """Fault injection for the retry tests (SWEEPLAB_FAULT_AFTER_EPOCH=N): every trial crashes
    once, right after epoch N was reported, then is retried by Ray from its last checkpoint."""
    marker = Path(output_dir) / "faults" / trial_id
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected fault after epoch (SWEEPLAB_FAULT_AFTER_EPOCH) in trial {trial_id}")


def _summary(cfg, snapshot: dict) -> str:
    import torch

    from sweeplab.checks import input_shape
    from sweeplab.data import DATASETS
    from sweeplab.models import build_model
    from sweeplab.models.summary import summarize

    shape = input_shape(cfg)
    with torch.random.fork_rng(devices=[]):  # initialising a model draws from torch's RNG: dropout needs it untouched
        model = build_model(cfg.model, shape, DATASETS.get(cfg.data.name).num_classes)
    model.load_state_dict(snapshot["model"])
    return summarize(model, shape)
