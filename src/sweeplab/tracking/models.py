"""A run's trained network as an MLflow Model (the pytorch flavor, so pyfunc too), from its run files.

The model takes images with the pixel values the dataset stores (N x C x H x W, before scaling) as float32,
which its signature enforces (uint8 images: ``images.astype("float32")``), and returns class scores (logits,
N x classes): the run's scaling and normalisation travel inside it, so
``mlflow.pyfunc.load_model(uri).predict(images)`` needs nothing from sweeplab's data code. It is built
from config.yaml, weights.pt (a state_dict read with ``weights_only=True``: nothing is unpickled) and
dataset.json (sweeplab.run_files), which every trial checkpoint and train run folder holds.

Cost decides where this runs: saving takes ~0.07 s per model once warm, ~3 s for the first in a process
(MLflow checks the environment's packages), which per trial would add half of a tiny trial's cost
(benchmark B8). So a sweep logs the models of its best ``tracking.log_models`` trials at its end, and
``sweeplab best --register`` logs the model of a trial that has none yet.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sweeplab.errors import UserError
from sweeplab.run_files import read_dataset

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_PATH = "model"  # the artifact path of a run's MLflow Model: runs:/<run id>/model
MODEL_FILES = ("config.yaml", "weights.pt", "dataset.json")  # the run files a model is built from


class ClassScores(nn.Module):
    """``network`` behind the run's input scaling and normalisation: stored pixels in, logits out."""

    def __init__(self, network: nn.Module, scale: float, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        self.scale = scale
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images.float() * self.scale - self.mean) / self.std)


def build_scorer(folder: Path) -> tuple[ClassScores, np.ndarray]:
    """The run's network with its trained weights, and its input example (float32 images)."""
    from omegaconf import DictConfig, OmegaConf

    from sweeplab.checks import input_shape
    from sweeplab.data import DATASETS
    from sweeplab.models import build_model

    cfg = OmegaConf.load(folder / "config.yaml")
    assert isinstance(cfg, DictConfig), "config.yaml holds a mapping"
    dataset = read_dataset(folder / "dataset.json")
    network = build_model(cfg.model, input_shape(cfg), DATASETS.get(cfg.data.name).num_classes)
    network.load_state_dict(torch.load(folder / "weights.pt", weights_only=True, map_location="cpu"))
    scorer = ClassScores(network, dataset["scale"], dataset["mean"], dataset["std"]).eval()
    return scorer, np.asarray(dataset["example"], dtype=np.float32)


def save_model(folder: Path, out: Path) -> Path:
    """Write the MLflow Model of the run whose files are in ``folder`` to ``out``."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    scorer, example = build_scorer(folder)
    with torch.no_grad():
        scores = scorer(torch.from_numpy(example)).numpy()
    # the pickle format: loads wherever sweeplab is installed; MLflow's pt2 export costs 20x more to save
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its warning about pickle, once per model
    mlflow.pytorch.save_model(scorer, str(out), signature=infer_signature(example, scores), input_example=example,
                              serialization_format="pickle", pip_requirements=_requirements())
    return out


def _requirements() -> list[str]:
    """The packages the model needs, pinned to the installed ones (MLflow would infer them by loading it
    in a subprocess: seconds)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in ("torch", "sweeplab")]


def warm_up() -> None:
    """MLflow's pytorch flavor, and the map of installed packages MLflow builds the first time it checks a model's
    requirements against the environment (≈ 2 s, once per process), made ahead of the first ``save_model``."""
    import mlflow.pytorch  # noqa: F401
    from mlflow.utils import requirements_utils

    build_map = getattr(requirements_utils, "_init_packages_to_modules_map", None)  # private: absent, it is built later
    if build_map is not None:
        build_map()


def log_model(client: MlflowClient, run_id: str, folder: Path | None = None) -> str:
    """Log the run's MLflow Model under ``model``, built from ``folder`` (its run files) or from the run's
    own artifacts; returns ``runs:/<run id>/model``."""
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            folder = Path(tmp) / "files"
            folder.mkdir()
            for name in MODEL_FILES:
                client.download_artifacts(run_id, name, str(folder))
        model = save_model(folder, Path(tmp) / MODEL_PATH)
        client.log_artifacts(run_id, str(model), MODEL_PATH)
    return f"runs:/{run_id}/{MODEL_PATH}"


def has_model(client: MlflowClient, run_id: str) -> bool:
    return any(a.path == f"{MODEL_PATH}/MLmodel" for a in client.list_artifacts(run_id, MODEL_PATH))


def register(client: MlflowClient, run_id: str, name: str) -> tuple[Any, bool]:
    """Register the run's model (logging it first if it has none) as a new version of ``name``: (the version, whether
    it is new). A run registered under ``name`` already keeps its version: a second ``--register`` adds none."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code == "INVALID_PARAMETER_VALUE":  # a name the registry refuses: '', 'a/b'
            raise UserError(f"--register {name!r}: {err.message}") from None
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        registered = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if registered:
            return min(registered, key=lambda v: int(v.version)), False
    if not has_model(client, run_id):
        log_model(client, run_id)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_PATH}"
    return client.create_model_version(name, source, run_id=run_id), True
