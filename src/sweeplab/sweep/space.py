"""Search spaces: checked against the composed config, turned into Optuna
distributions, grid points and Hydra overrides."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeplab.compose import flatten
from sweeplab.config.schema import SHARED_KEYS, TRIAL_GROUPS
from sweeplab.errors import ConfigError, did_you_mean
from sweeplab.structured import plain

TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Dimension:
    key: str  # a config path (optimizer.lr) or a config group (model)
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()  # categorical only
    # a conditional key: sampled only when each named dimension took one of these choices (when: {model: lenet})
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def is_group(self) -> bool:
        return self.key in TRIAL_GROUPS

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a float or int range; parse_space has checked that both are set."""
        if self.low is None or self.high is None:
            raise ValueError(f"sweep.space.{self.key} is a {self.type} dimension without a range")
        return self.low, self.high

    def allows(self, key: str, value: Any) -> bool:
        """Whether this key's condition (if it names ``key``) admits ``key=value``."""
        return all(encode_choice(value) in {encode_choice(c) for c in values} for k, values in self.when if k == key)

    def active(self, params: dict[str, Any]) -> bool:
        """Whether this key is sampled for a trial with these ``params`` (the values sampled so far)."""
        return all(params.get(key, _ABSENT) in {encode_choice(c) for c in values} for key, values in self.when)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "float":
            low, high = self.bounds
            return optuna.distributions.FloatDistribution(low, high, log=self.log, step=self.step)
        if self.type == "int":
            low, high = self.bounds
            return optuna.distributions.IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        # Optuna stores categorical choices as None/bool/int/float/str: lists travel as YAML text.
        return optuna.distributions.CategoricalDistribution([encode_choice(c) for c in self.choices])

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """This dimension's value for ``trial``, asked of Optuna through its public suggest API."""
        dist = self.distribution()
        if isinstance(dist, optuna.distributions.FloatDistribution):
            return trial.suggest_float(self.key, dist.low, dist.high, log=dist.log, step=dist.step)
        if isinstance(dist, optuna.distributions.IntDistribution):
            return trial.suggest_int(self.key, dist.low, dist.high, log=dist.log, step=dist.step)
        assert isinstance(dist, optuna.distributions.CategoricalDistribution)
        return trial.suggest_categorical(self.key, dist.choices)

    def grid_values(self) -> list[Any]:
        if self.type == "categorical":
            return [encode_choice(c) for c in self.choices]
        if self.step is None and self.type == "float":
            raise ConfigError(
                f"sweep.space.{self.key}: the grid sampler needs 'choices' or a 'step' for a float range"
            )
        low, high = self.bounds
        step = self.step or 1
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        values = [low + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else [round(v, 12) for v in values]


_ABSENT = object()


def sample(dims: list[Dimension], trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Optuna's define-by-run sampling of a space: each dimension in order, a conditional one only when
    its condition holds, so a trial's params hold exactly the keys that apply to it."""
    params: dict[str, Any] = {}
    for dim in dims:
        if dim.active(params):
            params[dim.key] = dim.suggest(trial)
    return params


def encode_choice(value: Any) -> Any:
    """Optuna keeps choices as scalars: a list choice travels as its Hydra text, e.g. [100,100]."""
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, dict):
        raise ConfigError(f"a categorical choice cannot be a mapping ({value!r}): search its keys one by one")
    return override_value(value) if isinstance(value, list) else value


def _decode_choice(value: Any) -> Any:
    """The inverse of encode_choice for a sampled value: Hydra list text back to a list."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        return OverridesParser.create().parse_override(f"k={value}").value()
    return value


# A string Hydra reads back unchanged without quotes (a name, an absolute path, a URL); anything else (spaces, commas,
# quotes, non-ASCII letters, or text that would parse as a number, bool or null) is quoted.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_\-./:@]*", re.ASCII)
_WORDS = {"true", "false", "null", "inf", "nan"}


def override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar, so the composed config gets exactly this value."""
    if value is None:
        return "null"  # Hydra's None; 'None' would be the string "None"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _WORDS:
        return text
    # Quoted: escape quotes, backslashes before a quote or the end, and interpolations (${...}).
    text = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return "'" + text.replace("${", "\\${") + "'"


def to_override(key: str, value: Any) -> str:
    """A Hydra override that sets ``key`` to ``value`` (a sampled value or a config leaf)."""
    return f"{key}={override_value(_decode_choice(value))}"


def overrides_for(params: dict[str, Any]) -> list[str]:
    """Group choices first (model=vgg), then values (model.activation=tanh)."""
    ordered = sorted(params.items(), key=lambda kv: (kv[0] not in TRIAL_GROUPS, kv[0]))
    return [to_override(k, v) for k, v in ordered]


# Keys a sweep sets for every trial, not per trial
NOT_SEARCHED = {
    "train.epochs": "a sweep trains every trial for the same train.epochs (its scheduler's rungs, when a trial has "
                    "ended and the ETA count them): give it one value, and compare lengths on the per-epoch curves "
                    "every trial logs, or run a sweep per length",
    "train.seed": "a sweep runs each configuration once per seed of sweep.seeds: set sweep.seeds, e.g. [0, 1, 2]",
}


def parse_space(
    space: Any, base: DictConfig, source: Path | str, group_options: dict[str, list[str]]
) -> list[Dimension]:
    """Validate ``sweep.space`` against the composed base config; errors name key and file."""
    space = plain(space or {})
    if not space:
        raise ConfigError(f"sweep.space in {source} is empty: add at least one key to search, e.g. optimizer.lr")
    dims: list[Dimension] = []
    searched_groups = {key for key in space if key in TRIAL_GROUPS}  # keys under them: checked per choice (plan)
    for key, spec in space.items():
        where = f"sweep.space.{key} in {source}"
        if key in NOT_SEARCHED:
            raise ConfigError(f"{where}: {NOT_SEARCHED[key]}")
        top = key.split(".")[0]
        if top in SHARED_KEYS:  # tracking, cluster, sweep, output_dir: one for the sweep
            raise ConfigError(f"{where}: {top} is shared by all of a sweep's trials, so it cannot be searched; a "
                              f"space searches keys under {', '.join(TRIAL_GROUPS)} (e.g. optimizer.lr) or picks one "
                              "of their options (e.g. model: {type: categorical, choices: [mlp, lenet]})")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0.001, high: 0.1}}, got {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices", "when"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown field {sorted(unknown)[0]!r}; fields are type, low, high, log, step, choices, when"
            )
        kind = spec.get("type")
        if kind not in TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}")
        choices = spec.get("choices")
        if choices is not None and not isinstance(choices, (list, tuple)):
            raise ConfigError(f"{where}: choices must be a list, e.g. choices: [{choices}], got {choices!r}")
        if key in TRIAL_GROUPS:
            if kind != "categorical":
                raise ConfigError(f"{where}: a config group is searched with type: categorical and choices")
            bad = [c for c in spec.get("choices") or [] if c not in group_options[key]]
            if bad:
                raise ConfigError(f"{where}: unknown {key} {bad[0]!r}; options: {', '.join(group_options[key])}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: log must be true or false, got {log!r}")
        when = _parse_when(spec.get("when"), dims, where)
        per_choice = key.split(".")[0] in searched_groups or any(k in TRIAL_GROUPS for k, _ in when)
        if key not in TRIAL_GROUPS and not per_choice and \
                OmegaConf.select(base, key, default="__missing__") == "__missing__":
            hint = did_you_mean(key, flatten(base)) or "; check the spelling"
            raise ConfigError(f"{where}: {key!r} is not a key of the composed config{hint} (a key that only some "
                              "choices have takes e.g. when: {model: lenet})")
        dim = Dimension(key, kind, spec.get("low"), spec.get("high"), log, spec.get("step"),
                        tuple(spec["choices"]) if spec.get("choices") is not None else (), when)
        _check_dimension(dim, where)
        dims.append(dim)
    return dims


