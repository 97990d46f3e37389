"""The files every run keeps, written in one place.

A ``sweeplab train`` run folder, a sweep trial's checkpoint (which the tracker
logs as the trial's MLflow artifacts as they are) and a single MLflow run hold
the same files, so they cannot drift apart.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RUN_FILES = ("config.yaml", "model_summary.txt", "weights.pt", "confusion_matrix.json", "dataset.json")


def write_run_files(folder: Path, config_yaml: str, summary: str, state: dict[str, Any],
                    dataset: dict[str, Any]) -> Path:
    """config.yaml, model_summary.txt, weights.pt (a plain state_dict: torch.load(weights_only=True)),
    confusion_matrix.json (validation counts, rows = true class) from a training state, and dataset.json
    (what the run trained on and how its inputs are normalised: sweeplab.data.dataset_record)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_yaml)
    (folder / "model_summary.txt").write_text(summary.rstrip("\n") + "\n")
    torch.save(state["model"], folder / "weights.pt")
    confusion = np.asarray(state["confusion"]).astype(int)
    classes = list(state.get("class_names") or [str(i) for i in range(len(confusion))])
    (folder / "confusion_matrix.json").write_text(json.dumps({"class_names": classes, "matrix": confusion.tolist()}))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def read_confusion(path: Path) -> tuple[np.ndarray, list[str]]:
    data = json.loads(Path(path).read_text())
    return np.asarray(data["matrix"], dtype=np.int64), list(data["class_names"])


def read_dataset(path: Path) -> dict[str, Any]:
    return dict(json.loads(Path(path).read_text()))
