"""Building blocks of typed configs, shared by every layer: closed sets of names (``Choice``),
range errors, and dataclass instances from OmegaConf nodes (``typed``).

A leaf (imports nothing of sweeplab but errors), so the config schemas, the model schemas
beside their models, and training can all use it without an import cycle.
"""
from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeplab.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

# (schema, a node's content) -> its instance: a trial types the same groups several times (its checks, its
# training, its model's summary), and OmegaConf's typing costs milliseconds each (docs/performance.md)
_TYPED: dict[tuple[type, str], Any] = {}
_TYPED_KEPT = 256


class Choice(StrEnum):
    """A closed set of names for a schema field. Hydra rejects any other value and lists these;
    members equal their plain names (``Loss.mse == "mse"``) and print as them."""


def out_of_range(key: str, value: Any, want: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is out of range: it must be {want}")


def no_such_key(where: str, key: str, known: Collection[str]) -> str:
    """The message for a ``key`` that the config node at ``where`` (``""``: the top level) does not have."""
    return f"{where or 'the config'} has no key {key!r} ({f'{where}.{key}' if where else key}); {its_keys(key, known)}"


def its_keys(key: str, known: Collection[str]) -> str:
    """The keys a node has, and the one nearest to the ``key`` it does not have."""
    return f"its keys are: {', '.join(sorted(known))}{did_you_mean(key, known)}"


def plain(node: DictConfig | Mapping[str, Any], enum_to_str: bool = False) -> dict[str, Any]:
    """``node`` as a plain dict with interpolations resolved; ``enum_to_str`` turns Enum values into their names."""
    if isinstance(node, DictConfig):  # to_container of a DictConfig is a dict; OmegaConf types it as any container
        return cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True, enum_to_str=enum_to_str))
    return dict(node)


def typed(node: Any, schema: type[T], where: str | None = None) -> T:
    """``node`` (a DictConfig, a dict or already a ``schema``) as a ``schema`` instance.
    ``where`` names the config key in errors, e.g. ``model`` or ``train``."""
    if isinstance(node, schema):
        return node
    data = plain(node)
    content = (schema, repr(data))
    if content in _TYPED:
        return cast(T, copy.deepcopy(_TYPED[content]))  # a copy: callers may change theirs
    where = where or schema.__name__
    known = {f.name for f in fields(schema)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(no_such_key(where, unknown[0], known))
    try:  # to_object of a structured config is an instance of its schema
        instance = cast(T, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data)))
    except OmegaConfBaseException as err:  # a wrong type or an unknown Enum name: one line, with the key
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{where}.{key}: {str(err).splitlines()[0]}" if key else f"{where}: {err}") from None
    if len(_TYPED) >= _TYPED_KEPT:
        del _TYPED[next(iter(_TYPED))]  # the oldest
    _TYPED[content] = instance
    return copy.deepcopy(instance)
