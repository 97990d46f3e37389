"""Compose a run's config with Hydra: the schemas (sweeplab.config) and conf/ plus overrides, optionally a sweep file.

Every Hydra/OmegaConf failure becomes a ConfigError that names the key, the
override or file it came from, and what would be right.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigTypeError, OmegaConfBaseException, ValidationError

from sweeplab.config import schema
from sweeplab.errors import ConfigError, did_you_mean
from sweeplab.models import MODELS
from sweeplab.program import program
from sweeplab.redact import redact
from sweeplab.schema_shapes import (
    ABSENT,
    described,
    field_default,
    file_data,
    first_misfit,
    flow_text,
    hints_of,
    is_optional,
    is_schema,
    joined_key,
    list_item_type,
    nested_at,
    omegaconf_error,
    override_value,
    typed_key,
    value_at,
)
from sweeplab.structured import its_keys, no_such_key, plain

_registered = False


def register_configs() -> None:
    """Every schema in Hydra's ConfigStore (model schemas live beside their models); conf/ extends them."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=schema.Config)
    for name in MODELS.names():
        cs.store(group="model", name=f"{name}_schema", node=MODELS.get(name).schema)
    cs.store(group="optimizer", name="optimizer_schema", node=schema.OptimizerConfig)
    cs.store(group="data", name="data_schema", node=schema.DataConfig)
    cs.store(group="train", name="train_schema", node=schema.TrainConfig)
    cs.store(group="sweep", name="sweep_schema", node=schema.SweepConfig)
    cs.store(group="tracking", name="tracking_schema", node=schema.TrackingConfig)
    cs.store(group="cluster", name="cluster_schema", node=schema.ClusterConfig)
    _registered = True


def project_root() -> Path:
    """The folder holding conf/ and sweeps/: $SWEEPLAB_HOME, the source checkout, or the cwd."""
    if env := os.environ.get("SWEEPLAB_HOME"):
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parents[2]  # src/sweeplab/compose.py -> the checkout
    if (checkout / "conf" / "config.yaml").exists():
        return checkout
    return Path.cwd()


def conf_dir() -> Path:
    path = project_root() / "conf"
    if not (path / "config.yaml").exists():
        raise ConfigError(f"no conf/config.yaml under {path.parent}; set SWEEPLAB_HOME to the sweeplab checkout")
    return path


def sweeps_dir() -> Path:
    return project_root() / "sweeps"


def names_a_file(ref: str) -> bool:
    """Whether a sweep reference is a path to a YAML file rather than a sweep's name (or id)."""
    return Path(ref).suffix in (".yaml", ".yml") or os.sep in ref


def resolve_sweep_file(ref: str) -> Path:
    """A sweep by name (sweeps/<name>.yaml) or by path to a YAML file."""
    path = Path(ref)
    if names_a_file(ref):
        if not path.is_file():
            raise ConfigError(f"sweep file {ref!r} does not exist")
        path = path.resolve()
    else:
        path = sweeps_dir() / f"{ref}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in sweeps_dir().glob("*.yaml"))
            raise ConfigError(f"unknown sweep {ref!r}{did_you_mean(ref, known) or '.'} Known sweeps in {sweeps_dir()}: "
                              f"{', '.join(known)}; or give a path to a .yaml file")
    check_sweep_text(path, read_sweep_text(path))
    return path


_GLOBAL_PACKAGE = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\n)*?[ \t]*#\s*@package\s+_global_\b")
_SWEEP_FILE_SHAPE = ("a YAML file that starts with '# @package _global_' and has a sweep: block "
                     "with a space (see sweeps/smoke.yaml)")


def read_sweep_text(path: Path) -> str:
    """A sweep file's text: UTF-8, as YAML and Hydra read it."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"sweep file {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
                          "save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"cannot read sweep file {path}: {err.strerror}") from None


def _invalid_yaml(err: yaml.YAMLError, path: Path) -> str:
    where = getattr(err, "problem_mark", None)
    return (f"invalid YAML{f' at line {where.line + 1}' if where else ''}: "
            f"{getattr(err, 'problem', None) or err} (in {path})")


def check_sweep_text(path: Path, text: str) -> None:
    """The shape Hydra needs to compose a file as a sweep, checked first so that a wrong file (an empty one,
    /etc/passwd) is named as such rather than as a key Hydra could not place."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(_invalid_yaml(err, path)) from None
    if not isinstance(data, dict) or not data:
        what = "empty" if data is None else f"a YAML {type(data).__name__}, not a mapping"
        raise ConfigError(f"sweep file {path} is {what}; a sweep file is {_SWEEP_FILE_SHAPE}")
    if not _GLOBAL_PACKAGE.match(text):
        raise ConfigError(f"sweep file {path} does not start with '# @package _global_'; a sweep file is "
                          f"{_SWEEP_FILE_SHAPE}")
    if not isinstance(data.get("sweep"), dict):
        raise ConfigError(f"sweep file {path} has no sweep: block; a sweep file is {_SWEEP_FILE_SHAPE}")


