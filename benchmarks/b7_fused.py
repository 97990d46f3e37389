"""B7 fused trials: 16 LeNet trials differing in learning rate and seed, trained as one fused pack
(``sweeplab.fused``) vs one after another through ``sweeplab.train.train``, in one process.

``packed`` is what a sweep gets (``train_pack``: fused on a GPU, one by one on a CPU where fusing
does not pay); ``fused`` forces the pack on any device, to show why it is off on CPUs.
Targets: packed >= 8x the one-by-one samples/s on a GPU, >= 0.95x on a CPU.
"""
from __future__ import annotations

import platform
import time

import torch
from harness import Check, Result

from sweeplab.compose import compose
from sweeplab.config.schema import DataConfig
from sweeplab.data.datasets import load_dataset
from sweeplab.fused import train_fused, train_pack
from sweeplab.fusion import should_fuse
from sweeplab.structured import typed
from sweeplab.train import resolve_device, train

TRIALS = 16
ROUNDS = 3
GPU_TARGET, CPU_TARGET = 8.0, 0.95
SIZES = {  # each trial's overrides
    "full": ["train.epochs=2"],
    "smoke": ["data.subset=320", "data.val_fraction=0.05", "train.epochs=1"],
}


def _overrides(device: str, size: str, cuda_graphs: bool | None = None) -> list[str]:
    return ["tracking=none", "model=lenet", "data=mnist5k", "train.batch_size=64", "train.lr_schedule=none",
            f"train.device={device}", *(["train.num_threads=1"] if device == "cpu" else []),
            *([f"train.cuda_graphs={cuda_graphs}"] if cuda_graphs is not None else []), *SIZES[size]]


def _trials(overrides: list[str], k: int = TRIALS) -> list:
    # 0.005 .. 0.05, log-spaced: LeNet trains stably there; at 0.1 its curve is chaotic, and float
    # reassociation alone (fused vs one by one) sends it elsewhere after an epoch or two
    lrs = [0.005 * 10 ** (i / max(k - 1, 1)) for i in range(k)]
    return [compose([*overrides, f"optimizer.lr={lr:.5f}", f"train.seed={i}"]) for i, lr in enumerate(lrs)]


def _timed(run) -> tuple[float, list]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, results


def run_b7(size: str, cuda_graphs: bool | None = None) -> dict:
    """Samples/s of 16 LeNet trials packed (as a sweep runs them), forced fused, and one by one; ``cuda_graphs``
    sets ``train.cuda_graphs`` on every side (None: its default, steps replayed from CUDA graphs on a GPU)."""
    device = resolve_device("auto")
    overrides = _overrides(device.type, size, cuda_graphs)
    cfgs = _trials(overrides)
    bundle = load_dataset(typed(cfgs[0].data, DataConfig))
    warm = _trials([*overrides, "train.epochs=1"], k=2)  # first-call costs (kernels, allocator) off the clock
    train(warm[0], bundle=bundle)
    train_fused(warm, bundle=bundle)

    # one by one and packed alternate (ABBA...), best of ROUNDS each: the machine may be shared
    best = {"one_by_one": float("inf"), "packed": float("inf")}
    every: dict[str, list[float]] = {"one_by_one": [], "packed": []}  # each round's seconds: the machine's spread
    runs = {"one_by_one": lambda: [train(cfg, bundle=bundle) for cfg in cfgs],
            "packed": lambda: train_pack(cfgs, bundle=bundle)}
    for r in range(ROUNDS):
        for name in (("one_by_one", "packed") if r % 2 == 0 else ("packed", "one_by_one")):
            seconds, results = _timed(runs[name])
            best[name] = min(best[name], seconds)
            every[name].append(seconds)
            if name == "one_by_one":
                alone = results
    one_by_one_s, packed_s = best["one_by_one"], best["packed"]
    fused_s, fused = _timed(lambda: train_fused(cfgs, bundle=bundle))

    samples = sum(len(r.history) for r in alone) * len(bundle.train)
    target = GPU_TARGET if device.type == "cuda" else CPU_TARGET
    drift = max(abs(f.metrics["val/loss"] - a.metrics["val/loss"]) / abs(a.metrics["val/loss"])
                for f, a in zip(fused, alone, strict=True))
    return {
        "bench": "B7 fused trials",
        "device": _device_name(device),
        "torch": torch.__version__,
        "cuda_graphs": cfgs[0].train.cuda_graphs and device.type == "cuda",
        "trials": len(cfgs),
        "epochs": cfgs[0].train.epochs,
        "train_images": len(bundle.train),
        "batch_size": cfgs[0].train.batch_size,
        "packed_fuses": should_fuse(device, len(cfgs)),
        "one_by_one_seconds": one_by_one_s,
        "packed_seconds": packed_s,
        "fused_seconds": fused_s,
        "rounds_seconds": every,  # where packing does not fuse, both sides run the same code: their spread is noise
        "one_by_one_samples_per_second": samples / one_by_one_s,
        "packed_samples_per_second": samples / packed_s,
        "fused_samples_per_second": samples / fused_s,
        "packed_speedup": one_by_one_s / packed_s,
        "fused_speedup": one_by_one_s / fused_s,
        "target_speedup": target,
        "met": one_by_one_s / packed_s >= target,
        "max_val_loss_rel_diff": drift,  # fused vs alone, last epoch: float reassociation only
        "smoke": size == "smoke",
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s))"


def run_fused_trials(size: str, **_: object) -> Result:
    row = run_b7(size)
    # on CUDA both sides again with every step launched kernel by kernel (train.cuda_graphs=false): a small
    # network's step is bound by those launches, which the default's graph replays in one (docs/performance.md,
    # "B6 and B7 on a GPU")
    eager = run_b7(size, cuda_graphs=False) if torch.cuda.is_available() else None
    target = f">= {row['target_speedup']:g}"
    return Result("B7", "fused trials", size, checks=[
        Check(f"{row['trials']} LeNet trials packed / one by one, samples/s ({row['device']})",
              row["packed_speedup"], target),
        *([Check("the same with train.cuda_graphs=false on both sides", eager["packed_speedup"], ""),
           Check("packed / one by one with train.cuda_graphs=false (what graphs and fusing give together)",
                 eager["one_by_one_seconds"] / row["packed_seconds"], "")] if eager else []),
        Check("forced fused / one by one (fusing forced on, for comparison)", row["fused_speedup"], ""),
        # no target: grouped (fused) and plain convolutions sum in different orders, and over 126 steps at
        # lr up to 0.05 LeNet's early training amplifies that to percents (tests/test_fused.py checks the
        # curves agree to 1e-4 where it does not: a few members, small data)
        Check("fused vs alone after the last epoch, largest relative val/loss difference",
              row["max_val_loss_rel_diff"], ""),
    ], figures={**row, **({"eager_run": eager} if eager else {})})
