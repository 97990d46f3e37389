"""B1: sweeplab.train.train vs the hand-written loop, one torch thread, epoch time (train + val); the loop as written
plainly (the issue's yardstick) and laid out channels_last as the trainer lays a convnet out on the CPU (the trainer's
own overhead at equal training speed)."""
from __future__ import annotations

import torch
from bare_loop import build, load_tensors, train_bare
from harness import Check, Result, median

SIZES = {  # repeats of the A B pair, epochs per run, training images (None: all of mnist5k's 4,000)
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
    # the first epoch of either pays for warm-up: one untimed run of each before the pairs
    train(cfg)
    train_bare(build("lenet", tensors), tensors, lr, 1, batch)
    train_bare(build("lenet", tensors), tensors, lr, 1, batch, channels_last=True)
    sweeplab_epochs, bare_epochs, nhwc_epochs = [], [], []
    for _ in range(p["repeats"]):  # A B C A B C: drift on a shared machine hits all alike
        sweeplab_epochs += [h["epoch_seconds"] for h in train(cfg).history]
        bare = train_bare(build("lenet", tensors), tensors, lr, p["epochs"], batch)
        bare_epochs += [h["epoch_seconds"] for h in bare]
        nhwc = train_bare(build("lenet", tensors), tensors, lr, p["epochs"], batch, channels_last=True)
        nhwc_epochs += [h["epoch_seconds"] for h in nhwc]
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
