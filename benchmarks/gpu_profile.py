"""Where a small network's training step spends its time on a GPU: torch.profiler over the same LeNet step
(batch 64, images resident on the device) run eagerly and replayed from a CUDA graph (``sweeplab.graphs``).

Prints one JSON line per mode: wall time per step, the GPU's kernel time per step (the sum of the kernels'
durations), the kernels per step, and the share of the wall the GPU was busy; then the same for B7's pack of 16
fused LeNet trials (``train_pack``, one epoch of mnist5k, validation included). The profiler's tables of the ops
go to ``--table``. On a CPU it profiles the eager step alone (a try of the plumbing).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sweeplab.compose import compose
from sweeplab.graphs import StepGraph
from sweeplab.models import build_model


def _kernels(prof: profile) -> tuple[list, float]:
    """The GPU kernels the profiler saw, and their seconds summed (the profiler counts microseconds)."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return kernels, sum(e.device_time for e in kernels) / 1e6


def profiled(device: torch.device, graphed: bool, steps: int, batch: int) -> tuple[dict, str]:
    torch.manual_seed(0)
    x = torch.randn(steps * batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (steps * batch,), device=device)
    model = build_model(compose(["model=lenet"]).model, (1, 28, 28), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=False)  # a captured step keeps its gradients' memory
        loss.backward()
        optimizer.step()

    run = StepGraph(step) if graphed else step
    for i in range(10):  # warm-up: cuDNN's choices, the momentum buffers and (graphed) the capture
        run(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for i in range(steps):
            run(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
        sync()
        wall = time.perf_counter() - started
    kernels, kernel_s = _kernels(prof)
    row = {"mode": "cuda_graph" if graphed else "eager", "device": str(device), "steps": steps, "batch": batch,
           "wall_ms_per_step": 1e3 * wall / steps, "kernel_ms_per_step": 1e3 * kernel_s / steps,
           "kernels_per_step": len(kernels) / steps, "gpu_busy": kernel_s / wall if wall else None,
           "torch": torch.__version__}
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return row, prof.key_averages().table(sort_by=sort, row_limit=25)


def profiled_pack(graphed: bool, trials: int) -> tuple[dict, str]:
    """One epoch of ``trials`` fused LeNet trials as a sweep's pack trains them (after one to warm up)."""
    from sweeplab.config.schema import DataConfig
    from sweeplab.data.datasets import load_dataset
    from sweeplab.fused import train_pack
    from sweeplab.structured import typed

    cfgs = [compose(["tracking=none", "model=lenet", "data=mnist5k", "train.batch_size=64", "train.epochs=1",
                     "train.lr_schedule=none", "train.device=cuda", f"train.cuda_graphs={graphed}",
                     f"optimizer.lr={0.005 * 10 ** (i / (trials - 1)):.5f}", f"train.seed={i}"])
            for i in range(trials)]
    bundle = load_dataset(typed(cfgs[0].data, DataConfig))
    train_pack(cfgs, bundle=bundle)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        train_pack(cfgs, bundle=bundle)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    kernels, kernel_s = _kernels(prof)
    steps = -(-len(bundle.train) // 64)
    row = {"mode": f"fused{trials}_{'cuda_graph' if graphed else 'eager'}", "trials": trials, "train_steps": steps,
           "wall_s": wall, "kernel_s": kernel_s, "kernels": len(kernels), "gpu_busy": kernel_s / wall,
           "wall_ms_per_train_step": 1e3 * wall / steps}
    return row, prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pack", type=int, default=16, help="fused trials in the profiled pack (0: none)")
    parser.add_argument("--table", type=Path, help="where the op tables go")
    args = parser.parse_args()
    device = torch.device(args.device)
    tables = []
    for graphed in ([False, True] if device.type == "cuda" else [False]):
        row, table = profiled(device, graphed, args.steps, args.batch)
        print(json.dumps(row), flush=True)
        tables.append(f"## {row['mode']}\n{table}")
    for graphed in ([False, True] if device.type == "cuda" and args.pack else []):
        row, table = profiled_pack(graphed, args.pack)
        print(json.dumps(row), flush=True)
        tables.append(f"## {row['mode']}\n{table}")
    if args.table:
        args.table.write_text("\n\n".join(tables))


if __name__ == "__main__":
    main()
