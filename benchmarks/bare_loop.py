"""The yardstick: a minimal hand-written PyTorch loop, as one would write it without any sweep tool.

Same model (sweeplab.models.build_model), same tensors (sweeplab.data.load_dataset), plain SGD,
data normalised once and kept in memory, a val pass each epoch.

    python benchmarks/bare_loop.py --model lenet --data mnist5k --epochs 5 --lrs 0.01 0.03 [--channels-last]

runs one training per learning rate in this process and prints one JSON line with the time its
first epoch started (seconds since the epoch) and every epoch's seconds. ``--channels-last`` lays the model
and the images out as sweeplab's trainer does on the CPU (``train.memory_format``): the loop a user who knew
that would write, to measure the trainer and the sweep against at equal training speed.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class Tensors:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    input_shape: tuple[int, int, int]
    num_classes: int


def load_tensors(data: str = "mnist5k", subset: int | None = None, resize: int | None = None,
                 device: str = "cpu") -> Tensors:
    """The split every sweeplab trial trains on, normalised once."""
    from sweeplab.config.schema import DataConfig
    from sweeplab.data import load_dataset

    bundle = load_dataset(DataConfig(name=data, subset=subset, resize=resize))
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)

    def norm(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() * bundle.scale - mean) / std).to(device)

    return Tensors(norm(bundle.train.images), bundle.train.labels.to(device), norm(bundle.val.images),
                   bundle.val.labels.to(device), bundle.input_shape, bundle.num_classes)


def build(model: str, tensors: Tensors) -> torch.nn.Module:
    """conf/model/<model>.yaml as it stands, without Hydra (a @hydra.main task may call this)."""
    from omegaconf import OmegaConf

    from sweeplab.compose import conf_dir
    from sweeplab.models import build_model

    cfg = OmegaConf.load(conf_dir() / "model" / f"{model}.yaml")
    cfg.pop("defaults", None)
    return build_model(cfg, tensors.input_shape, tensors.num_classes)


def train_bare(model: torch.nn.Module, t: Tensors, lr: float, epochs: int, batch_size: int = 64,
               momentum: float = 0.9, seed: int = 0, eval_batch_size: int = 512,
               channels_last: bool = False) -> list[dict[str, float]]:
    """One training; per epoch its seconds (train + val), its training pass's seconds, the pass's last batch loss
    and val accuracy."""
    torch.manual_seed(seed)
    device = t.x_train.device
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout)
    x_train, x_val = t.x_train.contiguous(memory_format=layout), t.x_val.contiguous(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    history = []
    n = len(t.y_train)
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, device=device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), t.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        trained = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(t.y_val), eval_batch_size):
                rows = slice(i, i + eval_batch_size)
                correct += int((model(x_val[rows]).argmax(1) == t.y_val[rows]).sum())
        history.append({"epoch_seconds": time.perf_counter() - started, "train_seconds": trained - started,
                        "train/loss": loss.item(), "val/acc": correct / len(t.y_val)})
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--data", default="mnist5k")
    parser.add_argument("--subset", type=int)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lrs", type=float, nargs="+", required=True)
    parser.add_argument("--channels-last", action="store_true", help="the model and images laid out NHWC")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tensors = load_tensors(args.data, args.subset)
    first_start = time.time()
    epochs = []
    for i, lr in enumerate(args.lrs):
        model = build(args.model, tensors)
        epochs += [h["epoch_seconds"] for h in train_bare(model, tensors, lr, args.epochs, args.batch_size, seed=i,
                                                           channels_last=args.channels_last)]
    print(json.dumps({"first_start": first_start, "epoch_seconds": epochs}), flush=True)


if __name__ == "__main__":
    main()