def compose(overrides: Sequence[str] = (), sweep_file: Path | None = None,
            sweep_text: str | None = None, resolve: bool = True) -> DictConfig:
    """The resolved config for ``overrides`` (Hydra syntax), on top of a sweep file if given.
    ``sweep_text`` stands in for the file's content where the file is not (a cluster worker).
    ``resolve=False``: its interpolations left for later (checked on a resolved copy)."""
    return compose_with_choices(overrides, sweep_file, sweep_text, resolve)[0]


def compose_with_choices(overrides: Sequence[str] = (), sweep_file: Path | None = None,
                         sweep_text: str | None = None, resolve: bool = True) -> tuple[DictConfig, dict]:
    """The config and the option picked in every group, e.g. {'model': 'vgg16', ...}."""
    register_configs()
    overrides = given = list(overrides)
    _refuse_hydra_keys(overrides)
    overrides = _group_choices(overrides)
    if sweep_file is not None:
        # A sweep file is an option of a config group (package _global_): staged under a fixed group
        # name, so any folder name or path works.
        staged = _stage(sweep_file, sweep_text)
        overrides = [f"hydra.searchpath=[file://{staged.parent.parent}]", f"+{SWEEP_GROUP}={staged.stem}", *overrides]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
        with open_dict(cfg):
            del cfg["hydra"]
        _check_keys(cfg, overrides)
        resolved = cfg if resolve else copy.deepcopy(cfg)
        OmegaConf.resolve(resolved)
        _check_complete(resolved, overrides)
        _check_shapes(resolved, given, sweep_file)
    except MissingConfigException as err:
        raise ConfigError(_missing_option(err, given, sweep_file)) from None
    except OverrideParseException as err:
        raise ConfigError(f"cannot parse the override {err.override!r}: quote a value holding spaces, commas, "
                          "quotes or non-ASCII letters for Hydra, e.g. \"output_dir='/data/mes données'\"") from None
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err, sweep_file, given, sweep_text)) from None
    except yaml.YAMLError as err:
        raise ConfigError(_invalid_yaml(err, sweep_file or conf_dir())) from None
    except (TypeError, OverflowError) as err:  # OmegaConf's own failures, which Hydra passes on unwrapped
        raise ConfigError(_unmerged(err, given, sweep_file, sweep_text)) from None
    if sweep_file is not None and cfg.sweep.name == "sweep":
        cfg.sweep.name = sweep_file.stem
    return cfg, choices


SWEEP_GROUP = "sweeplab_sweep_file"
RUN_DIR_KEY = "hydra.run.dir"  # the one hydra.* key sweeplab honours: the run folder of `sweeplab train`


def override_key(text: str) -> str:
    """The key an override sets, adds or removes: ``+optimizer.lr=0.1`` -> ``optimizer.lr``."""
    return text.split("=", 1)[0].lstrip("+~")


def _refuse_hydra_keys(overrides: Sequence[str]) -> None:
    """Hydra's own settings (hydra.job.chdir, hydra.sweeper...) do nothing under the compose API: say so
    instead of ignoring them."""
    for text in overrides:
        key = override_key(text)
        if key == "hydra" or key.startswith("hydra."):
            raise ConfigError(f"{key} is a Hydra setting that sweeplab does not use ({text}); the one it honours is "
                              f"{RUN_DIR_KEY}=<folder>, the run folder of 'sweeplab train'. Remove {key}=...")


