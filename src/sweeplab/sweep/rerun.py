"""Hydra recomposition: the `sweeplab train` command line that reruns one trial of a sweep."""
from __future__ import annotations

from pathlib import Path

from sweeplab.compose import compose_with_choices, flatten
from sweeplab.config.schema import TRIAL_GROUPS, shared_key
from sweeplab.program import command_line
from sweeplab.sweep.outcome import SweepOutcome, TrialRow
from sweeplab.sweep.space import overrides_for, to_override

# What a PBT sweep's rerun command is: PBT trains a trial on weights copied from others
PBT_RERUN = "no command reruns a PBT trial, which trained on weights copied from other trials; this trains the " \
            "values it ended with from scratch"


def after_pbt(outcome: SweepOutcome) -> bool:
    return outcome.record.get("scheduler", {}).get("kind") == "pbt"


def best_command(outcome: SweepOutcome, trial: TrialRow, seed: int | None = None) -> str:
    """A `sweeplab train` shell command line that reruns ``trial`` exactly (same config, same seed), or after PBT
    trains the values PBT left it with (PBT_RERUN): the config groups that differ from the defaults, then every
    value that differs from them."""
    record = outcome.record
    completed = trial.completed_seeds()
    seed = seed if seed is not None else int(completed[0] if completed else record["seeds"][0])
    params = {**trial.params, **trial.seeds.get(str(seed), {}).get("final_params", {})}
    overrides = [*record["overrides"], *overrides_for(params), f"train.seed={seed}"]
    # the file as the sweep ran it (a record of an earlier version has only its path)
    cfg, choices = compose_with_choices(overrides, Path(record["sweep_file"]), record.get("sweep_text"))
    _, defaults = compose_with_choices([])
    groups = [to_override(g, choices[g]) for g in TRIAL_GROUPS if choices.get(g) != defaults.get(g)]
    base = flatten(compose_with_choices(groups)[0])
    diffs = [to_override(k, v) for k, v in flatten(cfg).items() if not shared_key(k) and base.get(k) != v]
    return command_line("train", *groups, *diffs)
