"""What Hydra users expect of a command line: sweep overrides (``a=1,2``), ``hydra.run.dir``,
the ``.hydra/`` record of a run, ``--cfg`` and ``--info``.

sweeplab composes with Hydra's compose API, so these are done here rather than by ``@hydra.main``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from sweeplab.compose import RUN_DIR_KEY, conf_dir, group_options, is_config_group, to_yaml
from sweeplab.config.schema import SHARED_KEYS
from sweeplab.errors import UserError


def parse(overrides: Sequence[str]) -> list[Override]:
    """Hydra's own reading of the overrides; [] when one does not parse (compose then names the mistake)."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return []


def refuse_sweeps_without_multirun(overrides: Sequence[str]) -> None:
    """A sweep override on a single run: say that ``-m`` runs it (Hydra's error only says "add --multirun")."""
    for text, o in zip(overrides, parse(overrides), strict=False):
        if not o.is_sweep_override():
            continue
        key = o.key_or_group
        value = o.value()
        first = value.list[0] if isinstance(value, ChoiceSweep) else None
        if not is_config_group(key):
            one = f"give a list as {key}=[a,b] or a string with a comma as {key}='a,b'"
        elif isinstance(first, str):
            one = f"pick one of them, e.g. {key}={first}"
        else:
            one = f"pick one of the group's options: {', '.join(group_options(key))}"
        top = key.split(".")[0]
        if top in SHARED_KEYS:  # what -m's grid would refuse to search
            if not is_config_group(key) and first is not None:
                one = f"give it one value, e.g. {key}={first} (or a list, {key}=[a,b], where it takes one)"
            raise UserError(f"{text} names several values, and {top} is one for all of a sweep's runs, so -m "
                            f"cannot train a run for each either; {one}")
        raise UserError(f"{text} names several values: add -m (--multirun) to train each as a trial of a "
                        f"grid sweep (sweeplab train -m {' '.join(overrides)}); for one run, {one}")


@dataclass
class TrainLine:
    """A ``sweeplab train`` command line: the overrides compose sees, the run folder asked for with hydra.run.dir."""

    overrides: list[str]
    run_dir: Path | None = None
    typed: list[str] = field(default_factory=list)  # as the user typed them: .hydra/overrides.yaml


def train_line(overrides: Sequence[str]) -> TrainLine:
    """Take ``hydra.run.dir=...`` out of the overrides (compose refuses every other ``hydra.*`` key), its
    ``${now:...}`` resolved as Hydra does (its default is ``outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}``)."""
    run_dir, rest = None, list(overrides)
    for text, parsed in zip(overrides, parse(overrides), strict=False):  # parse: [] if one does not parse
        if parsed.key_or_group == RUN_DIR_KEY and not parsed.is_delete():
            run_dir = Path(_resolved(text, str(parsed.value())))
            rest.remove(text)
    return TrainLine(rest, run_dir, list(overrides))


def _resolved(text: str, value: str) -> str:
    from hydra.core.utils import setup_globals
    from omegaconf.errors import OmegaConfBaseException

    setup_globals()  # Hydra's resolvers: now
    try:
        return str(OmegaConf.create({"dir": value}).dir)
    except OmegaConfBaseException as err:
        raise UserError(f"{text}: {str(err).splitlines()[0]}; hydra.run.dir may use ${{now:...}}, e.g. "
                        "hydra.run.dir='outputs/${now:%Y-%m-%d_%H-%M-%S}'") from None


def hydra_node(choices: dict[str, str], line: TrainLine, run_dir: Path) -> dict[str, Any]:
    """The ``hydra:`` part of a run's record, holding only what sweeplab uses: the run folder, the options
    picked in each group, the overrides, where the configs came from."""
    return {"hydra": {
        "mode": "RUN",
        "run": {"dir": str(run_dir)},
        "job": {"name": "train", "chdir": False},
        "overrides": {"task": list(line.typed)},
        "runtime": {
            "version": hydra.__version__,
            "version_base": "1.3",
            "cwd": os.getcwd(),
            "output_dir": str(run_dir.resolve()),
            "config_sources": [{"path": str(conf_dir()), "schema": "file", "provider": "main"},
                               {"path": "sweeplab.config.schema", "schema": "structured", "provider": "sweeplab"}],
            "choices": dict(choices),
        },
    }}


def config_text(cfg: DictConfig, which: str, choices: dict[str, str], line: TrainLine, run_dir: Path) -> str:
    """``--cfg job`` (the composed config), ``hydra`` (the hydra node) or ``all`` (both), as YAML."""
    node = yaml.safe_dump(hydra_node(choices, line, run_dir), sort_keys=False)
    return {"job": to_yaml(cfg), "hydra": node, "all": node + to_yaml(cfg)}[which]


def write_record(folder: Path, cfg: DictConfig, choices: dict[str, str], line: TrainLine) -> Path:
    """Hydra's record of a run: .hydra/config.yaml, .hydra/hydra.yaml, .hydra/overrides.yaml."""
    record = folder / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    (record / "config.yaml").write_text(to_yaml(cfg))
    (record / "hydra.yaml").write_text(yaml.safe_dump(hydra_node(choices, line, folder), sort_keys=False))
    (record / "overrides.yaml").write_text(yaml.safe_dump(list(line.typed)))
    return record


def config_groups() -> dict[str, list[str]]:
    """Every config group under conf/ with its options."""
    return {d.name: group_options(d.name) for d in sorted(conf_dir().iterdir()) if is_config_group(d.name)}


def info_text(cfg: DictConfig, choices: dict[str, str], overrides: Sequence[str], section: str = "all") -> str:
    """``--info``: Hydra's sections for this command line (searchpath, defaults, config)."""
    from sweeplab import __version__

    parts = [f"sweeplab {__version__}, Hydra {hydra.__version__}"]
    if section in ("all", "searchpath"):
        parts.append("Config search path\n" + f"  main        {conf_dir().as_uri()}\n"
                     "  structured  sweeplab.config.schema (Hydra's ConfigStore: the typed schema of every group)")
    if section in ("all", "defaults"):
        width = max(map(len, config_groups()))
        lines = [f"  {g:<{width}}  {choices.get(g, '-'):<15} options: {', '.join(opts)}"
                 for g, opts in config_groups().items()]
        parts.append("Defaults list (conf/config.yaml; the option each group gets on this command line)\n"
                     + "\n".join(lines))
        parts.append("Overrides\n  " + (" ".join(overrides) or "(none)"))
    if section in ("all", "config"):
        parts.append("Config\n" + OmegaConf.to_yaml(cfg).rstrip())
    return "\n\n".join(parts) + "\n"
