"""Every registered model trains through the real training function: one epoch on the embedded
MNIST 5k (CPU), and on CUDA where a GPU is present."""
from __future__ import annotations

import math

import pytest
import torch

from sweeplab.compose import compose
from sweeplab.models import MODELS
from sweeplab.train import train

PRESETS = sorted(p.stem for p in (__import__("pathlib").Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_every_model_preset_trains_one_epoch_on_mnist5k(preset):
    from sweeplab.models import build_model

    cfg = compose([f"model={preset}", "train.epochs=1", "data.subset=400", "tracking=none", "train.device=cpu"])
    result = train(cfg)
    assert len(result.history) == 1
    assert math.isfinite(result.metrics["train/loss"]) and math.isfinite(result.metrics["val/loss"])
    assert 0.0 <= result.metrics["val/acc"] <= 1.0
    torch.manual_seed(cfg.train.seed)  # the same initial weights train() started from
    initial = build_model(cfg.model, result.input_shape, 10).state_dict()
    trained = result.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k].cpu()) for k in initial if k.endswith("weight"))


def test_presets_cover_every_registered_model():
    from omegaconf import OmegaConf

    from sweeplab.compose import conf_dir

    names = {OmegaConf.load(conf_dir() / "model" / f"{p}.yaml").name for p in PRESETS}
    assert names == set(MODELS.names())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("preset", ["lenet", "vgg", "googlenet"])
def test_models_train_on_cuda(preset):
    # 3 epochs: after one, LeNet and GoogLeNet on 1,000 images are still at chance (0.10) on the CPU too
    cfg = compose([f"model={preset}", "train.epochs=3", "data.subset=1000", "tracking=none", "train.device=auto"])
    result = train(cfg)
    assert next(result.model.parameters()).is_cuda
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert result.metrics["val/acc"] > 0.3  # on the CPU: LeNet 0.67, VGG 0.91, GoogLeNet 0.69
