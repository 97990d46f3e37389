"""Activations, pooling and weight init selectable by name from any model config."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from sweeplab.registry import Registry
from sweeplab.structured import Choice

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", "model.activation")
_ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}
for _name, _factory in _ACTIVATION_FACTORIES.items():
    ACTIVATIONS.register(_name, _factory)


def activation(name: str) -> nn.Module:
    return ACTIVATIONS.get(name)()


class MinPool2d(nn.Module):
    """Min pooling: the max of the negated input, negated back."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -F.max_pool2d(-x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


POOLINGS: Registry[Callable[[int, int, int], nn.Module]] = Registry("pooling", "model.pooling")
POOLINGS.register("max", lambda k, s, p: nn.MaxPool2d(k, s, p))
# count_include_pad=False: padded borders must not pull averages towards zero.
POOLINGS.register("avg", lambda k, s, p: nn.AvgPool2d(k, s, p, count_include_pad=False))
POOLINGS.register("min", lambda k, s, p: MinPool2d(k, s, p))


def pooling(name: str, kernel: int, stride: int, pad: int = 0) -> nn.Module:
    return POOLINGS.get(name)(kernel, stride, pad)


class WeightInit(Choice):
    default = "default"  # PyTorch's own
    normal = "normal"  # N(0, weight_init_std), the textbook weight_init_std
    xavier = "xavier"  # scaled by fan-in and fan-out
    he = "he"  # scaled by fan-in, for ReLU


def init_weights(model: nn.Module, scheme: WeightInit, std: float) -> None:
    """Re-initialise every Linear/Conv weight by ``scheme``; 'default' keeps PyTorch's."""
    if scheme == "default":
        return
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if scheme == "normal":
            nn.init.normal_(module.weight, 0.0, std)
        elif scheme == "xavier":
            nn.init.xavier_normal_(module.weight)
        else:
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