def is_config_group(key: str) -> bool:
    """Whether ``key`` names a config group (model, optimizer, ...): a folder of options under conf/."""
    return key.isidentifier() and (conf_dir() / key).is_dir()


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files under conf/<group>. (The schemas Hydra also lists as options,
    model/lenet_schema say, are register_configs' ConfigStore nodes, which the group's files extend.)"""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _group_choices(overrides: Sequence[str]) -> list[str]:
    """The overrides, each config group's (model=, optimizer=...) naming one of its options: Hydra's list of one
    option (model=[mlp]) becomes that option, which Hydra then records as the group's choice. Hydra would merge a
    list of several options into one node, which a group typed by its option's schema cannot hold; it fails with a
    traceback on a number or null (train=1, model=null); and for several options separated by commas its message
    speaks of its own --multirun."""
    named = []
    for text in overrides:
        named.append(text)
        if not is_config_group(override_key(text)) or text.startswith("~"):
            continue
        try:
            (parsed,) = OverridesParser.create().parse_overrides([text])
        except HydraException:
            continue  # compose names the mistake
        group, value = parsed.key_or_group, parsed.value()
        blank = isinstance(value, str) and not value.strip()  # model= , model='' (a script's unset $MODEL)
        if parsed.package is not None or not is_config_group(group) or (isinstance(value, str | dict) and not blank):
            continue  # a dict: keys merged into the group's node (model={activation:tanh})
        if parsed.is_sweep_override() and not (isinstance(value, ChoiceSweep) and len(value.list) > 1):
            continue  # glob(), range(), interval(), choice(one): Hydra's "requires --multirun" says it
        picked = value.list if isinstance(value, ChoiceSweep) else value
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            named[-1] = f"{text.split('=', 1)[0]}={value[0]}"
            continue
        names = [v for v in picked if isinstance(v, str)] if isinstance(picked, list) else []
        if len(names) > 1 and isinstance(picked, list) and len(names) == len(picked):
            if group not in schema.TRIAL_GROUPS:  # tracking, cluster, sweep: one for all of a sweep's trials
                raise ConfigError(f"{text} picks several options of the config group {group}, which takes one, "
                                  f"shared by all of a sweep's trials: pick one of them, e.g. {group}={names[0]}")
            raise ConfigError(
                f"{text} picks several options of the config group {group}, which takes one: train each with "
                f"'sweeplab train -m {group}={','.join(names)}', or search them in a sweep file's space "
                f"({group}: {{type: categorical, choices: [{', '.join(names)}]}})")
        raise ConfigError(f"{text}: {group} is a config group; give it the name of one of its options: "
                          f"{', '.join(group_options(group))}")
    return named


def _check_keys(node: Any, overrides: Sequence[str], where: str = "") -> None:
    """A node typed by a schema has the schema's keys, all of them: Hydra's ``+key=value`` (and ``++``) adds a key
    to any node, typed or not, and the key would be ignored; ``~output_dir`` deletes one. Untyped nodes
    (sweep.space, a sampler's arguments) take any key."""
    if not isinstance(node, DictConfig | ListConfig) or node._is_none() or node._is_missing() \
            or node._is_interpolation():
        return
    if isinstance(node, ListConfig):
        for index in range(len(node)):
            _check_keys(node._get_node(index), overrides, f"{where}[{index}]")
        return
    schema_type = OmegaConf.get_type(node)
    if is_schema(schema_type):
        known = [f.name for f in dataclasses.fields(schema_type)]
        present = list(node)  # not `key in node`, false for a key without a value (???): _check_complete names it
        if unknown := [key for key in present if key not in known]:
            raise ConfigError(no_such_key(where, str(unknown[0]), known))
        if deleted := [key for key in known if key not in present]:
            raise ConfigError(_cannot_delete(joined_key(where, deleted[0]), schema_type, overrides))
    for key in node:
        _check_keys(node._get_node(key), overrides, joined_key(where, str(key)))


def _check_complete(cfg: DictConfig, overrides: list[str]) -> None:
    """Every mandatory value is set: a group removed with ~model is named, not a traceback later."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        removed = [o for o in overrides if o.split("=")[0] in (f"~{key}", f"~{key.split('.')[0]}")]
        cause = f" ({removed[0]} removed it)" if removed else ""
        hint = f"choose one with {key}=<option>" if "." not in key else f"set {key}=<value>"
        raise ConfigError(f"{key} has no value{cause}; {hint}")


def _check_shapes(cfg: DictConfig, overrides: Sequence[str], sweep_file: Path | None) -> None:
    """Every key's value has its schema's shape. OmegaConf checks a value it assigns, but not the items of a list
    it merges into a typed list: ``model.fc_sizes=[[1]]`` composed, and failed inside torch. The value came from
    the override that sets the key, a key within it or a key above it (not a config group's choice), else from
    the sweep file."""
    found = first_misfit(plain(cfg), schema.Config, MISSING, "")
    if found is None:
        return
    path, typed_as, default, value = found

    def sets(text: str) -> bool:
        key = override_key(text)
        if key == path or key.startswith((f"{path}.", f"{path}[")):
            return True
        if not path.startswith((f"{key}.", f"{key}[")):
            return False
        if not is_config_group(key):  # a key above it
            return True
        # a group's mapping (model={...}) sets the keys it holds in the group's node; a group's choice sets none
        try:
            value = OverridesParser.create().parse_override(text).value()
        except HydraException:
            return False
        return isinstance(value, dict) and value_at({key: plain(value)}, path) is not ABSENT

    given = [o for o in overrides if sets(o)]
    where = f" ({redact(given[-1])})" if given else f" (in {sweep_file})" if sweep_file is not None else ""
    raise ConfigError(f"{path} must be {described(typed_as, default, path)}, not {flow_text(value)}{where}")


def _stage(sweep_file: Path, text: str | None = None) -> Path:
    """A copy of the sweep file at <tmp>/<digest>/sweeplab_sweep_file/sweep.yaml (same content, same copy)."""
    text = read_sweep_text(sweep_file) if text is None else text
    digest = hashlib.sha1(f"{sweep_file}\n{text}".encode()).hexdigest()[:16]
    staged = Path(tempfile.gettempdir()) / "sweeplab-sweeps" / digest / SWEEP_GROUP / "sweep.yaml"
    if not staged.exists():
        staged.parent.mkdir(parents=True, exist_ok=True)
        tmp = staged.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(staged)
    return staged


def _missing_option(err: MissingConfigException, given: list[str], sweep_file: Path | None) -> str:
    """An option a config group does not have, named where it was picked: the override as typed, else the sweep
    file's defaults list."""
    text = str(err)
    match = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if not match:
        return text.split("\nConfig search path")[0]
    group, option = match.groups()
    options = group_options(group)
    # the override that named it (model=lenet5, model=[lenet5]; not a mapping of keys, model={...}), else the file
    typed_as = [o for o in given if override_key(o) == group and o.split("=", 1)[-1].strip("[] ") == option]
    where = redact(typed_as[-1]) if typed_as else f"in {sweep_file}" if sweep_file is not None else f"{group}={option}"
    return (f"unknown {group} {option!r} ({where}). Available {group} options: {', '.join(options)}"
            f"{did_you_mean(option, options)}")


def _explain(err: Exception, sweep_file: Path | None, overrides: Sequence[str] = (),
             sweep_text: str | None = None) -> str:
    deleted = _undeletable(err, overrides, sweep_file, sweep_text)
    if deleted is not None:
        return deleted
    past = _past_the_end(err, overrides, sweep_file, sweep_text)
    if past is not None:
        return past
    null = _null_not_taken(err, sweep_file)
    if null is not None:
        return null
    shape = _wrong_shape(err, sweep_file, sweep_text, overrides)
    if shape is not None:
        return shape
    text = str(err) + ("\n" + str(err.__cause__) if err.__cause__ else "")
    key = re.search(r"full_key: (\S+)", text)
    skip = ("reference_type", "object_type", "full_key", "To append")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip)]
    lines = [re.sub(r"\w+Error raised while composing config:", "", line).strip() for line in lines]
    msg = " ".join(dict.fromkeys(line for line in lines if line))
    source = re.search(r"In '([^']+)'", msg)
    if source:  # Hydra names the config as group/option: point at the file instead
        file = _source_file(source.group(1), sweep_file)
        msg = msg.replace(source.group(0) + ":", "").strip() + f" (in {file}"
        msg += f", key {key.group(1)})" if key else ")"
    elif key:
        msg += f" (key {key.group(1)})"
    unknown = _unknown_key(err)
    if unknown is not None and not source:  # an override: the message typing gives for the same mistake
        return no_such_key(*unknown)
    if unknown is not None:
        msg += f"; {its_keys(*unknown[1:])}"
    elif "not in" in msg:
        msg += f". Check the spelling; '{program()} models' and conf/ list the valid keys."
    return msg