def _parse_when(when: Any, earlier: list[Dimension], where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``when: {model: lenet}`` or ``{model: [lenet, alexnet]}``: each key a categorical dimension listed
    before this one, each value among its choices."""
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{where}: 'when' must map a categorical key of the space to its choice(s), "
                          f"e.g. when: {{model: lenet}}, got {when!r}")
    by_key = {d.key: d for d in earlier}
    out = []
    for key, values in when.items():
        dim = by_key.get(key)
        if dim is None or dim.type != "categorical":
            listed = ", ".join(d.key for d in earlier if d.type == "categorical") or "none"
            raise ConfigError(f"{where}: when.{key}: {key!r} must be a categorical dimension listed before this one "
                              f"in sweep.space (categorical dimensions before it: {listed})")
        values = values if isinstance(values, list) else [values]
        choices = [encode_choice(c) for c in dim.choices]
        bad = [v for v in values if encode_choice(v) not in choices]
        if bad or not values:
            raise ConfigError(f"{where}: when.{key}={bad[0] if bad else values!r} is not a choice of {key}; "
                              f"its choices: {', '.join(map(str, choices))}")
        out.append((key, tuple(values)))
    return tuple(out)


def _check_dimension(dim: Dimension, where: str) -> None:
    if dim.type == "categorical":
        if not dim.choices:
            raise ConfigError(f"{where}: categorical needs a non-empty 'choices' list")
        return
    if dim.low is None or dim.high is None:
        raise ConfigError(f"{where}: {dim.type} needs both 'low' and 'high'")
    for field_ in ("low", "high", "step"):
        value = getattr(dim, field_)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {field_} must be a number, got {value!r}")
    if not (math.isfinite(dim.low) and math.isfinite(dim.high)):
        raise ConfigError(f"{where}: low and high must be finite numbers, got low={dim.low}, high={dim.high}")
    if not dim.low < dim.high:
        raise ConfigError(f"{where}: empty or inverted range low={dim.low} >= high={dim.high}; low must be below high")
    if dim.log and dim.low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low={dim.low}")
    if dim.log and dim.step is not None:
        raise ConfigError(f"{where}: 'log' and 'step' cannot be combined")
    if dim.type == "int" and (dim.low != int(dim.low) or dim.high != int(dim.high)):
        raise ConfigError(f"{where}: int bounds must be whole numbers, got low={dim.low}, high={dim.high}")
    if dim.step is not None and dim.step <= 0:
        raise ConfigError(f"{where}: step must be > 0, got {dim.step}")
    if dim.type == "int" and dim.step is not None and dim.step != int(dim.step):
        raise ConfigError(f"{where}: an int dimension's step must be a whole number, got {dim.step}")
    if dim.step is not None:
        _check_step(dim, dim.step, where)


def _check_step(dim: Dimension, step: float, where: str) -> None:
    """Optuna cuts a range its step does not divide down to the last step inside it, with only a warning: refuse
    that here, naming the highs that fit. In decimals, as Optuna checks, so 0.01..0.1 by 0.01 divides."""
    low, high, by = (Decimal(str(int(v) if dim.type == "int" else v)) for v in (*dim.bounds, step))
    span = high - low
    if by > span:
        raise ConfigError(f"{where}: step={by} is larger than the range high - low = {span}, so every trial would "
                          f"get low={low}; give a step of at most {span}")
    if span % by:
        below = low + span // by * by
        raise ConfigError(f"{where}: step={by} does not divide the range {low}..{high} (Optuna would search only "
                          f"up to {below}); set high to {below} or {below + by}, or give a step that divides {span}")


def grid(dims: list[Dimension]) -> dict[str, list]:
    return {d.key: d.grid_values() for d in dims}


def grid_size(dims: list[Dimension]) -> int:
    return math.prod(len(v) for v in grid(dims).values())
