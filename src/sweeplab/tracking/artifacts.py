"""Per-run artifacts: learning curves, confusion matrix, weights, config, model summary."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from sweeplab.metrics import axis_label, display_scale


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves_png(history: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Loss and accuracy vs epoch, train vs val."""
    plt = pyplot()
    epochs = [int(h["epoch"]) for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "--"), ("val", "-")):
        ax_loss.plot(epochs, [h[f"{split}/loss"] for h in history], style, marker="o", label=split)
        accuracies = [display_scale("val/acc") * h[f"{split}/acc"] for h in history]
        ax_acc.plot(epochs, accuracies, style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel=axis_label("val/acc"), title="accuracy")
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
    plt = pyplot()
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


def figures(folder: Path, history: Sequence[dict[str, float]], confusion: np.ndarray, class_names: Sequence[str],
             title: str) -> None:
    if history:
        learning_curves_png(history, folder / "learning_curves.png", title)
    if confusion.ndim == 2 and confusion.sum() > 0:
        confusion_matrix_png(confusion, class_names, folder / "confusion_matrix.png")
