"""The textbook models, each next to its config schema and layer plan. Sizes are scaled for
28-32 px inputs (MNIST, Fashion-MNIST, CIFAR-10).

Each builder imports its modules (``sweeplab.models.modules``, and with them torch) when it is called: a sweep's
driver composes and checks configs against these schemas and plans without importing torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sweeplab.errors import ConfigError
from sweeplab.models import layers
from sweeplab.models.registry import ModelConfig, PoolingModelConfig, Shape, register_model
from sweeplab.models.shapes import Conv, Inception, LayerSpec, Pool, trace
from sweeplab.structured import Choice

if TYPE_CHECKING:
    from torch import nn


# --- mlp ---------------------------------------------------------------------
@dataclass
class MLPConfig(ModelConfig):
    hidden_sizes: list[int] = field(default_factory=lambda: [100, 100])  # one entry per hidden layer


@register_model("mlp", MLPConfig, "multilayer perceptron: affine -> act per hidden size")
def build_mlp(cfg: MLPConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import mlp_head

    return mlp_head(layers.flat_size(input_shape), cfg.hidden_sizes, num_classes, cfg.activation)


# --- simple_convnet ------------------------------------------------------------
@dataclass
class ConvParams:
    filter_num: int = 30
    filter_size: int = 5
    stride: int = 1
    pad: int = 0


@dataclass
class SimpleConvNetConfig(PoolingModelConfig):
    conv: ConvParams = field(default_factory=ConvParams)
    pool_size: int = 2
    hidden_size: int = 100


def simple_convnet_plan(cfg: SimpleConvNetConfig, input_shape: Shape) -> list[LayerSpec]:
    c = cfg.conv
    return [Conv("conv1", c.filter_num, c.filter_size, c.stride, c.pad), Pool("pool1", cfg.pool_size, cfg.pool_size)]


@register_model(
    "simple_convnet", SimpleConvNetConfig, "conv -> act -> pool -> affine -> act -> affine", simple_convnet_plan
)
def build_simple_convnet(cfg: SimpleConvNetConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import conv_model

    return conv_model(simple_convnet_plan(cfg, input_shape), cfg, input_shape, num_classes, [cfg.hidden_size])


# --- lenet ---------------------------------------------------------------------
@dataclass
class LeNetConfig(PoolingModelConfig):
    conv1_filters: int = 6
    conv2_filters: int = 16
    kernel_size: int = 5
    fc_sizes: list[int] = field(default_factory=lambda: [120, 84])


def lenet_plan(cfg: LeNetConfig, input_shape: Shape) -> list[LayerSpec]:
    k = cfg.kernel_size
    return [
        Conv("conv1", cfg.conv1_filters, k, 1, k // 2),  # 'same' padding, as LeNet-5 on 32x32 MNIST
        Pool("pool1", 2, 2),
        Conv("conv2", cfg.conv2_filters, k),
        Pool("pool2", 2, 2),
    ]


@register_model("lenet", LeNetConfig, "LeNet-5: conv-pool-conv-pool-fc-fc-fc", lenet_plan)
def build_lenet(cfg: LeNetConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import conv_model

    return conv_model(lenet_plan(cfg, input_shape), cfg, input_shape, num_classes, cfg.fc_sizes)


# --- alexnet -------------------------------------------------------------------
@dataclass
class AlexNetConfig(PoolingModelConfig):
    filters: list[int] = field(default_factory=lambda: [32, 64, 96, 96, 64])  # the five conv layers
    kernel_sizes: list[int] = field(default_factory=lambda: [5, 5, 3, 3, 3])
    fc_sizes: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.5


def alexnet_plan(cfg: AlexNetConfig, input_shape: Shape) -> list[LayerSpec]:
    if len(cfg.filters) != 5 or len(cfg.kernel_sizes) != 5:
        raise ConfigError("model 'alexnet': filters and kernel_sizes need 5 entries, one per conv layer")
    f, k = cfg.filters, cfg.kernel_sizes
    return [
        Conv("conv1", f[0], k[0], 1, k[0] // 2),
        Pool("pool1", 2, 2),
        Conv("conv2", f[1], k[1], 1, k[1] // 2),
        Pool("pool2", 2, 2),
        Conv("conv3", f[2], k[2], 1, k[2] // 2),
        Conv("conv4", f[3], k[3], 1, k[3] // 2),
        Conv("conv5", f[4], k[4], 1, k[4] // 2),
        Pool("pool3", 2, 2),
    ]


@register_model("alexnet", AlexNetConfig, "AlexNet: 5 conv, 3 pool, dropout fc layers", alexnet_plan)
def build_alexnet(cfg: AlexNetConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import conv_model

    return conv_model(alexnet_plan(cfg, input_shape), cfg, input_shape, num_classes, cfg.fc_sizes, cfg.dropout)


# --- vgg -----------------------------------------------------------------------
@dataclass
class VGGConfig(PoolingModelConfig):
    # one list per stage of 3x3 convs, each stage ends in a 2x2 pool (vgg11-like, scaled)
    stages: list[list[int]] = field(default_factory=lambda: [[32], [64], [128, 128], [128, 128]])
    fc_sizes: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.3
    batch_norm: bool = True


def vgg_plan(cfg: VGGConfig, input_shape: Shape) -> list[LayerSpec]:
    plan: list[LayerSpec] = []
    for s, stage in enumerate(cfg.stages, start=1):
        plan += [Conv(f"conv{s}_{i}", width, 3, 1, 1) for i, width in enumerate(stage, start=1)]
        plan.append(Pool(f"pool{s}", 2, 2))
    return plan


@register_model("vgg", VGGConfig, "VGG: stages of 3x3 convs, each closed by a 2x2 pool", vgg_plan)
def build_vgg(cfg: VGGConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import conv_model

    return conv_model(
        vgg_plan(cfg, input_shape), cfg, input_shape, num_classes, cfg.fc_sizes, cfg.dropout, cfg.batch_norm
    )


# --- googlenet -----------------------------------------------------------------
@dataclass
class GoogLeNetConfig(PoolingModelConfig):
    stem_filters: int = 32
    # each block: [1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj]
    blocks: list[list[int]] = field(
        default_factory=lambda: [[16, 24, 32, 4, 8, 8], [32, 32, 48, 8, 24, 16], [48, 32, 64, 8, 16, 16]]
    )
    pool_after: list[int] = field(default_factory=lambda: [2])  # 1-based blocks followed by a 2x2 pool
    dropout: float = 0.2
    batch_norm: bool = True  # after every conv, as in Inception v2


def googlenet_plan(cfg: GoogLeNetConfig, input_shape: Shape) -> list[LayerSpec]:
    beyond = [b for b in cfg.pool_after if not 1 <= b <= len(cfg.blocks)]
    if beyond:
        raise ConfigError(f"model 'googlenet': pool_after={list(cfg.pool_after)} names block {beyond[0]}, "
                          f"but there are blocks 1..{len(cfg.blocks)}")
    plan: list[LayerSpec] = [Conv("stem", cfg.stem_filters, 3, 1, 1), Pool("stem_pool", 2, 2)]
    for b, widths in enumerate(cfg.blocks, start=1):
        if len(widths) != 6:
                raise ConfigError(
                f"model 'googlenet': blocks[{b - 1}] has {len(widths)} widths; it needs 6: "
                "[1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj]"
            )
        plan.append(Inception(f"inception{b}", *widths))
        if b in cfg.pool_after:
            plan.append(Pool(f"pool{b}", 2, 2))
    return plan


@register_model("googlenet", GoogLeNetConfig, "GoogLeNet: inception blocks, global average pool", googlenet_plan)
def build_googlenet(cfg: GoogLeNetConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import GoogLeNet, build_features

    plan = googlenet_plan(cfg, input_shape)
    channels = trace(plan, input_shape, cfg.name)[-1].output[0]
    features = build_features(plan, input_shape[0], cfg.activation, cfg.pooling, cfg.batch_norm)
    return GoogLeNet(features, channels, num_classes, cfg.dropout)


# --- rnn -----------------------------------------------------------------------
class RnnCell(Choice):
    rnn = "rnn"  # Elman: the activation above
    lstm = "lstm"
    gru = "gru"


@dataclass
class RNNConfig(ModelConfig):
    activation: str = "tanh"  # cell=rnn: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    cell: RnnCell = RnnCell.rnn
    hidden_size: int = 128
    num_layers: int = 1

    def check(self) -> None:
        super().check()
        if self.cell != RnnCell.rnn and self.activation != "tanh":  # nn.LSTM and nn.GRU take none
            raise ConfigError(f"model.activation={self.activation} applies to model.cell=rnn only: an "
                              f"{self.cell} cell has its own gates (sigmoid and tanh); leave model.activation at "
                              "tanh, or use model.cell=rnn")


@register_model("rnn", RNNConfig, "recurrent net reading the image row by row (rnn / lstm / gru cell)")
def build_rnn(cfg: RNNConfig, input_shape: Shape, num_classes: int) -> nn.Module:
    from sweeplab.models.modules import RowRNN

    return RowRNN(cfg, input_shape, num_classes)
