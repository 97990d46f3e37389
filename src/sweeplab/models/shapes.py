"""Layer plans for convolutional models and the shape check run before training.

Every convolutional model describes its feature extractor as a list of specs.
The same list is traced here (without torch) to validate a config and is
turned into modules by ``build_features``, so the check and the model agree.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sweeplab.errors import ArchitectureError
from sweeplab.models import layers


@dataclass(frozen=True)
class Conv:
    name: str
    filters: int
    size: int
    stride: int = 1
    pad: int = 0


@dataclass(frozen=True)
class Pool:
    name: str
    size: int
    stride: int
    pad: int = 0


@dataclass(frozen=True)
class Inception:
    """Parallel 1x1 / 1x1->3x3 / 1x1->5x5 / pool->1x1 branches joined by filter concat."""

    name: str
    c1: int
    c3_reduce: int
    c3: int
    c5_reduce: int
    c5: int
    pool_proj: int

    @property
    def filters(self) -> int:
        return self.c1 + self.c3 + self.c5 + self.pool_proj


LayerSpec = Conv | Pool | Inception


@dataclass(frozen=True)
class ShapeRow:
    layer: str
    params: str
    input: tuple[int, int, int]
    output: tuple[int, int, int]


def conv_output(size: int, kernel: int, stride: int, pad: int) -> int:
    """floor((H + 2*pad - kernel) / stride) + 1"""
    return (size + 2 * pad - kernel) // stride + 1


def _describe(spec: LayerSpec) -> str:
    if isinstance(spec, Conv):
        return f"filter_num={spec.filters}, filter_size={spec.size}, stride={spec.stride}, pad={spec.pad}"
    if isinstance(spec, Pool):
        return f"pool_size={spec.size}, stride={spec.stride}, pad={spec.pad}"
    return (
        f"1x1={spec.c1}, 3x3_reduce={spec.c3_reduce}, 3x3={spec.c3}, "
        f"5x5_reduce={spec.c5_reduce}, 5x5={spec.c5}, pool_proj={spec.pool_proj}"
    )


def trace(plan: Sequence[LayerSpec], input_shape: tuple[int, int, int], model: str) -> list[ShapeRow]:
    """Output size of every layer; ArchitectureError names the first impossible one."""
    c, h, w = input_shape
    rows: list[ShapeRow] = []
    for spec in plan:
        where = f"model {model!r}, layer {spec.name!r} ({_describe(spec)})"
        if isinstance(spec, Inception):
            widths = (spec.c1, spec.c3_reduce, spec.c3, spec.c5_reduce, spec.c5, spec.pool_proj)
            if min(widths) < 1:
                raise ArchitectureError(f"{where}: every branch needs at least 1 filter")
            out = (spec.filters, h, w)  # every branch pads to keep H x W
        else:
            if spec.size < 1 or spec.stride < 1 or spec.pad < 0:
                raise ArchitectureError(f"{where}: size and stride must be >= 1 and pad >= 0")
            if isinstance(spec, Conv) and spec.filters < 1:
                raise ArchitectureError(f"{where}: filter_num must be >= 1")
            if isinstance(spec, Pool) and spec.pad > spec.size // 2:
                raise ArchitectureError(f"{where}: pad must be at most half the pool size")
            oh = conv_output(h, spec.size, spec.stride, spec.pad)
            ow = conv_output(w, spec.size, spec.stride, spec.pad)
            if oh < 1 or ow < 1:
                raise ArchitectureError(
                    f"{where} does not fit its {h}x{w} input: "
                    f"floor(({h} + 2*{spec.pad} - {spec.size}) / {spec.stride}) + 1 = {min(oh, ow)}, "
                    f"but it must be >= 1. Use a size <= {min(h, w) + 2 * spec.pad}, more padding, "
                    f"or a larger input (data.resize)."
                )
            out = (spec.filters if isinstance(spec, Conv) else c, oh, ow)
        rows.append(ShapeRow(spec.name, _describe(spec), (c, h, w), out))
        c, h, w = out
    return rows


class InceptionBlock(nn.Module):
    def __init__(self, spec: Inception, in_channels: int, act: str, pool: str, batch_norm: bool = False) -> None:
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> nn.Sequential:
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2), *norm, layers.activation(act))

        self.branch1 = conv(in_channels, spec.c1, 1)
        self.branch3 = nn.Sequential(conv(in_channels, spec.c3_reduce, 1), conv(spec.c3_reduce, spec.c3, 3))
        self.branch5 = nn.Sequential(conv(in_channels, spec.c5_reduce, 1), conv(spec.c5_reduce, spec.c5, 5))
        self.branch_pool = nn.Sequential(layers.pooling(pool, 3, 1, 1), conv(in_channels, spec.pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


def build_features(
    plan: Sequence[LayerSpec], in_channels: int, act: str, pool: str, batch_norm: bool = False
) -> nn.Sequential:
    modules: list[tuple[str, nn.Module]] = []
    channels = in_channels
    for spec in plan:
        if isinstance(spec, Conv):
            modules.append((spec.name, nn.Conv2d(channels, spec.filters, spec.size, spec.stride, spec.pad)))
            if batch_norm:
                modules.append((f"{spec.name}_bn", nn.BatchNorm2d(spec.filters)))
            modules.append((f"{spec.name}_act", layers.activation(act)))
            channels = spec.filters
        elif isinstance(spec, Pool):
            modules.append((spec.name, layers.pooling(pool, spec.size, spec.stride, spec.pad)))
        else:
            modules.append((spec.name, InceptionBlock(spec, channels, act, pool, batch_norm)))
            channels = spec.filters
    return nn.Sequential(OrderedDict(modules))


def mlp_head(
    in_features: int, hidden: Sequence[int], num_classes: int, act: str, dropout: float = 0.0
) -> nn.Sequential:
    """affine -> act (-> dropout) ... -> affine to the class scores."""
    modules: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        modules += [nn.Linear(width, size), layers.activation(act)]
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        width = size
    modules.append(nn.Linear(width, num_classes))
    return nn.Sequential(*modules)