def _past_the_end(err: Exception, overrides: Sequence[str], sweep_file: Path | None,
                  sweep_text: str | None) -> str | None:
    """``model.hidden_sizes.5=3``: an item beyond its list's end (Hydra: "list index out of range"): how many items
    the list has, and the whole list to set instead, the value appended."""
    match = re.fullmatch(r"Error merging override ([^=]+)=(.*)", str(err))
    if match is None or not str(err.__cause__).startswith("list index out of range"):
        return None
    given, override = match.group(1), match.group(0).removeprefix("Error merging override ")
    where, _, index = given.lstrip("+").rpartition(".")
    others = [o for o in overrides if o.split("=", 1)[0] != given]
    try:
        value = OverridesParser.create().parse_override(override).value()
    except (OmegaConfBaseException, HydraException):
        return None
    # the list as the other overrides leave it, else without any other item set by its index (one past its end too)
    for kept in (others, [o for o in others if not re.search(r"\.\d+$", override_key(o))]):
        try:
            cfg = compose_with_choices(kept, sweep_file, sweep_text)[0]
            break
        except ConfigError:
            continue
    else:
        return None
    items = OmegaConf.select(cfg, where)
    if not isinstance(items, ListConfig) or not index.isdigit():
        return None
    base = re.sub(r"(\.\d+)+$", "", where)  # the list's key in its schema (model.stages for model.stages.0)
    listed_at, list_type = _item_within(base, _key_type(base, kept, sweep_file, sweep_text)[0], where) or ("", None)
    item_type = list_item_type(list_type) if list_type is not None else None
    misfit = None if item_type is None else first_misfit(value, item_type, MISSING, joined_key(listed_at, int(index)))
    if misfit is not None:  # what the item would be refused for once the list were long enough
        path, item_type, _, wrong = misfit
        return f"{path} must be {described(item_type, MISSING, path)}, not {flow_text(wrong)} ({redact(override)})"
    whole = [*cast(list, OmegaConf.to_container(items, resolve=True)), value]
    counted = f"{len(items)} item{'' if len(items) == 1 else 's'}"
    return (f"{where} has {counted}, so no item {index} ({redact(override)}); to give it more, set the whole list, "
            f"e.g. {where}={override_value(whole)}")


