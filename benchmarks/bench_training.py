"""Training throughput of every model of the zoo: samples/s and seconds per epoch.

    .venv/bin/python benchmarks/bench_training.py [--threads 1 2] [--device cpu|cuda] [--data mnist5k]

Prints a Markdown table (paste into docs/benchmarks.md) and writes JSON next to it with --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sweeplab.compose import compose
from sweeplab.models import MODELS
from sweeplab.train import train


def measure(model: str, data: str, device: str, threads: int, epochs: int, batch_size: int) -> dict:
    torch.set_num_threads(threads)
    cfg = compose([f"model={model}", f"data={data}", f"train.epochs={epochs}", f"train.device={device}",
                   f"train.batch_size={batch_size}", "tracking=none"])
    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    last = result.history[-1]  # the first epoch pays for warm-up
    return {"model": model, "data": data, "device": device, "threads": threads, "batch_size": batch_size,
            "samples_per_second": last["samples_per_second"], "epoch_seconds": last["epoch_seconds"],
            "val/acc": last["val/acc"], "params": result.num_params, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS.names())
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = [measure(m, args.data, args.device, t, args.epochs, args.batch_size)
            for m in args.models for t in args.threads]
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {args.data}, batch {args.batch_size}\n")
    print("| model | params | device | threads | samples/s | s/epoch | val/acc after 2 epochs |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['device']} | {r['threads']} | {r['samples_per_second']:,.0f} "
              f"| {r['epoch_seconds']:.2f} | {r['val/acc'] * 100:.1f}% |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
