"""Building blocks of typed configs, shared by every layer: closed sets of names (``Choice``),
range errors, and dataclass instances from OmegaConf nodes (``typed``).

A leaf (imports nothing of sweeplab but errors), so the config schemas, the model schemas
beside their models, and training can all use it without an import cycle.
"""
from __future__ import annotations

from dataclasses import fields
from enum import StrEnum
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeplab.errors import ConfigError

T = TypeVar("T")


class Choice(StrEnum):
    """A closed set of names for a schema field. Hydra rejects any other value and lists these;
    members equal their plain names (``Loss.mse == "mse"``) and print as them."""


def out_of_range(key: str, value: Any, want: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is out of range: it must be {want}")


def typed(node: Any, schema: type[T], where: str | None = None) -> T:
    """``node`` (a DictConfig, a dict or already a ``schema``) as a ``schema`` instance.
    ``where`` names the config key in errors, e.g. ``model`` or ``train``."""
    if isinstance(node, schema):
        return node
    where = where or schema.__name__
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} has no key {unknown[0]!r} ({where}.{unknown[0]}); its keys are: {', '.join(sorted(known))}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except OmegaConfBaseException as err:  # a wrong type or an unknown Enum name: one line, with the key
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{where}.{key}: {str(err).splitlines()[0]}" if key else f"{where}: {err}") from None
