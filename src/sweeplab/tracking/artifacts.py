"""Per-run artifacts: learning curves, confusion matrix, weights, config, model summary."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves_png(history: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy vs epoch, train vs val."""
    plt = _pyplot()
    epochs = [int(h["epoch"]) for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "--"), ("val", "-")):
        ax_loss.plot(epochs, [h[f"{split}/loss"] for h in history], style, marker="o", label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}/acc"] for h in history], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix_png(confusion: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    plt = _pyplot()
    confusion = np.asarray(confusion)
    n = len(confusion)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n))
    ax.imshow(confusion, cmap="Blues")
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if confusion[i, j] > threshold else "black")
    ax.set_xticks(range(n), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "validation confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _figures(folder: Path, history: Sequence[dict[str, float]], confusion: np.ndarray, class_names: Sequence[str],
             title: str) -> None:
    if history:
        learning_curves_png(history, folder / "learning_curves.png", title)
    if confusion.ndim == 2 and confusion.sum() > 0:
        confusion_matrix_png(confusion, class_names, folder / "confusion_matrix.png")


def log_best_trial_figures(client, parent_run_id: str, optuna_storage: str, sweep_id: str) -> str | None:
    """Learning curves and confusion matrix of the sweep's best trial, drawn once at the end of the sweep
    (not per trial: MLflow already charts every run's metrics) and logged to that trial's run.
    Returns the run id, or None when no trial completed."""
    import tempfile

    from sweeplab.run_files import read_confusion
    from sweeplab.sweep.results import load_outcome

    best = load_outcome(optuna_storage, sweep_id).best()
    if best is None:
        return None
    found = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                               f"and tags.`sweeplab.optuna_trial` = '{best.number}' "
                               "and tags.`sweeplab.status` = 'completed'", max_results=1)
    if not found:
        return None
    run = found[0]
    keys = ("train/loss", "train/acc", "val/loss", "val/acc")
    steps: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run.info.run_id, key):
            steps.setdefault(m.step, {"epoch": m.step})[key] = m.value
    history = [steps[s] for s in sorted(steps) if len(steps[s]) == len(keys) + 1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        confusion, classes = read_confusion(Path(client.download_artifacts(run.info.run_id, "confusion_matrix.json", tmp)))
        (folder / "confusion_matrix.json").unlink()
        _figures(folder, history, confusion, classes, f"best trial: {run.info.run_name}")
        client.log_artifacts(run.info.run_id, tmp)
    return run.info.run_id
