"""A sweep's outcome as text: the trial table, rankings per searched key, the best trial."""
from __future__ import annotations

import statistics
from typing import Any

from sweeplab.metrics import TrialStatus, format_metric, ranked_label
from sweeplab.sweep.outcome import SweepOutcome, TrialRow
from sweeplab.sweep.rerun import PBT_RERUN, after_pbt, best_command


def format_param(value: Any) -> str:
    """A searched value as shown beside its key: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _mean_std(metric: str, values: list[float]) -> str:
    return f"{format_metric(metric, statistics.fmean(values))} ± {format_metric(metric, statistics.pstdev(values))}"


_ORDER: list[str] = [
    TrialStatus.COMPLETED, TrialStatus.STOPPED, TrialStatus.RUNNING, TrialStatus.INVALID, TrialStatus.ERROR
]


REASON_WIDTH = 120  # a reason's first line in the table: its remedy, at its end, fits (the loss's line is ~90)


def _shortened(reason: str) -> str:
    line = reason.partition("\n")[0]
    return line if len(line) <= REASON_WIDTH else line[:REASON_WIDTH - 1].rstrip() + "…"


def format_summary(outcome: SweepOutcome) -> str:
    metric, mode = outcome.objectives[0]
    keys = list(outcome.record.get("space", {}))
    n_seeds = len(outcome.record.get("seeds", [0]))
    value_header = ranked_label(metric) + (f" mean ± std ({n_seeds} seeds)" if n_seeds > 1 else "")
    headers = ["trial", *keys, value_header, *(ranked_label(m) for m, _ in outcome.objectives[1:]), "epochs", "status"]
    sign = -1 if mode == "max" else 1

    def order(t: TrialRow) -> tuple:
        rank = _ORDER.index(t.status) if t.status in _ORDER else len(_ORDER)
        return rank, sign * t.values[0] if t.values else 0

    rows = []
    for t in sorted(outcome.trials, key=order):
        value = format_metric(metric, t.values[0] if t.values else None)
        if n_seeds > 1 and t.values and t.std:
            value += f" ± {format_metric(metric, t.std[0])}"
        extra = [format_metric(m, t.values[i] if t.values else None)
                 for i, (m, _) in enumerate(outcome.objectives[1:], 1)]
        status = t.status if not t.reason else f"{t.status}: {_shortened(t.reason)}"
        rows.append([str(t.number), *(format_param(t.params[k]) if k in t.params else "-" for k in keys), value, *extra,
                     str(t.epochs or "-"), status])
    head = f"sweep {outcome.sweep_id}: {outcome.counts_text()}"
    if outcome.record.get("ended_by"):
        ran = len([t for t in outcome.trials if t.status != TrialStatus.RUNNING])
        head += (f"\nended by the time budget, {outcome.record['ended_by']}: {ran} of "
                 f"{outcome.record.get('num_configs', '?')} configurations ran")
    parts = [head, format_table(headers, rows), *_rankings(outcome)]
    best = outcome.best()
    if best:
        parts.append(f"best: trial {best.number}  {ranked_label(metric)} {format_metric(metric, best.value())}  "
                     + " ".join(f"{k}={format_param(v)}" for k, v in best.params.items()))
        note = f" ({PBT_RERUN})" if after_pbt(outcome) else ""
        parts.append(f"rerun it{note}: {best_command(outcome, best)}")
    if len(outcome.objectives) > 1:
        names = ", ".join(f"{m} ({mode})" for m, mode in outcome.objectives)
        parts.append(f"Pareto front over {names}, completed trials only: trials "
                     + ", ".join(map(str, outcome.pareto_front())))
    return "\n\n".join(parts)


def _rankings(outcome: SweepOutcome) -> list[str]:
    """Every categorical key (an activation, a learning-rate choice) ranked per model by the mean
    over all its runs; and, when the model itself is searched, the models at their best settings."""
    metric, mode = outcome.objectives[0]
    label = ranked_label(metric)
    space = outcome.record.get("space", {})
    done = outcome.completed()
    if not done:
        return []
    by_model = "model" in space
    out = []
    for key in (k for k, s in space.items() if s.get("type") == "categorical" and k != "model"):
        groups: dict[tuple, list[float]] = {}
        for t in done:
            group = groups.setdefault((t.params.get("model", ""), t.params.get(key)), [])
            group.extend(t.seed_values() or [t.value()])
        for model in sorted({g[0] for g in groups}):
            ranked = sorted(((g[1], v) for g, v in groups.items() if g[0] == model),
                            key=lambda kv: statistics.fmean(kv[1]), reverse=(mode == "max"))
            rows = [[str(i), format_param(value), _mean_std(metric, v), str(len(v))]
                    for i, (value, v) in enumerate(ranked, 1)]
            title = f"{key} ranked by {label}" + (f" for model={model}" if by_model else "")
            out.append(title + "\n" + format_table(["rank", key, f"{label} mean ± std", "runs"], rows)
                       + _unranked(outcome, key, model, {g[1] for g in groups if g[0] == model}))
    if by_model:
        best: dict[str, TrialRow] = {}
        for t in outcome.ranked():
            best.setdefault(t.params["model"], t)
        others = [k for k in space if k != "model"]
        rows = [[str(i), t.params["model"], _mean_std(metric, t.seed_values() or [t.value()]),
                 " ".join(f"{k}={format_param(t.params.get(k))}" for k in others)]
                for i, t in enumerate(best.values(), 1)]
        out.append(f"model ranked by {label}, each at its best setting\n"
                   + format_table(["rank", "model", f"{label} mean ± std", "setting"], rows))
    return out


def _unranked(outcome: SweepOutcome, key: str, model: str, ranked: set) -> str:
    """The values of ``key`` that the sweep tried for ``model`` but that no completed run ranks (every run of them
    stopped early, failed or still running), as a line under the ranking, so that a value is never silently absent."""
    statuses: dict[Any, dict[str, int]] = {}
    for t in outcome.trials:
        if key in t.params and t.params.get("model", "") == model and t.params[key] not in ranked:
            counts = statuses.setdefault(t.params[key], {})
            counts[t.status] = counts.get(t.status, 0) + 1
    if not statuses:
        return ""
    said = "; ".join(f"{format_param(value)} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
                     for value, counts in statuses.items())
    return f"\nnot ranked, no run of it ran every epoch: {said}"