def _null_not_taken(err: Exception, sweep_file: Path | None) -> str | None:
    """``train.epochs=null``, ``sweep.seeds=[0,null]``: null where the schema takes none (OmegaConf: "field ... is
    not Optional", "NoneType is not a subclass of int"): the key, or the list's item, and what it takes."""
    oc = omegaconf_error(err)
    text = str(err) + "\n" + str(err.__cause__ or "")
    said = r"(?i)is not optional|NoneType is not a subclass|Incompatible value 'None'"
    if oc is None or not oc.full_key or not re.search(said, text):
        return None
    path, typed_as, default = typed_key(oc)  # a list's item counts as its list there
    at, item_type = _item_within(path, typed_as, re.sub(r"\[(\d+)\]", r".\1", str(oc.full_key))) or ("", None)
    if item_type is None:
        return None
    override = re.match(r"Error merging override (.+)", str(err))
    where = f" ({redact(override.group(1))})" if override else f" (in {sweep_file})" if sweep_file else ""
    return f"{at} cannot be null: it must be {described(item_type, default if at == path else MISSING, at)}{where}"


def _unmerged(err: Exception, overrides: Sequence[str], sweep_file: Path | None, sweep_text: str | None) -> str:
    """An override that OmegaConf fails on outside its own errors: an item removed from a list
    (``~model.hidden_sizes.1``: a TypeError), a whole number too large for a float key (an OverflowError)."""
    for override in overrides:
        key, value = override_key(override), override.partition("=")[2]
        where, _, index = key.rpartition(".")
        if override.startswith("~") and index.isdigit():
            try:
                items = OmegaConf.select(compose([o for o in overrides if o != override], sweep_file, sweep_text),
                                         where)
            except ConfigError:
                items = None
            rest = cast(list, OmegaConf.to_container(items, resolve=True)) if isinstance(items, ListConfig) else None
            instead = (f", e.g. {where}={override_value(rest[:int(index)] + rest[int(index) + 1:])}"
                       if rest is not None and int(index) < len(rest) else "")
            return (f"{redact(override)} would remove an item of a list, which an override cannot do; set the whole "
                    f"list without it{instead}")
        if isinstance(err, OverflowError) and re.fullmatch(r"[+-]?\d[\d_]*", value) and \
                abs(int(value)) > sys.float_info.max:
            return f"{key}={value[:12]}... ({len(value)} digits) is too large for a number: at most about 1.8e308"
    return f"the overrides cannot be applied ({err}): {' '.join(redact(o) for o in overrides)}"


