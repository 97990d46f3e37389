"""Every registered model trains through the real training function: one epoch on the embedded
MNIST 5k (CPU), and on CUDA where a GPU is present."""
from __future__ import annotations

import math

import pytest
import torch

from sweeplab.config.compose import compose
from sweeplab.models import MODELS
from sweeplab.train import train

PRESETS = sorted(p.stem for p in (__import__("pathlib").Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_trains_one_epoch_on_mnist5k(preset):
    cfg = compose([f"model={preset}", "train.epochs=1", "data.subset=400", "tracking=none", "train.device=cpu"])
    result = train(cfg)
    assert len(result.history) == 1
    assert math.isfinite(result.metrics["train/loss"])
    assert result.metrics["val/acc"] > 0.10  # better than chance after one short epoch


def test_presets_cover_every_registered_model():
    from omegaconf import OmegaConf

    from sweeplab.config.compose import conf_dir

    names = {OmegaConf.load(conf_dir() / "model" / f"{p}.yaml").name for p in PRESETS}
    assert names == set(MODELS.names())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("preset", ["lenet", "vgg", "googlenet"])
def test_models_train_on_cuda(preset):
    cfg = compose([f"model={preset}", "train.epochs=1", "data.subset=1000", "tracking=none", "train.device=auto"])
    result = train(cfg)
    assert next(result.model.parameters()).is_cuda
    assert result.metrics["val/acc"] > 0.10
