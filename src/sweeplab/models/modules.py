"""The torch side of the model zoo: the modules a model config is built into. Only building a model imports
this (and torch); configs, plans and the shape check (zoo, shapes, layers) do not."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from sweeplab.models import layers
from sweeplab.models.shapes import Conv, Inception, LayerSpec, Pool, trace

if TYPE_CHECKING:
    from sweeplab.models.registry import PoolingModelConfig, Shape
    from sweeplab.models.zoo import RNNConfig


def init_weights(model: nn.Module, scheme: layers.WeightInit, std: float) -> None:
    """Re-initialise every Linear, Conv and LSTM/GRU weight by ``scheme`` (biases to zero); 'default' keeps
    PyTorch's."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weights, biases = [module.weight], [module.bias] if module.bias is not None else []
        elif isinstance(module, nn.RNNBase):  # weight_ih_l0, weight_hh_l0, bias_ih_l0, ... per layer
            weights = [p for name, p in module.named_parameters() if name.startswith("weight")]
            biases = [p for name, p in module.named_parameters() if name.startswith("bias")]
        else:
            continue
        for weight in weights:
            if scheme == "normal":
                nn.init.normal_(weight, 0.0, std)
            elif scheme == "xavier":
                nn.init.xavier_normal_(weight)
            else:
                nn.init.kaiming_normal_(weight, nonlinearity="relu")
        for bias in biases:
            nn.init.zeros_(bias)


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


class FeatureClassifier(nn.Module):
    """features (conv/pool stack) -> flatten -> classifier."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_model(
    plan: list[LayerSpec],
    cfg: PoolingModelConfig,
    input_shape: Shape,
    num_classes: int,
    hidden: list[int],
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> FeatureClassifier:
    rows = trace(plan, input_shape, cfg.name)
    out = rows[-1].output
    features = build_features(plan, input_shape[0], cfg.activation, cfg.pooling, batch_norm)
    return FeatureClassifier(features, mlp_head(layers.flat_size(out), hidden, num_classes, cfg.activation, dropout))


class GoogLeNet(nn.Module):
    def __init__(self, features: nn.Module, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)  # global average pooling instead of big fc layers
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class ElmanRNN(nn.Module):
    """Reads an image row by row: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, act: str) -> None:
        super().__init__()
        self.ih = nn.ModuleList(
            nn.Linear(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )
        self.hh = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_layers))
        self.act = layers.activation(act)
        self.hidden_size = hidden_size

    def forward(self, seq: torch.Tensor) -> torch.Tensor:  # (batch, time, features)
        for ih, hh in zip(self.ih, self.hh, strict=True):
            x_proj = ih(seq)  # all time steps at once; only the recurrence is sequential
            h = seq.new_zeros(seq.shape[0], self.hidden_size)
            outputs = []
            for t in range(seq.shape[1]):
                h = self.act(x_proj[:, t] + hh(h))
                outputs.append(h)
            seq = torch.stack(outputs, dim=1)
        return seq[:, -1]


class RowRNN(nn.Module):
    def __init__(self, cfg: RNNConfig, input_shape: Shape, num_classes: int) -> None:
        super().__init__()
        c, _, w = input_shape
        self.rnn: nn.Module
        if cfg.cell == "rnn":
            self.rnn = ElmanRNN(c * w, cfg.hidden_size, cfg.num_layers, cfg.activation)
        else:
            cls = nn.LSTM if cfg.cell == "lstm" else nn.GRU
            self.rnn = cls(c * w, cfg.hidden_size, cfg.num_layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(b, h, c * w)  # one time step per image row
        out = self.rnn(rows)
        last = out if isinstance(self.rnn, ElmanRNN) else out[0][:, -1]
        return self.head(last)
