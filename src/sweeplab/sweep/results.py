"""Reading sweeps back from the Optuna storage: which sweeps exist, and one sweep's outcome."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from sweeplab.errors import UserError
from sweeplab.metrics import TrialStatus
from sweeplab.program import program
from sweeplab.redact import redact
from sweeplab.sweep.outcome import SweepOutcome, TrialRow
from sweeplab.tracking.study_store import local_file, open_storage

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["SweepOutcome", "best_trial_runs", "file_sweep", "find_sweep", "list_sweeps", "load_outcome"]


def _studies(storage: str) -> list[optuna.study.StudySummary]:
    path = local_file(storage)
    if path is not None and not path.exists():
        raise UserError(f"no sweep has run here yet: {path} does not exist "
                        f"(run '{program()} sweep default', or pass output_dir=... / cluster=... to find another "
                        "store)")
    try:
        return optuna.get_all_study_summaries(storage=open_storage(storage), include_best_trial=False)
    except Exception as err:  # a missing file or an unreachable database
        raise UserError(f"cannot read the Optuna storage {redact(storage)}: {str(err).splitlines()[0][:300]}") from None


def find_sweep(storage: str, ref: str) -> dict[str, Any]:
    """The record of a sweep id, or of the latest sweep with that name; a sweep file given by path or .yaml name
    stands for the sweeps run from it, else (a file moved here) for those of its sweep.name; a path whose file is
    gone (moved or deleted since), for the sweeps run from it."""
    from sweeplab.compose import names_a_file

    summaries = [s for s in _studies(storage) if "sweep_id" in s.user_attrs]
    gone = names_a_file(ref) and not Path(ref).is_file()  # moved or deleted since: the path it ran from finds it
    name, path = (None, str(Path(ref).resolve())) if gone else file_sweep(ref) or (ref, None)
    found = [s for s in summaries if s.study_name == ref] or sorted(
        [s for s in summaries if path is not None and s.user_attrs.get("sweep_file") == path]
        or [s for s in summaries if name is not None and s.user_attrs.get("name") == name],
        key=lambda s: s.user_attrs.get("started", ""))
    if not found:
        known = sorted({str(s.user_attrs["name"]) for s in summaries if "name" in s.user_attrs})
        if gone:
            names = f" ({', '.join(known)})" if known else ""
            raise UserError(f"sweep file {ref!r} does not exist, and no sweep in {redact(storage)} ran from {path}: "
                            f"give the sweep's name or id{names}")
        hint = (f"Sweeps in this storage: {', '.join(known)}." if known
                else f"It holds no sweep yet: run '{program()} sweep <name>' first.")
        of_file = f" (the sweep.name of {ref})" if name != ref else ""
        raise UserError(f"no sweep named {name!r}{of_file} in {redact(storage)}. {hint}")
    return dict(found[-1].user_attrs)


def file_sweep(ref: str) -> tuple[str, str] | None:
    """A sweep file named by path or .yaml name (sw/datagrid.yaml): its sweep.name and its resolved path, as a sweep
    records them; None for a sweep's name or id."""
    from sweeplab.compose import compose, names_a_file, resolve_sweep_file

    if not names_a_file(ref):
        return None

    path = resolve_sweep_file(ref)
    return str(compose((), path).sweep.name), str(path)


def list_sweeps(storage: str) -> list[dict[str, Any]]:
    return sorted((dict(s.user_attrs) for s in _studies(storage) if "sweep_id" in s.user_attrs),
                  key=lambda r: r.get("started", ""))


def load_outcome(storage: str, sweep_id: str) -> SweepOutcome:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sweep_id, storage=open_storage(storage))
    order = {str(seed): i for i, seed in enumerate(study.user_attrs.get("seeds", []))}
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        # each seed's results in sweep.seeds' order, not as they finished: the first completed is the one best reruns
        by_seed = dict(sorted(attrs.get("seeds", {}).items(), key=lambda item: order.get(item[0], len(order))))
        status = attrs.get("status", TrialStatus.RUNNING if t.state.name == "RUNNING" else t.state.name.lower())
        values = list(t.values) if t.values is not None and status != TrialStatus.STOPPED else None
        seeds = [o for o in by_seed.values() if "values" in o]
        if values is None and seeds:  # stopped configurations: Optuna holds no (or a partial) value
            values = [statistics.fmean(o["values"][i] for o in seeds) for i in range(len(seeds[0]["values"]))]
        rows.append(TrialRow(t.number, dict(t.params), t.state.name, status, values, attrs.get("std"),
                             attrs.get("epochs"), attrs.get("reason", ""), by_seed))
    return SweepOutcome({**study.user_attrs, "storage": storage}, rows)


def best_trial_runs(client: MlflowClient, parent_run_id: str, optuna_storage: str, sweep_id: str,
                    count: int = 1) -> list[Run]:
    """The child runs of the sweep's ``count`` best completed configurations, best first (for a trial
    run with several seeds, the run of its first completed seed: the one `sweeplab best` reruns)."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    found: list[Run] = []
    for trial in load_outcome(optuna_storage, sweep_id).ranked()[:count]:
        seeds = trial.completed_seeds()
        seed = f" and params.`train.seed` = '{seeds[0]}'" if seeds else ""
        found += client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' "
                                    f"and tags.`sweeplab.optuna_trial` = '{trial.number}' "
                                    f"and tags.`sweeplab.status` = 'completed'{seed}", max_results=1)
    return found
