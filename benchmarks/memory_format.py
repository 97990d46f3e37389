"""A convnet's training and evaluation in either layout on the CPU: what ``train.memory_format=auto`` is chosen by.

    python benchmarks/memory_format.py [--models lenet alexnet vgg googlenet] [--images 1024] [--repeats 2]

Each model of conf/model/ as it stands, on random images of MNIST's shape (1x28x28) and CIFAR-10's (3x32x32), one
epoch of the bare loop (bare_loop.train_bare: plain SGD with momentum at batch 64, shuffled) and one torch thread: its
training pass and its evaluation pass per layout, the layouts alternating, the fastest of ``--repeats`` kept. Prints
a Markdown row per model and shape, and the first pass's last loss in each layout (equal but for the order of sums).
"""
from __future__ import annotations

import argparse

import torch

LAYOUTS = {"contiguous": False, "channels_last": True}  # bare_loop.train_bare's channels_last
SHAPES = ((1, 28, 28), (3, 32, 32))


def passes(model_name: str, shape: tuple[int, int, int], channels_last: bool, images: torch.Tensor,
           labels: torch.Tensor) -> tuple[float, float, float]:
    """(training pass seconds, evaluation pass seconds, the training pass's last loss) of a fresh model, from one
    epoch of the bare loop over ``images``, evaluated on them too."""
    from bare_loop import Tensors, build, train_bare

    tensors = Tensors(images, labels, images, labels, shape, 10)
    torch.manual_seed(0)  # the same initial weights in either layout
    (epoch,) = train_bare(build(model_name, tensors), tensors, lr=0.01, epochs=1, channels_last=channels_last)
    return epoch["train_seconds"], epoch["epoch_seconds"] - epoch["train_seconds"], epoch["train/loss"]


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
                for layout, channels_last in LAYOUTS.items():
                    run = passes(name, shape, channels_last, images, labels)
                    kept = best.setdefault(layout, list(run))
                    kept[0], kept[1] = min(kept[0], run[0]), min(kept[1], run[1])
            nchw, nhwc = best["contiguous"], best["channels_last"]
            size = "x".join(map(str, shape))
            print(f"| {name} | {size} | {nchw[0]:.3f} / {nhwc[0]:.3f} s = {nchw[0] / nhwc[0]:.2f}x "
                  f"| {nchw[1]:.3f} / {nhwc[1]:.3f} s = {nchw[1] / nhwc[1]:.2f}x | {nchw[2]:.5f}, {nhwc[2]:.5f} |",
                  flush=True)


if __name__ == "__main__":
    main()
