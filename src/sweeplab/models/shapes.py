"""Layer plans for convolutional models and the shape check run before training.

Every convolutional model describes its feature extractor as a list of specs.
The same list is traced here (without torch) to validate a config and is
turned into modules by ``modules.build_features``, so the check and the model agree.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sweeplab.errors import ArchitectureError


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
