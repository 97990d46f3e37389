"""``sweeplab train -m a=1,2 model=lenet,mlp``: Hydra's multirun as a grid sweep file the sweep engine runs.

Every sweep override becomes a categorical dimension of a grid (``range(...)`` and ``glob(...)`` are
enumerated first); ``train.seed=0,1`` becomes ``sweep.seeds``. The file is written beside the sweep's outputs
(``<output_dir>/multirun/<time>/multirun.yaml``), so ``sweeplab sweep <id> --resume`` finds it again.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.override_parser.types import Glob, Override, QuotedString

from sweeplab.compose import compose, group_options, is_config_group, override_key
from sweeplab.errors import ConfigError, UserError
from sweeplab.hydra_habits import parse
from sweeplab.redact import redact
from sweeplab.sweep.space import NOT_SEARCHED, to_override

if TYPE_CHECKING:
    from sweeplab.sweep.plan import SweepPlan

NAME = "multirun"
SEED_KEY = "train.seed"


def _values(text: str, o: Override) -> list[Any]:
    """The values a sweep override names, in order."""
    value = o.value()
    if isinstance(value, Glob):
        if not is_config_group(o.key_or_group):
            raise ConfigError(f"{text}: glob() picks options of a config group; {o.key_or_group} is not one")
        return list(value.filter(group_options(o.key_or_group)))
    try:
        return [_plain(v) for v in o.sweep_iterator()]
    except Exception:  # interval(): a continuous range has no grid points
        raise ConfigError(f"{text}: -m runs a grid, and interval() has no grid points; list the values "
                          f"({o.key_or_group}=a,b,c), use range(start,stop,step), or search it with a sweep file "
                          "(sweeps/*.yaml, sweep.space)") from None


def _plain(value: Any) -> Any:
    """A grid value as the config gets it: a quoted one ('relu', '/tmp/a b') is its text, in a list or mapping too
    (the trials get it back quoted, by ``to_override``)."""
    if isinstance(value, QuotedString):
        return value.text
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _refuse_hydra_keys(overrides: Sequence[str]) -> None:
    """Hydra's settings under -m: its folders (hydra.sweep.dir, hydra.run.dir) are output_dir's here."""
    for text in overrides:
        key = override_key(text)
        if key.startswith(("hydra.sweep.", "hydra.run.")):
            raise ConfigError(f"{text}: -m does not use Hydra's folders; it writes its grid under "
                              f"output_dir=<folder> (the grid file in <output_dir>/{NAME}/<time>/, the trials' "
                              f"results and stores beside it): set output_dir=<folder> instead of {key}")
        if key == "hydra" or key.startswith("hydra."):
            raise ConfigError(f"{key} is a Hydra setting that sweeplab does not use ({text}); remove {key}=... "
                              "(-m writes its grid under output_dir=<folder>)")


def multirun_sweep(overrides: Sequence[str]) -> tuple[Path, list[str], Path]:
    """Write the grid sweep file for a multirun command line: (its path, the overrides every trial shares, the
    outermost folder made for it). ``planned_multirun`` also plans and checks it."""
    from sweeplab.sweep.plan import cuda_among
    from sweeplab.tracking.store import check_writable

    _refuse_hydra_keys(overrides)
    parsed = parse(overrides)
    if not parsed:  # an override Hydra cannot read: compose names it
        compose(overrides)
    fixed = [text for text, o in zip(overrides, parsed, strict=True) if not o.is_sweep_override()]
    swept = [(text, o) for text, o in zip(overrides, parsed, strict=True) if o.is_sweep_override()]
    if not swept:
        raise ConfigError(f"-m (--multirun) needs an override with several values, e.g. optimizer.lr=0.01,0.1; "
                          f"got {redact(' '.join(overrides)) or 'none'}")
    for text, o in swept:
        if o.is_add() or o.is_delete() or o.is_force_add():
            raise ConfigError(f"{text}: -m sweeps keys that exist in the config; drop the "
                              f"'{text[0]}' or add the key to a config in conf/")
    values = {o.key_or_group: _values(text, o) for text, o in swept}
    seeds = values.pop(SEED_KEY, None)
    if not values:
        raise ConfigError(f"-m with only {SEED_KEY} swept: sweep another key too (e.g. optimizer.lr=0.01,0.1), "
                          "or run one 'sweeplab train' per seed")
    for text, o in swept:
        if o.key_or_group in NOT_SEARCHED and o.key_or_group in values:  # the seeds went to sweep.seeds
            raise ConfigError(f"-m {text}: {NOT_SEARCHED[o.key_or_group]}")
    first = [to_override(k, v[0]) for k, v in values.items()]
    cfg = compose([*fixed, *first])  # a mistake in the shared overrides fails here, named
    space = {key: {"type": "categorical", "choices": choices} for key, choices in values.items()}
    sweep = {"name": NAME, "sampler": "grid", "seeds": list(seeds or [int(cfg.train.seed)]),
             "scheduler": {"kind": "none"}, "space": space}
    if not cfg.sweep.resources.gpu and cuda_among(values.get("train.device"), cfg.train.device):
        sweep["resources"] = {"gpu": 1}  # a run told to train on cuda gets a GPU of its own, as `sweeplab train`
    runs = Path(cfg.output_dir) / NAME
    check_writable(Path(cfg.output_dir), "output_dir")  # what `sweeplab train` and `sweeplab sweep` say
    check_writable(runs, f"output_dir's {NAME} folder")
    made = _first_missing(runs)
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # what check_writable cannot tell beforehand (/proc/x as root)
        if made is not None and made.exists():
            shutil.rmtree(made)
        raise UserError(f"cannot write output_dir at {Path(cfg.output_dir).resolve()}: {err.filename or runs} "
                        f"cannot be made ({err.strerror}); choose a folder you can write, e.g. output_dir=./outputs"
                        ) from None
    folder = _new_folder(runs, time.strftime("%Y%m%d-%H%M%S"))
    made = made or folder
    path = folder / f"{NAME}.yaml"
    header = f"# @package _global_\n# sweeplab train -m {redact(' '.join(overrides))}\n"
    path.write_text(header + yaml.safe_dump({"sweep": sweep}, sort_keys=False))
    return path, fixed, made


def planned_multirun(overrides: Sequence[str]) -> tuple[SweepPlan, list[str]]:
    """The grid sweep of a multirun command line, written, planned and checked as ``sweeplab sweep`` checks a sweep
    before it starts: (its plan, the overrides every trial shares). A mistake (a value out of range, a store that
    does not answer) names the command line's override, and removes the file and the folders made for it."""
    from sweeplab.sweep.launch import check_before_start
    from sweeplab.sweep.plan import plan_sweep

    path, fixed, made = multirun_sweep(overrides)
    path = path.resolve()  # as plan_sweep names it: a relative output_dir's path is only part of what errors hold
    try:
        plan = plan_sweep(str(path), fixed)
        check_before_start(plan)
    except UserError as err:
        shutil.rmtree(made)
        text = str(err)
        for override in overrides:
            text = text.replace(f"sweep.space.{override_key(override)} in {path}", f"-m {redact(override)}")
        raise type(err)(text.replace(str(path), f"the -m grid of {redact(' '.join(overrides))}")) from None
    return plan, fixed


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (None where it all exists)."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _new_folder(parent: Path, name: str) -> Path:
    """``parent/name`` made now, or ``name-2``, ``name-3``... where another -m started in the same second made it."""
    folder, n = parent / name, 1
    while True:
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1
            folder = parent / f"{name}-{n}"
