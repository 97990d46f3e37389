"""A sweep's results read back from its Optuna study: summary tables, status, best command."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna

from sweeplab.errors import UserError
from sweeplab.sweep.space import GROUPS, _flow, overrides_for


@dataclass
class TrialRow:
    number: int
    params: dict[str, Any]
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING
    status: str  # completed | stopped | invalid | error | running
    values: Optional[list[float]]  # mean over seeds, one per objective
    std: Optional[list[float]]
    epochs: Optional[int]
    reason: str = ""
    seeds: dict[str, dict] = field(default_factory=dict)

    def seed_values(self, index: int = 0) -> list[float]:
        return [o["values"][index] for o in self.seeds.values() if "values" in o]


@dataclass
class SweepOutcome:
    record: dict[str, Any]
    trials: list[TrialRow]

    @property
    def sweep_id(self) -> str:
        return self.record["sweep_id"]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [tuple(o) for o in self.record["objectives"]]

    def ranked(self) -> list[TrialRow]:
        """Trials that ran every epoch, best first by the first objective."""
        metric, mode = self.objectives[0]
        done = [t for t in self.trials if t.status == "completed" and t.values]
        return sorted(done, key=lambda t: t.values[0], reverse=(mode == "max"))

    def best(self) -> Optional[TrialRow]:
        ranked = self.ranked()
        return ranked[0] if ranked else None

    @property
    def unfinished(self) -> bool:
        """Interrupted before every configuration ended (Ctrl+C, a lost driver)."""
        ended = [t for t in self.trials if t.status != "running"]
        return len(ended) < int(self.record.get("num_configs", len(ended)))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out


def _studies(storage: str) -> list[optuna.study.StudySummary]:
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).exists():
        raise UserError(f"no sweep has run here yet: {storage[len('sqlite:///'):]} does not exist "
                        "(run 'sweeplab sweep default', or pass output_dir=... / cluster=... to find another store)")
    try:
        return optuna.get_all_study_summaries(storage=storage, include_best_trial=False)
    except Exception as err:  # a missing file or an unreachable database
        from sweeplab.tracking.store import redact

        raise UserError(f"cannot read the Optuna storage {redact(storage)}: {str(err).splitlines()[0][:300]}") from None


def find_sweep(storage: str, name_or_id: str) -> dict[str, Any]:
    """The record of a sweep id, or of the latest sweep with that name."""
    summaries = [s for s in _studies(storage) if "sweep_id" in s.user_attrs]
    exact = [s for s in summaries if s.study_name == name_or_id]
    named = [s for s in summaries if s.user_attrs.get("name") == name_or_id]
    found = exact or sorted(named, key=lambda s: s.user_attrs.get("started", ""))
    if not found:
        known = sorted({s.user_attrs.get("name") for s in summaries})
        hint = f"Sweeps in this storage: {', '.join(known)}." if known else "It holds no sweep yet: run 'sweeplab sweep <name>' first."
        from sweeplab.tracking.store import redact

        raise UserError(f"no sweep named {name_or_id!r} in {redact(storage)}. {hint}")
    return dict(found[-1].user_attrs)


def list_sweeps(storage: str) -> list[dict[str, Any]]:
    return sorted((dict(s.user_attrs) for s in _studies(storage) if "sweep_id" in s.user_attrs),
                  key=lambda r: r.get("started", ""))


def load_outcome(storage: str, sweep_id: str) -> SweepOutcome:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=sweep_id, storage=storage)
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        values = list(t.values) if t.values is not None else None
        if values is None and attrs.get("status") == "stopped":
            seeds = [o for o in attrs.get("seeds", {}).values() if "values" in o]
            values = [statistics.fmean(o["values"][i] for o in seeds) for i in range(len(seeds[0]["values"]))] if seeds else None
        status = attrs.get("status", "running" if t.state.name == "RUNNING" else t.state.name.lower())
        rows.append(TrialRow(t.number, dict(t.params), t.state.name, status, values, attrs.get("std"),
                             attrs.get("epochs"), attrs.get("reason", ""), attrs.get("seeds", {})))
    return SweepOutcome({**study.user_attrs, "storage": storage}, rows)  # storage: _pareto reopens the study


# --- presentation -----------------------------------------------------------------
def _pct(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.2f}" if metric.endswith("acc") else f"{value:.4g}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_summary(outcome: SweepOutcome) -> str:
    metric, mode = outcome.objectives[0]
    keys = list(outcome.record.get("space", {}))
    n_seeds = len(outcome.record.get("seeds", [0]))
    unit = " (%)" if metric.endswith("acc") else ""
    headers = ["trial", *keys, f"{metric}{unit}", *(f"{m}" for m, _ in outcome.objectives[1:]), "epochs", "status"]
    if n_seeds > 1:
        headers[len(keys) + 1] = f"{metric}{unit} mean ± std ({n_seeds} seeds)"
    order = {"completed": 0, "stopped": 1, "running": 2, "invalid": 3, "error": 4}
    sign = -1 if mode == "max" else 1
    trials = sorted(outcome.trials, key=lambda t: (order.get(t.status, 5), sign * t.values[0] if t.values else 0))
    rows = []
    for t in trials:
        value = _pct(metric, t.values[0] if t.values else None)
        if n_seeds > 1 and t.values and t.std:
            value += f" ± {_pct(metric, t.std[0])}"
        extra = [_pct(m, t.values[i + 1] if t.values else None) for i, (m, _) in enumerate(outcome.objectives[1:])]
        status = t.status if not t.reason else f"{t.status}: {t.reason[:80]}"
        rows.append([str(t.number), *(_short(t.params.get(k)) for k in keys), value, *extra, str(t.epochs or "-"), status])
    parts = [f"sweep {outcome.sweep_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts().items())),
             format_table(headers, rows)]
    parts += _rankings(outcome)
    best = outcome.best()
    if best:
        shown = f"{best.values[0] * 100:.2f}%" if metric.endswith("acc") else _pct(metric, best.values[0])
        parts.append(f"best: trial {best.number}  {metric} {shown}  "
                     + " ".join(f"{k}={_short(v)}" for k, v in best.params.items()))
        parts.append(f"rerun it: {best_command(outcome, best)}")
    if len(outcome.objectives) > 1:
        parts.append(_pareto(outcome))
    return "\n\n".join(parts)


def _rankings(outcome: SweepOutcome) -> list[str]:
    """Every categorical key (an activation, a learning-rate choice) ranked per model by the mean
    over all its runs; and, when the model itself is searched, the models at their best settings."""
    metric, mode = outcome.objectives[0]
    space = outcome.record.get("space", {})
    done = [t for t in outcome.trials if t.status == "completed" and t.values]
    if not done:
        return []
    by_model = "model" in space
    out = []
    for key in (k for k, s in space.items() if s.get("type") == "categorical" and k != "model"):
        groups: dict[tuple, list[float]] = {}
        for t in done:
            groups.setdefault((t.params.get("model", ""), t.params.get(key)), []).extend(t.seed_values() or [t.values[0]])
        for model in sorted({g[0] for g in groups}):
            ranked = sorted(((g[1], v) for g, v in groups.items() if g[0] == model),
                            key=lambda kv: statistics.fmean(kv[1]), reverse=(mode == "max"))
            rows = [[str(i), _short(value), _mean_std(metric, v), str(len(v))] for i, (value, v) in enumerate(ranked, 1)]
            title = f"{key} ranked by {metric}" + (f" for model={model}" if by_model else "")
            out.append(title + "\n" + format_table(["rank", key, f"{metric} mean ± std", "runs"], rows))
    if by_model:
        best: dict[str, TrialRow] = {}
        for t in done:
            current = best.get(t.params["model"])
            if current is None or (t.values[0] > current.values[0]) == (mode == "max"):
                best[t.params["model"]] = t
        ranked = sorted(best.values(), key=lambda t: t.values[0], reverse=(mode == "max"))
        others = [k for k in space if k != "model"]
        rows = [[str(i), t.params["model"], _mean_std(metric, t.seed_values() or [t.values[0]]),
                 " ".join(f"{k}={_short(t.params.get(k))}" for k in others)] for i, t in enumerate(ranked, 1)]
        out.append(f"model ranked by {metric}, each at its best setting\n"
                   + format_table(["rank", "model", f"{metric} mean ± std", "setting"], rows))
    return out


def _mean_std(metric: str, values: list[float]) -> str:
    return f"{_pct(metric, statistics.fmean(values))} ± {_pct(metric, statistics.pstdev(values))}"


def _pareto(outcome: SweepOutcome) -> str:
    study = optuna.load_study(study_name=outcome.sweep_id, storage=outcome.record["storage"])
    numbers = {t.number for t in study.best_trials}
    front = [t for t in outcome.trials if t.number in numbers]
    names = ", ".join(f"{m} ({mode})" for m, mode in outcome.objectives)
    return f"Pareto front over {names}: trials " + ", ".join(str(t.number) for t in front)


def best_command(outcome: SweepOutcome, trial: TrialRow, seed: Optional[int] = None) -> str:
    """A `sweeplab train` command line that reruns ``trial`` exactly (same config, same seed)."""
    from sweeplab.config.compose import compose_with_choices, flatten

    record = outcome.record
    completed = [s for s, o in trial.seeds.items() if o.get("status") == "completed"]
    seed = seed if seed is not None else int(completed[0] if completed else record["seeds"][0])
    overrides = [*record["overrides"], *overrides_for(trial.params), f"train.seed={seed}"]
    cfg, choices = compose_with_choices(overrides, Path(record["sweep_file"]))
    _, defaults = compose_with_choices([])
    groups = [f"{g}={choices[g]}" for g in GROUPS if choices.get(g) != defaults.get(g)]
    base = flatten(compose_with_choices(groups)[0])
    want = flatten(cfg)
    skip = ("sweep.", "tracking.", "cluster.", "output_dir")
    diffs = [f"{k}={_flow(v) if isinstance(v, list) else _override_value(v)}" for k, v in want.items()
             if not k.startswith(skip) and base.get(k) != v]
    return " ".join(["sweeplab train", *groups, *diffs])


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)
