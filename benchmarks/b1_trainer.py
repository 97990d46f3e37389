"""B1: sweeplab.train.train vs the hand-written loop, one torch thread, epoch time (train + val)."""
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
    sweeplab_epochs, bare_epochs = [], []
    for _ in range(p["repeats"]):  # A B A B: drift on a shared machine hits both alike
        sweeplab_epochs += [h["epoch_seconds"] for h in train(cfg).history]
        bare = train_bare(build("lenet", tensors), tensors, lr, p["epochs"], batch)
        bare_epochs += [h["epoch_seconds"] for h in bare]
    ratio = median(sweeplab_epochs) / median(bare_epochs)
    return Result("B1", "trainer vs hand-written loop", size, checks=[
        Check("sweeplab.train epoch / bare epoch (LeNet, mnist5k, 1 thread)", ratio, "<= 1.05"),
    ], figures={"sweeplab_epoch_s": median(sweeplab_epochs), "bare_epoch_s": median(bare_epochs),
                "sweeplab_epochs_s": sweeplab_epochs, "bare_epochs_s": bare_epochs, "batch_size": batch,
                "train_images": len(tensors.y_train), "repeats": p["repeats"], "epochs": p["epochs"]})
