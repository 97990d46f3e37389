"""Activations, pooling and weight init selectable by name from any model config.

The registries are filled without importing torch (a sweep's driver checks configs against them); each entry
builds its module, importing torch, when a model is built."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from sweeplab.registry import Registry
from sweeplab.structured import Choice

if TYPE_CHECKING:
    from torch import nn


def _nn():
    from torch import nn

    return nn


ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", "model.activation")
_ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "identity": lambda: _nn().Identity(),
    "sigmoid": lambda: _nn().Sigmoid(),
    "tanh": lambda: _nn().Tanh(),
    "relu": lambda: _nn().ReLU(),
    "leaky_relu": lambda: _nn().LeakyReLU(0.01),
    "elu": lambda: _nn().ELU(),
    "gelu": lambda: _nn().GELU(),
    "silu": lambda: _nn().SiLU(),
    "softplus": lambda: _nn().Softplus(),
}
for _name, _factory in _ACTIVATION_FACTORIES.items():
    ACTIVATIONS.register(_name, _factory)


def activation(name: str) -> nn.Module:
    return ACTIVATIONS.get(name)()


def _min_pool(kernel: int, stride: int, pad: int) -> nn.Module:
    from sweeplab.models.min_pool import MinPool2d

    return MinPool2d(kernel, stride, pad)


POOLINGS: Registry[Callable[[int, int, int], nn.Module]] = Registry("pooling", "model.pooling")
POOLINGS.register("max", lambda k, s, p: _nn().MaxPool2d(k, s, p))
# count_include_pad=False: padded borders must not pull averages towards zero.
POOLINGS.register("avg", lambda k, s, p: _nn().AvgPool2d(k, s, p, count_include_pad=False))
POOLINGS.register("min", _min_pool)


def pooling(name: str, kernel: int, stride: int, pad: int = 0) -> nn.Module:
    return POOLINGS.get(name)(kernel, stride, pad)


class WeightInit(Choice):
    default = "default"  # PyTorch's own
    normal = "normal"  # N(0, weight_init_std), the textbook weight_init_std
    xavier = "xavier"  # scaled by fan-in and fan-out
    he = "he"  # scaled by fan-in, for ReLU


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
