"""B6 GPU: epochs over 60,000 28x28 images resident on the GPU (LeNet, VGG): sweeplab's own training loop, eager
and replayed from CUDA graphs, and a hand-written loop with fp32, bf16 autocast and channels_last; K trials packed
on one GPU through fractional sweep.resources.gpu (or, without Ray, as K training processes).

Runs when CUDA is present; otherwise it reports why it skipped. ``--device cpu --tiny`` runs the same
code on the CPU at a tiny size (the tests do), packing K trials on one CPU through fractional
sweep.resources.cpu instead."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
from harness import Check, Result, study_times, sweeplab_sweep, write_sweep
from torch.nn import functional as F

SIZES = {  # resident images, packed K, epochs and training images per packed trial (mnist5k: 4,000)
    "gpu": {"images": 60_000, "ks": [1, 4, 8], "epochs": 5, "subset": None, "batch": 64},
    "tiny": {"images": 64, "ks": [1, 2], "epochs": 1, "subset": 300, "batch": 64},  # one batch: CPU bf16 VGG is slow
}
MODELS = ("lenet", "vgg")
OPTIONS = {  # name -> (bf16 autocast, channels_last)
    "fp32": (False, False),
    "bf16": (True, False),
    "channels_last": (False, True),
    "bf16+channels_last": (True, True),
}


def resident_epoch(model_name: str, device: torch.device, images: int, batch: int, bf16: bool,
                   channels_last: bool) -> float:
    """Seconds for one training epoch over synthetic images already on ``device`` (after a warm-up)."""
    from sweeplab.compose import compose
    from sweeplab.models import build_model

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(images, 1, 28, 28, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (images,), device=device)
    model = build_model(compose([f"model={model_name}"]).model, (1, 28, 28), 10).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def steps(n: int) -> None:
        for i in range(0, n, batch):
            with autocast:
                loss = F.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    steps(min(images, 10 * batch))  # warm-up: kernels chosen, caches filled
    sync()
    started = time.perf_counter()
    steps(images)
    sync()
    return time.perf_counter() - started


def sweeplab_epoch(model_name: str, device: torch.device, images: int, batch: int, cuda_graphs: bool) -> float:
    """Seconds of training in the second of two epochs of ``sweeplab.train.train`` (what every trial runs) over
    synthetic images resident on ``device``; the first epoch warms up, the validation pass is not counted."""
    from sweeplab.compose import compose
    from sweeplab.data.datasets import DatasetBundle, Split
    from sweeplab.train import train

    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator),
                     torch.randint(0, 10, (n,), generator=generator))

    bundle = DatasetBundle("synthetic", split(images), split(max(batch, images // 100)), None, 10,
                           [str(c) for c in range(10)], 1 / 255, [0.5], [0.25])
    cfg = compose([f"model={model_name}", "tracking=none", f"train.device={device}", "train.epochs=2",
                   f"train.batch_size={batch}", "train.lr_schedule=none", f"train.cuda_graphs={cuda_graphs}"])
    last = train(cfg, bundle=bundle).history[-1]
    return images / last["samples_per_second"]


def packed(k: int, device: str, p: dict) -> dict:
    """K trials at once through `sweeplab sweep`, each granted 1/K of the GPU (or of one CPU)."""
    share = f"{1 / k:.6g}"
    cpu = f"{min(1.0, (os.cpu_count() or 1) / k):.6g}"  # K trials must fit the machine's CPUs at once
    resources = f"{{cpu: {cpu}, gpu: {share}}}" if device == "cuda" else f"{{cpu: {share}, gpu: 0}}"
    data = f"data: {{subset: {p['subset']}}}\n" if p["subset"] else ""
    body = f"""
# sweeplab sweep <this file>   (benchmark B6: {k} LeNet trials packed on one {device})
defaults:
  - override /model: lenet
  - override /data: mnist5k
  - _self_
{data}train: {{epochs: {p['epochs']}, num_threads: 1, lr_schedule: none, device: {device}}}
sweep:
  name: bench_pack{k}
  sampler: random
  num_trials: {k}
  max_concurrent: {k}
  scheduler: {{kind: none}}
  resources: {resources}
  space:
    optimizer.lr: {{type: float, low: 0.005, high: 0.05, log: true}}
