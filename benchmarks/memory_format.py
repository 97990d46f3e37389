"""A convnet's training and evaluation in either layout on the CPU: what ``train.memory_format=auto`` is chosen by.

    python benchmarks/memory_format.py [--models lenet alexnet vgg googlenet] [--images 1024] [--repeats 2]

Each model of conf/model/ as it stands, on random images of MNIST's shape (1x28x28) and CIFAR-10's (3x32x32), plain
SGD with momentum at batch 64 and one torch thread: one training pass and one evaluation pass per layout, the layouts
alternating, the fastest of ``--repeats`` kept. Prints a Markdown row per model and shape, and the first pass's last
loss in each layout (equal but for the order of sums).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
SHAPES = ((1, 28, 28), (3, 32, 32))


def passes(model_name: str, shape: tuple[int, int, int], layout: torch.memory_format, images: torch.Tensor,
           labels: torch.Tensor) -> tuple[float, float, float]:
    """(training pass seconds, evaluation pass seconds, the training pass's last loss) of a fresh model."""
    from bare_loop import Tensors, build

    torch.manual_seed(0)
    model = build(model_name, Tensors(images, labels, images, labels, shape, 10)).to(memory_format=layout)
    x = images.contiguous(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    started = time.perf_counter()
    model.train()
    for i in range(0, len(x), 64):
        loss = F.cross_entropy(model(x[i : i + 64]), labels[i : i + 64])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    trained = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), 512):
            model(x[i : i + 512])
    return trained - started, time.perf_counter() - trained, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet", "alexnet", "vgg", "googlenet"])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | images | training pass, contiguous / channels_last | evaluation pass, the same | last loss |")
    print("|---|---|---:|---:|---|")
    for name in args.models:
        for shape in SHAPES:
            images, labels = torch.randn(args.images, *shape), torch.randint(0, 10, (args.images,))
            best: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                for layout, fmt in LAYOUTS.items():
                    run = passes(name, shape, fmt, images, labels)
                    kept = best.setdefault(layout, list(run))
                    kept[0], kept[1] = min(kept[0], run[0]), min(kept[1], run[1])
            nchw, nhwc = best["contiguous"], best["channels_last"]
            size = "x".join(map(str, shape))
            print(f"| {name} | {size} | {nchw[0]:.3f} / {nhwc[0]:.3f} s = {nchw[0] / nhwc[0]:.2f}x "
                  f"| {nchw[1]:.3f} / {nhwc[1]:.3f} s = {nchw[1] / nhwc[1]:.2f}x | {nchw[2]:.5f}, {nhwc[2]:.5f} |",
                  flush=True)


if __name__ == "__main__":
    main()
