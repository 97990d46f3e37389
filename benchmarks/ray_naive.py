"""The B2 workload as a Ray Tune user writes it from Ray's own examples (mnist_pytorch.py):
a function trainable that loads its data inside each trial, a DataLoader, OptunaSearch, tune.Tuner.

    python benchmarks/ray_naive.py --trials 16 --epochs 5 --storage /tmp/ray_naive
"""
from __future__ import annotations

import argparse


def train_lenet(config: dict) -> None:
    import torch
    from bare_loop import build, load_tensors
    from ray import tune
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    data = load_tensors("mnist5k", config["subset"])
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True)
    val_loader = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=512)
    model = build("lenet", data)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    for epoch in range(config["epochs"]):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += int((model(x).argmax(1) == y).sum())
        tune.report({"val_acc": correct / len(data.y_val), "epoch": epoch + 1})


def main(trials: int, epochs: int, subset: int | None, storage: str) -> None:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    # Ray's examples call ray.init(); "local" only keeps it from joining a `ray start` cluster this machine
    # recorded earlier (a stale record made it wait for a GCS that was gone)
    ray.init(address="local")
    tuner = tune.Tuner(
        tune.with_resources(train_lenet, {"cpu": 1}),
        param_space={"lr": tune.loguniform(0.005, 0.05), "epochs": epochs, "subset": subset},
        tune_config=tune.TuneConfig(search_alg=OptunaSearch(metric="val_acc", mode="max"), num_samples=trials,
                                    max_concurrent_trials=2),
        run_config=tune.RunConfig(name="ray_naive", storage_path=storage, verbose=0),
    )
    results = tuner.fit()
    best = results.get_best_result(metric="val_acc", mode="max")
    print(f"best val_acc {best.metrics['val_acc']:.4f} at lr {best.config['lr']:.4g}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subset", type=int)
    parser.add_argument("--storage", required=True)
    args = parser.parse_args()
    main(args.trials, args.epochs, args.subset, args.storage)