"""
    from sweeplab.config.schema import DataConfig
    from sweeplab.data import load_dataset

    train_images = len(load_dataset(DataConfig(name="mnist5k", subset=p["subset"])).train)
    with tempfile.TemporaryDirectory(prefix=f"bench-b6-k{k}-") as tmp:
        sweep = write_sweep(Path(tmp), f"bench_pack{k}", body)
        out = Path(tmp) / "outputs"
        overrides = [f"output_dir={out}", "tracking=none", *(["cluster.num_cpus=1"] if device == "cpu" else [])]
        timed = sweeplab_sweep(sweep, overrides, cwd=Path(tmp))
        times = study_times(out, timed.started_at)
    completed = sum(t["status"] == "completed" for t in times.trials)
    if completed != k:
        raise RuntimeError(f"{completed} of {k} packed trials completed")
    samples = k * p["epochs"] * train_images
    # from the first trial's start on its worker, as B2 counts: K workers starting side by side are not throughput
    return {"k": k, "trial_phase_s": times.training, "wall_s": timed.wall, "samples": samples,
            "aggregate_samples_per_s": samples / times.training}


def _member(device: str, p: dict, seed: int, barrier, results) -> None:
    """One of ``packed_processes``' K trials: load, wait for the others, train as a trial would, say when."""
    torch.set_num_threads(1)
    from sweeplab.compose import compose
    from sweeplab.config.schema import DataConfig
    from sweeplab.data import load_dataset
    from sweeplab.train import train

    subset = [f"data.subset={p['subset']}"] if p["subset"] else []
    cfg = compose(["model=lenet", "data=mnist5k", *subset, "tracking=none", f"train.epochs={p['epochs']}",
                   "train.lr_schedule=none", "train.num_threads=1", f"train.device={device}", f"train.seed={seed}"])
    bundle = load_dataset(DataConfig(name="mnist5k", subset=p["subset"]))
    torch.zeros(1, device=device)  # the device's context made before the clock starts, as for one process alone
    barrier.wait()
    started = time.time()
    result = train(cfg, bundle=bundle)
    results.put((started, time.time(), len(result.history) * len(bundle.train)))


def packed_processes(k: int, device: str, p: dict) -> dict:
    """K trials at once as K training processes on one device, without Ray: what fractional resources.gpu gives
    the GPU to share, before Ray's own costs (B2 and B8 measure those). The lent GPU machine has no Ray."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    members = [ctx.Process(target=_member, args=(device, p, seed, barrier, results)) for seed in range(k)]
    for member in members:
        member.start()
    try:
        ran = [results.get(timeout=900) for _ in members]
    finally:
        for member in members:
            member.join(timeout=60)
    if any(member.exitcode != 0 for member in members):
        raise RuntimeError(f"packed processes exited {[m.exitcode for m in members]}")
    phase = max(end for _, end, _ in ran) - min(start for start, _, _ in ran)
    samples = sum(n for _, _, n in ran)
    return {"k": k, "trial_phase_s": phase, "samples": samples, "aggregate_samples_per_s": samples / phase}


PACKING = {"sweep": packed, "processes": packed_processes}  # --packing; "none" runs neither


def run(size: str, device: str = "auto", tiny: bool = False, packing: str = "sweep", **_) -> Result:
    """``packing``: "sweep" packs K trials through `sweeplab sweep` (Ray), "processes" as K training processes
    (no Ray: the lent GPU machine has none), "none" times the resident epochs alone."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "none"
    if device == "none":
        return Result("B6", "GPU throughput and packing", size, status="skipped",
                      reason="no CUDA device visible (torch.cuda.is_available() is False); "
                             "`run.py B6 --device cpu --tiny` runs the same code on the CPU")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    tiny = tiny or size == "smoke" and device == "cpu"
    p = SIZES["tiny" if tiny else "gpu"]
    dev = torch.device(device)
    epochs = {m: {name: resident_epoch(m, dev, p["images"], p["batch"], *opts) for name, opts in OPTIONS.items()}
              for m in MODELS}
    graphs = device == "cuda"  # a CUDA graph needs CUDA: on the CPU train() runs its eager step either way
    modes = {"eager": False, **({"cuda_graphs": True} if graphs else {})}
    ours = {m: {mode: sweeplab_epoch(m, dev, p["images"], p["batch"], on) for mode, on in modes.items()}
            for m in MODELS}
    packs = {k: PACKING[packing](k, device, p) for k in p["ks"]} if packing != "none" else {}
    kmax = max(p["ks"])
    speedup = packs[kmax]["aggregate_samples_per_s"] / packs[1]["aggregate_samples_per_s"] if packs else None
    step = "cuda_graphs" if graphs else "eager"
    real = device == "cuda" and not tiny  # targets hold for the GPU at full size only
    checks = [
        Check(f"LeNet epoch over {p['images']:,} resident images, sweeplab train() ({step})", ours["lenet"][step],
              "<= 0.5" if real else "", "s"),
        Check(f"{kmax} packed LeNet trials / 1, aggregate samples/s"
              + (" (processes, no Ray)" if packing == "processes" else ""), speedup,
              ">= 4" if real and packing == "sweep" else ""),
        *(Check(f"{m} epoch, sweeplab train(), {name}", s, "", "s") for m in MODELS for name, s in ours[m].items()),
        *(Check(f"{m} epoch, hand-written loop, {name}", s, "", "s") for m in MODELS for name, s in epochs[m].items()),
    ]
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU (tiny run, {torch.get_num_threads()} threads)"
    return Result("B6", "GPU throughput and packing", size, checks=checks,
                  reason="; ".join([*([] if real else ["tiny CPU run of the GPU code path: no GPU figure"]),
                                    *{"none": ["packing not run (--packing none)"],
                                      "processes": ["packed as processes without Ray: no target"]}.get(packing, [])]),
                  figures={"device": name, "images": p["images"], "batch_size": p["batch"], "epoch_s": epochs,
                           "sweeplab_epoch_s": ours, "packing_how": packing,
                           "packing": packs, "packing_data": "mnist5k (the 60,000-image MNIST needs files; the "
                                                             "packed trials run sweeplab's real data path)"})