def _unknown_key(err: Exception) -> tuple[str, str, list[str]] | None:
    """(where, key, the keys there) for a key that its schema does not have, as OmegaConf names it."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, KeyError | AttributeError):  # Hydra wraps OmegaConf's error
        cause = cause.__cause__ or cause.__context__
    schema_type = getattr(cause, "object_type", None)
    full_key = getattr(cause, "full_key", None)
    if not (isinstance(schema_type, type) and dataclasses.is_dataclass(schema_type) and full_key):
        return None
    where, _, key = str(full_key).rpartition(".")
    return where, key, [f.name for f in dataclasses.fields(schema_type)]


def _source_file(name: str, sweep_file: Path | None) -> Path:
    """The file behind a config Hydra names as group/option ('optimizer/sgd', the staged sweep file)."""
    if sweep_file is not None and name == f"{SWEEP_GROUP}/sweep":
        return sweep_file
    return conf_dir() / f"{name}.yaml"


def _undeletable(err: Exception, overrides: Sequence[str], sweep_file: Path | None,
                 sweep_text: str | None) -> str | None:
    """``~data.subset``: a key of a schema is always in the config (Hydra says a key whose value is null "does not
    exist"): say so, and how to set it instead; a key the schema does not have, as an override of it is told."""
    text = str(err)
    match = re.search(r"Could not delete from config\. '([^']+)' does not exist", text)
    key = match.group(1) if match else None
    oc = omegaconf_error(err)
    if key is None and oc is not None and "does not support deletion" in str(oc):
        key = str(oc.full_key)
    if not key:
        return None
    kept = [o for o in overrides if not (o.startswith("~") and ("." in override_key(o) or override_key(o) == key))]
    try:  # the config without the deletions, to see the schema the key would be deleted from
        cfg = compose_with_choices(kept, sweep_file, sweep_text)[0]
    except ConfigError:
        return None
    where, _, last = key.rpartition(".")
    parent = cfg if not where else OmegaConf.select(cfg, where, default=None)
    schema_type = OmegaConf.get_type(parent) if isinstance(parent, DictConfig) else None
    if not is_schema(schema_type):
        return None  # an untyped node (sweep.space): Hydra's message is right
    known = [f.name for f in dataclasses.fields(schema_type)]
    return _cannot_delete(key, schema_type, overrides) if last in known else no_such_key(where, last, known)


def _cannot_delete(key: str, schema_type: type, overrides: Sequence[str]) -> str:
    """The message for ``~key``, where ``key`` is a field of ``schema_type``: how to set it instead."""
    where, _, last = key.rpartition(".")
    field = next(f for f in dataclasses.fields(schema_type) if f.name == last)
    default = field_default(field)
    if is_optional(hints_of(schema_type).get(last, Any)):
        instead = f"to unset it: {key}=null"
    elif default is not MISSING:
        instead = f"set it instead, e.g. {key}={override_value(default)} (its default)"
    else:
        instead = f"set it instead: {key}=<value>"
    given = next((o for o in overrides if o.startswith("~") and override_key(o) == key), f"~{key}")
    return (f"{key} is a key of the {where or 'top-level'} schema and cannot be deleted ({redact(given)}); "
            f"{instead}")


def _wrong_shape(err: Exception, sweep_file: Path | None, sweep_text: str | None,
                 overrides: Sequence[str] = ()) -> str | None:
    """A mapping where the schema has a list or a single value, or the other way round (``scheduler: asha``,
    ``seeds: 3``, ``space:`` as a YAML list): the key and the shape it takes, with an example. OmegaConf names
    the key (``full_key``) where it assigns a value, and no key where it merges a file onto the config: then the
    file's YAML is matched against the schema, key by key."""
    oc = omegaconf_error(err)
    if not isinstance(oc, ValidationError | ConfigTypeError):  # not a key it does not have, say
        return None
    text = str(err)
    override = re.match(r"Error merging override (.+)", text)
    source = re.search(r"In '([^']+)'", text)
    if override:
        try:
            parsed = OverridesParser.create().parse_override(override.group(1))
        except Exception:  # an override Hydra merged parses; if not, what Hydra said stands
            return None
        if parsed.is_sweep_override() or parsed.is_delete():
            return None
        data = nested_at(parsed.key_or_group, parsed.value())
        where = f"({redact(override.group(1))})"
        within = parsed.key_or_group
    elif source:
        file = _source_file(source.group(1), sweep_file)
        try:
            data = _model_named(file_data(file, source.group(1), sweep_text if file == sweep_file else None))
        except (OSError, yaml.YAMLError, ConfigError):
            return None
        where = f"(in {file})"
        within = ""
    else:
        return None
    path, typed_as, default = typed_key(oc)
    value: Any
    if (item := _item_within(path, typed_as, within)) is not None:  # an item set alone: model.stages.1.0=3
        default = default if item[0] == path else MISSING  # an item has no default of its own
        path, typed_as = item
        value = parsed.value()
    else:
        if within and (typed_as is None or not (path == within or path.startswith((f"{within}.", f"{within}[")))):
            # OmegaConf lost the key's path (an item of a list in a list: model.stages=[1,2])
            path, (typed_as, default) = within, _key_type(within, overrides, sweep_file, sweep_text)
        value = value_at(data, path) if typed_as is not None else ABSENT
    if value is ABSENT and not within:  # OmegaConf lost the key's path in a file: the whole file, checked
        path, typed_as, default, value = "", schema.Config, MISSING, data
    if typed_as is None or value is ABSENT:
        return None  # what OmegaConf said stands
    found = first_misfit(value, typed_as, default, path)
    if found is None:
        return None
    path, typed_as, default, value = found
    return f"{path or 'the config'} must be {described(typed_as, default, path)}, not {flow_text(value)} {where}"


def _item_within(path: str, typed_as: Any, within: str) -> tuple[str, Any] | None:
    """The key an override set (``within``, dotted: model.stages.1.0) as an item of the list at ``path`` that
    OmegaConf named (model.stages[1]) and its type, through each list it is in; None where it is no such item."""
    bracketed = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", within)
    if not within or not bracketed.startswith(path) or not re.fullmatch(r"(\[\d+\])*", bracketed[len(path):]):
        return None
    for index in re.findall(r"\[(\d+)\]", bracketed[len(path):]):
        typed_as = list_item_type(typed_as)
        if typed_as is None:
            return None
        path = joined_key(path, int(index))
    return path, typed_as


def _model_named(data: Any) -> Any:
    """A file's YAML whose ``model:`` keys are checked against the model its defaults pick (``override /model:
    vgg``): the keys name no model of their own."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or "name" in model:
        return data
    picks = [entry.get("override /model") for entry in data.get("defaults") or [] if isinstance(entry, dict)]
    if not picks or not isinstance(picks[-1], str) or picks[-1] not in group_options("model"):
        return data
    return {**data, "model": {**model, "name": compose([f"model={picks[-1]}"]).model.name}}


def _key_type(key: str, overrides: Sequence[str], sweep_file: Path | None,
              sweep_text: str | None) -> tuple[Any, Any]:
    """The schema type and default of ``key`` in the config that the other overrides compose (the model an
    override picks has keys of its own); (None, MISSING) where it cannot be found."""
    *parent, last = key.split(".")
    try:
        cfg = compose([o for o in overrides if override_key(o) != key], sweep_file, sweep_text)
        owner = OmegaConf.get_type(OmegaConf.select(cfg, ".".join(parent))) if parent else schema.Config
    except (ConfigError, OmegaConfBaseException):
        return None, MISSING
    if not is_schema(owner):
        return None, MISSING
    fields = {f.name: f for f in dataclasses.fields(owner)}
    if last not in fields:
        return None, MISSING
    return hints_of(owner).get(last, Any), field_default(fields[last])


def to_yaml(cfg: DictConfig) -> str:
    return redact(OmegaConf.to_yaml(cfg, resolve=True))  # a run's config.yaml never holds a password


def flatten(cfg: DictConfig | dict[str, Any], prefix: str = "") -> dict[str, object]:
    """Leaf values keyed by dotted path: model.conv.filter_num -> 30
    (lists stay whole; names stay plain: loss -> mse)."""
    data = plain(cfg, enum_to_str=True)
    out: dict[str, object] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out
