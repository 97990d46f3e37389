"""B1: sweeplab.train.train vs the hand-written loop, one torch thread, epoch time (train + val); the loop as written
plainly (the issue's yardstick) and laid out channels_last as the trainer lays a convnet out on the CPU (the trainer's
own overhead at equal training speed)."""
from __future__ import annotations

import torch
from bare_loop import build, load_tensors, train_bare
from harness import Check, Result, median

SIZES = {  # rounds of the three runs (each first in turn), epochs per run, training images (None: all 4,000)
    "full": {"repeats": 3, "epochs": 3, "subset": None},
    "smoke": {"repeats": 2, "epochs": 2, "subset": 1000},
}


def run(size: str, **_) -> Result:
    from sweeplab.compose import compose
    from sweeplab.train import train

    p = SIZES[size]
    torch.set_num_threads(1)
    data = ["data=mnist5k", *([f"data.subset={p['subset']}"] if p["subset"] else [])]
    cfg = compose(["model=lenet", *data, f"train.epochs={p['epochs']}", "train.num_threads=1", "train.device=cpu",
                   "train.lr_schedule=none", "tracking=none"])
    tensors = load_tensors("mnist5k", p["subset"])
    lr, batch = float(cfg.optimizer.lr), int(cfg.train.batch_size)
    def bare(channels_last: bool) -> list[float]:
        history = train_bare(build("lenet", tensors), tensors, lr, p["epochs"], batch, channels_last=channels_last)
        return [h["epoch_seconds"] for h in history]

    arms = {"sweeplab": lambda: [h["epoch_seconds"] for h in train(cfg).history],  # each run's epoch seconds
            "bare": lambda: bare(False), "channels_last": lambda: bare(True)}
    for run_arm in arms.values():  # the first epoch of each pays for warm-up: one untimed run of each first
        run_arm()
    epochs: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(p["repeats"]):  # A B C, B C A, C A B: drift on a shared machine, and going first, hit all alike
        for name in names[r % len(names):] + names[:r % len(names)]:
            epochs[name] += arms[name]()
    sweeplab_epochs, bare_epochs, nhwc_epochs = epochs["sweeplab"], epochs["bare"], epochs["channels_last"]
    sweeplab_s, bare_s, nhwc_s = median(sweeplab_epochs), median(bare_epochs), median(nhwc_epochs)
    return Result("B1", "trainer vs hand-written loop", size, checks=[
        Check("sweeplab.train epoch / bare epoch (LeNet, mnist5k, 1 thread)", sweeplab_s / bare_s, "<= 1.05"),
        Check("the same, the bare loop laid out channels_last as the trainer is (its own overhead)",
              sweeplab_s / nhwc_s, "<= 1.05"),
        Check("bare epoch channels_last / contiguous", nhwc_s / bare_s, ""),
    ], figures={"sweeplab_epoch_s": sweeplab_s, "bare_epoch_s": bare_s, "bare_channels_last_epoch_s": nhwc_s,
                "sweeplab_epochs_s": sweeplab_epochs, "bare_epochs_s": bare_epochs,
                "bare_channels_last_epochs_s": nhwc_epochs, "batch_size": batch,
                "memory_format": str(cfg.train.memory_format), "train_images": len(tensors.y_train),
                "repeats": p["repeats"], "epochs": p["epochs"]})
