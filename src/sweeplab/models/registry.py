"""The model zoo: register a model by name with its config schema and builder.

``check_architecture`` validates a config against an input shape without
building anything, so a sweep can reject a sampled configuration cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from torch import nn

from sweeplab.errors import ConfigError
from sweeplab.models import layers
from sweeplab.models.shapes import LayerSpec, ShapeRow, trace
from sweeplab.registry import Registry


@dataclass
class ModelConfig:
    """Keys every model has."""

    name: str = "mlp"
    activation: str = "relu"  # identity | sigmoid | tanh | relu | leaky_relu | elu | gelu | silu | softplus
    pooling: str = "max"  # max | avg | min (models that pool)
    weight_init: str = "default"  # default (PyTorch's) | normal (N(0, weight_init_std)) | xavier | he
    weight_init_std: float = 0.01


Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    schema: type
    build: Callable[[Any, Shape, int], nn.Module]
    plan: Optional[Callable[[Any, Shape], Sequence[LayerSpec]]]  # None: no spatial layers
    description: str


MODELS: Registry[ModelEntry] = Registry("model", "model")


def register_model(name: str, schema: type, description: str, plan=None):
    """Decorator for ``build(cfg, input_shape, num_classes) -> nn.Module``."""

    def wrap(build):
        MODELS.register(name, ModelEntry(name, schema, build, plan, description))
        return build

    return wrap


def _typed(cfg: Any, schema: type) -> Any:
    """A plain dataclass instance from a DictConfig / dict / dataclass config."""
    if isinstance(cfg, schema):
        return cfg
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"model {data.get('name')!r} has no key {unknown[0]!r}; its keys are: {', '.join(sorted(known))}"
        )
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))


def check_architecture(cfg: Any, input_shape: Shape) -> list[ShapeRow]:
    """Every layer's input and output size; ArchitectureError names an impossible layer."""
    entry = MODELS.get(cfg["name"] if not hasattr(cfg, "name") else cfg.name)
    typed = _typed(cfg, entry.schema)
    layers.ACTIVATIONS.get(typed.activation)
    layers.POOLINGS.get(typed.pooling)
    if entry.plan is None:
        return []
    return trace(entry.plan(typed, input_shape), tuple(input_shape), entry.name)


def build_model(cfg: Any, input_shape: Shape, num_classes: int) -> nn.Module:
    entry = MODELS.get(cfg["name"] if not hasattr(cfg, "name") else cfg.name)
    typed = _typed(cfg, entry.schema)
    check_architecture(typed, input_shape)
    model = entry.build(typed, tuple(input_shape), num_classes)
    layers.init_weights(model, typed.weight_init, typed.weight_init_std)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
