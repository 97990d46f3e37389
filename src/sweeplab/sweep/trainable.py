"""The Ray Tune trainable: compose the trial's config, check it, call ``train``."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweeplab.sweep.space import overrides_for


@dataclass(frozen=True)
class TrialSpec:
    """What every worker needs to compose its trial's config (picklable, small)."""

    sweep_file: str
    sweep_text: str  # the file's content: workers on other machines may not have the file
    overrides: tuple[str, ...]  # the command line's overrides plus absolute paths
    space_keys: tuple[str, ...]
    project_root: str


def trial_overrides(spec: TrialSpec, config: dict[str, Any]) -> list[str]:
    params = {key: config[key] for key in spec.space_keys}
    return [*spec.overrides, *overrides_for(params), f"train.seed={config['seed']}"]


def compose_trial(spec: TrialSpec, config: dict[str, Any]):
    from sweeplab.config.compose import compose

    os.environ.setdefault("SWEEPLAB_HOME", spec.project_root)
    return compose(trial_overrides(spec, config), Path(spec.sweep_file), spec.sweep_text)


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    import ray
    import torch
    from ray import tune

    from sweeplab.config.compose import to_yaml
    from sweeplab.errors import UserError
    from sweeplab.train import train, validate

    try:
        cfg = compose_trial(spec, config)
        validate(cfg)
    except UserError as err:  # e.g. a sampled filter size that cannot fit: the sweep goes on
        tune.report({"invalid": 1, "invalid_reason": str(err), "epoch": 0})
        return
    torch.set_num_threads(max(1, int(cfg.sweep.resources.cpu)))  # one thread per granted CPU

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry or a resumed sweep: continue exactly where it stopped
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", weights_only=False)
    config_yaml = to_yaml(cfg)
    summary: list[str] = []
    placement = {"gpu_ids": ",".join(map(str, ray.get_gpu_ids())), "node_ip": ray.util.get_node_ip_address()}
    crash_after = int(os.environ.get("SWEEPLAB_FAULT_AFTER_EPOCH", "0"))

    def reporter(metrics: dict, state) -> None:
        snapshot = state()
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder)
            torch.save(snapshot, folder / "state.pt")
            (folder / "config.yaml").write_text(config_yaml)
            if not summary:
                summary.append(_summary(cfg, snapshot))
            (folder / "model_summary.txt").write_text(summary[0])
            tune.report({**metrics, **placement}, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        if crash_after and metrics["epoch"] == crash_after:
            _inject_fault_once(cfg.output_dir, tune.get_context().get_trial_id())

    try:
        train(cfg, reporter=reporter, resume=resume)
    except UserError as err:  # diverged, unreadable data: retrying would fail the same way
        tune.report({"invalid": 1, "invalid_reason": str(err), "epoch": 0})


def _inject_fault_once(output_dir: str, trial_id: str) -> None:
    """Fault injection for the retry tests (SWEEPLAB_FAULT_AFTER_EPOCH=N): every trial crashes
    once, right after epoch N was reported and checkpointed, then is retried by Ray."""
    marker = Path(output_dir) / "faults" / trial_id
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected fault after epoch (SWEEPLAB_FAULT_AFTER_EPOCH) in trial {trial_id}")


def _summary(cfg, snapshot: dict) -> str:
    import torch

    from sweeplab.data import DATASETS
    from sweeplab.models import build_model
    from sweeplab.models.summary import summarize

    entry = DATASETS.get(cfg.data.name)
    shape = entry.input_shape if not cfg.data.resize else (entry.input_shape[0], cfg.data.resize, cfg.data.resize)
    with torch.random.fork_rng(devices=[]):  # initialising a model draws from torch's RNG: dropout needs it untouched
        model = build_model(cfg.model, shape, entry.num_classes)
    model.load_state_dict(snapshot["model"])
    return summarize(model, shape) + "\n"
