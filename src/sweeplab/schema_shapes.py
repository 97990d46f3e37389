"""The shape a schema's key takes (a mapping, a list, a single value), read from the dataclasses in
sweeplab.config.schema, and the first value of a config that does not fit it: what compose's one-line errors say
("sweep.scheduler must be a mapping like {kind: asha}, not asha"), with an example made from the schema."""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import yaml
from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from sweeplab.config import schema
from sweeplab.models import MODELS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def omegaconf_error(err: BaseException) -> OmegaConfBaseException | None:
    """The OmegaConf error under Hydra's, with the key it was placing (``full_key``) and its schema."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None) is not None:
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


# keys whose schema type says too little to make a good example from
EXAMPLES: dict[str, Any] = {
    "sweep.space": {"optimizer.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}},
    "sweep.objectives": [{"metric": "val/acc", "mode": "max"}, {"metric": "params", "mode": "min"}],
}


ABSENT = object()
_PART = re.compile(r"[^.\[\]]+|\[(\d+)\]")


def key_parts(path: str) -> list[str | int]:
    """``sweep.objectives[0].metric`` -> ['sweep', 'objectives', 0, 'metric']"""
    return [int(m.group(1)) if m.group(1) is not None else m.group(0) for m in _PART.finditer(path)]


def joined_key(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def nested_at(key: str, value: Any) -> Any:
    """``value`` placed at the dotted ``key`` of an empty config: ('sweep.seeds', 3) -> {'sweep': {'seeds': 3}}."""
    for part in reversed([p for p in key.split(".") if p]):
        value = {part: value}
    return value


def file_data(file: Path, name: str, text: str | None) -> Any:
    """A config file's YAML placed where Hydra merges it: its ``# @package``, else its group (the sweep file and
    config.yaml: the top level)."""
    text = file.read_text() if text is None else text
    data = yaml.safe_load(text)
    header = re.match(r"(?:[ \t]*(?:#[^\n]*)?\n)*?[ \t]*#\s*@package\s+(\S+)", text)
    group = name.rpartition("/")[0]
    package = header.group(1) if header else group
    package = package.replace("_group_", group)
    return data if package in ("", "_global_") else nested_at(package.replace("/", "."), data)


def value_at(data: Any, path: str) -> Any:
    """The value at ``path`` in plain YAML data (``ABSENT`` where there is none)."""
    for part in key_parts(path):
        items = data if isinstance(data, dict) else dict(enumerate(data)) if isinstance(data, list) else {}
        if part not in items:
            return ABSENT
        data = items[part]
    return data


def hints_of(schema_type: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(schema_type)
    except Exception:  # a hint that does not evaluate: no shape to check against
        return {}


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def is_optional(typed_as: Any) -> bool:
    return typing.get_origin(typed_as) in (typing.Union, types.UnionType) and type(None) in typing.get_args(typed_as)


def without_none(typed_as: Any) -> Any:
    """``X | None`` -> ``X``"""
    if is_optional(typed_as):
        rest = [a for a in typing.get_args(typed_as) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Any
    return typed_as


def list_item_type(typed_as: Any) -> Any | None:
    """The item type of a ``list[X]`` (Any for a bare list); None for any other type."""
    bare = without_none(typed_as)
    if bare is list or typing.get_origin(bare) is list:
        args = typing.get_args(bare)
        return args[0] if args else Any
    return None


def is_schema(typed_as: Any) -> TypeGuard[type[DataclassInstance]]:
    return isinstance(typed_as, type) and dataclasses.is_dataclass(typed_as)


def typed_key(oc: OmegaConfBaseException) -> tuple[str, Any, Any]:
    """(the key, its schema type, its default) that OmegaConf was placing a value at: a list's item counts as its
    list (``sweep.objectives[0]`` -> ``sweep.objectives``); the top level where it merged a whole file."""
    parts = key_parts(str(oc.full_key or ""))
    owner, key, ref = (getattr(oc, name, None) for name in ("object_type", "key", "ref_type"))
    if parts and isinstance(parts[-1], int):
        if list_item_type(ref) is not None:
            return functools.reduce(joined_key, parts[:-1], ""), ref, MISSING
        parts = parts[:-1]
    elif parts and is_schema(owner) and key == parts[-1]:  # the schema it was placing the key in (a model's too)
        fields = {f.name: f for f in dataclasses.fields(owner)}
        if key in fields:
            return str(oc.full_key), hints_of(owner).get(key, Any), field_default(fields[key])
    typed_as: Any = schema.Config
    default: Any = MISSING
    path = ""
    for part in parts:  # from the top: the schema's type of each key on the way
        bare = without_none(typed_as)
        if isinstance(part, int) and list_item_type(bare) is not None:
            typed_as, default = list_item_type(bare), MISSING
        elif isinstance(part, str) and is_schema(bare):
            fields = {f.name: f for f in dataclasses.fields(bare)}
            if part not in fields:
                return path, None, MISSING
            typed_as, default = hints_of(bare).get(part, Any), field_default(fields[part])
        else:
            return path, None, MISSING
        path = joined_key(path, part)
    return path, typed_as, default


def shape_of(typed_as: Any, default: Any) -> str | None:
    """The shape a key of this type holds: 'mapping', 'list' or 'value'; None where the type does not say (Any)."""
    bare = without_none(typed_as)
    if bare is Any or bare is object:
        return "mapping" if isinstance(default, dict) else "list" if isinstance(default, list) else None
    if is_schema(bare) or bare is dict or typing.get_origin(bare) is dict:
        return "mapping"
    if list_item_type(bare) is not None:
        return "list"
    return "value" if isinstance(bare, type) else None


def value_shape(value: Any) -> str | None:
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    if value is None or (isinstance(value, str) and "${" in value):  # null, an interpolation: any shape
        return None
    return "value"


def first_misfit(value: Any, typed_as: Any, default: Any, path: str) -> tuple[str, Any, Any, Any] | None:
    """The first key under ``path`` whose ``value`` has another shape than its schema type, or is a single value
    its number type does not take (``_number_fits``): (key, type, default, value); a list's item of another shape
    names its list, an item its number type does not take names itself."""
    want, got = shape_of(typed_as, default), value_shape(value)
    bare = without_none(typed_as)
    if want and got and (want != got or (got == "value" and not _number_fits(value, bare))):
        return path, typed_as, default, value
    if got == "mapping" and is_schema(bare):
        fields = {f.name: f for f in dataclasses.fields(bare)}
        hints = hints_of(bare)
        for key, item in value.items():
            if key not in fields:
                continue
            item_type = hints.get(key, Any)
            if bare is schema.Config and key == "model":  # typed by the chosen model's schema
                item_type = model_schema(item)
            found = first_misfit(item, item_type, field_default(fields[key]), joined_key(path, key))
            if found is not None:
                return found
    elif got == "list" and list_item_type(bare) is not None:
        for index, item in enumerate(value):
            found = first_misfit(item, list_item_type(bare), MISSING, joined_key(path, index))
            if found is not None:
                number = value_shape(item) == "value" == shape_of(found[1], found[2])  # a value of the right shape
                return (path, typed_as, default, value) if found[0] == joined_key(path, index) and not number else found
    return None


def _number_fits(value: Any, bare: Any) -> bool:
    """Whether OmegaConf takes ``value`` for an int or float key (a number, or a string that reads as one; never a
    bool, nor a float for an int); keys of other types are left to OmegaConf."""
    if bare not in (int, float):
        return True
    if isinstance(value, str):
        try:
            bare(value)
        except ValueError:
            return False
        return True
    return not isinstance(value, bool) and (isinstance(value, int) or (bare is float and isinstance(value, float)))


def model_schema(model: Any) -> Any:
    name = model.get("name") if isinstance(model, dict) else None
    return MODELS.get(name).schema if isinstance(name, str) and name in MODELS.names() else Any


def described(typed_as: Any, default: Any, path: str) -> str:
    """The shape of a key, with an example: 'a mapping like {kind: asha}', 'a list like [0, 1, 2]'."""
    shape = shape_of(typed_as, default)
    example = flow_text(example_of(typed_as, default, path))
    if shape == "mapping":
        return f"a mapping like {example}"
    if shape == "list":
        item = without_none(list_item_type(typed_as))
        kind = "a list of mappings" if is_schema(item) else "a list of lists" if list_item_type(item) else "a list"
        return f"{kind} like {example}"
    bare = without_none(typed_as)
    if isinstance(bare, type) and issubclass(bare, enum.Enum):
        return f"one of {', '.join(str(m.value) for m in bare)}"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(bare, "a single value")


def example_of(typed_as: Any, default: Any, path: str | None = None) -> Any:
    """A value of ``typed_as``, made from the schema: its default where that shows the shape."""
    if path in EXAMPLES:
        return EXAMPLES[path]
    bare = without_none(typed_as)
    if is_schema(bare):
        fields = dataclasses.fields(bare)
        hints = hints_of(bare)
        mandatory = [f for f in fields if field_default(f) is MISSING]
        return {f.name: example_of(hints.get(f.name, Any), field_default(f)) for f in (mandatory or fields[:1])}
    item = list_item_type(bare)
    if item is not None:
        if isinstance(default, list) and len(default) >= 2:
            return plain_value(default)
        item_bare = without_none(item)
        if item_bare is int:
            return [0, 1, 2]
        if item_bare is float:
            return [0.1, 0.2]
        if is_schema(item_bare) or list_item_type(item_bare) is not None:
            return [example_of(item, MISSING)]
        return plain_value(default) if isinstance(default, list) and default else ["a", "b"]
    if default is not MISSING and default is not None:
        return plain_value(default)
    if isinstance(bare, type) and issubclass(bare, enum.Enum):
        return next(iter(bare)).value
    return {int: 1, float: 0.1, bool: True}.get(bare, "...")


def plain_value(value: Any) -> Any:
    """Enum members as their values, recursively: what YAML shows."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    return value


def flow_text(value: Any, width: int = 80) -> str:
    """``value`` in YAML's flow style, on one line: {kind: asha}, [0, 1, 2], asha."""
    text = yaml.safe_dump(plain_value(value), default_flow_style=True, width=10**6, sort_keys=False).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= width else text[:width - 3] + "..."


def override_value(value: Any) -> str:
    """A value as typed after key= on a command line, in Hydra's override grammar (null, true, [0.9,0.999],
    [{metric:val/acc,mode:max}]: a mapping's keys unquoted, the strings in a list or mapping quoted)."""
    value = plain_value(value)
    if isinstance(value, list):
        return "[" + ",".join(_inner_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_inner_value(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


_KEYWORDS = ("true", "false", "null", "nan", "inf")  # what Hydra reads unquoted as other than a string


def _inner_value(value: Any) -> str:
    """An item of a list or mapping: a string quoted unless Hydra reads it back as that string unquoted."""
    if not isinstance(value, str):
        return override_value(value)
    bare = re.fullmatch(r"[A-Za-z_][\w./-]*", value, re.ASCII) and value.lower() not in _KEYWORDS
    return value if bare else json.dumps(value, ensure_ascii=False)
