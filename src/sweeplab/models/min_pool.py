"""Min pooling, which torch lacks (``model.pooling=min``)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MinPool2d(nn.Module):
    """Min pooling: the max of the negated input, negated back."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -F.max_pool2d(-x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
