"""The model zoo: register a model by name with its config schema and builder.

``check_architecture`` validates a config against an input shape without
building anything (or importing torch), so a sweep can reject a sampled configuration cheaply.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import MISSING

from sweeplab.models import layers
from sweeplab.models.shapes import LayerSpec, ShapeRow, trace
from sweeplab.registry import Registry
from sweeplab.structured import out_of_range, typed

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ModelConfig:
    """Keys every model has."""

    name: str = MISSING  # a registered model: sweeplab models lists them
    activation: str = "relu"  # a registered activation: sweeplab models lists them
    weight_init: layers.WeightInit = layers.WeightInit.default
    weight_init_std: float = 0.01  # weight_init=normal: N(0, weight_init_std)

    def check(self) -> None:
        """Ranges: the init std, a dropout, and every layer width or count (>= 1)."""
        if self.weight_init_std <= 0:
            raise out_of_range("model.weight_init_std", self.weight_init_std, "> 0")
        dropout = getattr(self, "dropout", 0.0)
        if not 0 <= dropout < 1:
            raise out_of_range("model.dropout", dropout, "in [0, 1)")
        for key, value in asdict(self).items():
            _check_widths(f"model.{key}", value)


@dataclass
class PoolingModelConfig(ModelConfig):
    """Keys of a model with pooling layers."""

    pooling: str = "max"  # a registered pooling: sweeplab models lists them


def _check_widths(key: str, value: Any) -> None:
    """Layer widths and counts: every int in hidden_sizes, stages, blocks, filters ... is >= 1."""
    if isinstance(value, bool) or key.endswith(("weight_init_std", "dropout", "pool_after")):
        return
    if isinstance(value, int) and value < 1 and not key.endswith(".pad"):
        raise out_of_range(key, value, ">= 1")
    if isinstance(value, list):
        if not value and key.endswith(("stages", "blocks", "filters", "kernel_sizes")):
            raise out_of_range(key, value, "a non-empty list")
        for item in value:
            _check_widths(key, item)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_widths(f"{key}.{k}", v)


Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    schema: type[ModelConfig]
    build: Callable[[Any, Shape, int], nn.Module]
    plan: Callable[[Any, Shape], Sequence[LayerSpec]] | None  # None: no spatial layers
    description: str


MODELS: Registry[ModelEntry] = Registry("model", "model")
Build = TypeVar("Build", bound=Callable[..., "nn.Module"])


def register_model(
    name: str,
    schema: type[ModelConfig],
    description: str,
    plan: Callable[[Any, Shape], Sequence[LayerSpec]] | None = None,
) -> Callable[[Build], Build]:
    """Decorator for ``build(cfg, input_shape, num_classes) -> nn.Module``."""

    def wrap(build: Build) -> Build:
        MODELS.register(name, ModelEntry(name, schema, build, plan, description))
        return build

    return wrap


def check_model(cfg: Any) -> ModelConfig:
    """The model's typed config, once its names are registered and its values in range."""
    entry = MODELS.get(cfg["name"] if not hasattr(cfg, "name") else cfg.name)
    model = typed(cfg, entry.schema, "model")
    layers.ACTIVATIONS.get(model.activation)
    if isinstance(model, PoolingModelConfig):
        layers.POOLINGS.get(model.pooling)
    model.check()
    return model


def _shape(input_shape: Sequence[int]) -> Shape:
    channels, height, width = input_shape
    return channels, height, width


def check_architecture(cfg: Any, input_shape: Sequence[int]) -> list[ShapeRow]:
    """Every layer's input and output size; ArchitectureError names an impossible layer."""
    model = check_model(cfg)
    plan = MODELS.get(model.name).plan
    if plan is None:
        return []
    shape = _shape(input_shape)
    return trace(plan(model, shape), shape, model.name)


def build_model(cfg: Any, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    from sweeplab.models.modules import init_weights

    model_cfg = check_model(cfg)
    check_architecture(model_cfg, input_shape)
    model = MODELS.get(model_cfg.name).build(model_cfg, _shape(input_shape), num_classes)
    init_weights(model, model_cfg.weight_init, model_cfg.weight_init_std)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
