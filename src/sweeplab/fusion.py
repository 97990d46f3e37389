"""Which trials may train fused, as one pack (``sweeplab.fused``): the keys members may differ in, and
the key that groups trials. Torch-free, so a sweep's driver plans packs without importing torch."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from sweeplab.compose import flatten
from sweeplab.config.schema import TRIAL_GROUPS

if TYPE_CHECKING:
    import torch

# The only config keys in which the members of one pack may differ; every other key of
# these groups (model, data, train, optimizer) must be equal.
MEMBER_KEYS = ("optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "train.seed")
TRAINING_GROUPS = tuple(f"{group}." for group in TRIAL_GROUPS)


def should_fuse(device: torch.device | str, k: int, force: bool = False) -> bool:
    """Whether fusing k trials pays: on a GPU it does; on a CPU small convnets are already
    compute-bound (docs/performance.md, "B7 on a CPU"), so there it is off unless forced."""
    if force:
        return True
    return str(device).split(":")[0] == "cuda" and k > 1  # "cuda", "cuda:1" or a torch.device printing so


def fusing(cfg: DictConfig) -> bool:
    """Whether this sweep's trials train in packs: sweep.fuse > 1 on GPUs (or forced on CPUs)."""
    sc = cfg.sweep
    return sc.fuse > 1 and should_fuse("cuda" if sc.resources.gpu > 0 else "cpu", sc.fuse, sc.fuse_on_cpu)


def shared_settings(cfg: DictConfig) -> dict[str, Any]:
    """The training settings every member of a pack must share: all but MEMBER_KEYS."""
    return {k: v for k, v in flatten(cfg).items() if k.startswith(TRAINING_GROUPS) and k not in MEMBER_KEYS}


def fusion_key(cfg: DictConfig) -> tuple:
    """Hashable: trials with equal keys may share a pack (if ``fusable`` accepts their model)."""
    return tuple(sorted((k, repr(v)) for k, v in shared_settings(cfg).items()))


def group_for_fusion(cfgs: Sequence[DictConfig], size: int) -> list[list[int]]:
    """Indices of ``cfgs`` in packs of at most ``size`` trials with equal ``fusion_key``, in first-seen order."""
    groups: dict[tuple, list[list[int]]] = {}
    for i, cfg in enumerate(cfgs):
        packs = groups.setdefault(fusion_key(cfg), [[]])
        if len(packs[-1]) == size:
            packs.append([])
        packs[-1].append(i)
    return [pack for packs in groups.values() for pack in packs]
