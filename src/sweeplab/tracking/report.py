"""A sweep's comparison report, built from the MLflow store alone.

Curves of the objective vs epoch grouped by activation and by architecture
(mean ± std over runs), bars of the final-epoch value with error bars, parameter count vs
accuracy, Optuna parameter importance and parallel coordinates, a CSV of all
trials, and one self-contained HTML page tying them together.
"""
from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweeplab.errors import UserError
from sweeplab.metrics import (
    TrialStatus,
    axis_label,
    display_scale,
    final_value,
    format_metric,
    is_fraction,
    ranked_label,
)
from sweeplab.tracking.artifacts import pyplot

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from optuna.distributions import BaseDistribution

# run id -> metric -> [(epoch, value)]
Histories = dict[str, dict[str, list[tuple[int, float]]]]
GROUPINGS = (("model.activation", "activation function"), ("model.name", "architecture"))


def find_parent_run(client: MlflowClient, sweep: str, experiment: str | None = None) -> Run:
    """The parent run of a sweep id, or of the latest launch of a sweep name."""
    experiments = [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    ids = [e.experiment_id for e in experiments if e is not None]
    if not ids:
        named = "named " + repr(experiment) if experiment else ""
        raise UserError(f"no MLflow experiment {named} in {client.tracking_uri}")
    runs = client.search_runs(
        ids, f"tags.`sweeplab.kind` = 'sweep' and tags.`sweeplab.sweep_id` = '{sweep}'", max_results=1
    )
    if not runs:
        runs = client.search_runs(ids, f"tags.`sweeplab.kind` = 'sweep' and params.sweep_name = '{sweep}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        sweeps = client.search_runs(ids, "tags.`sweeplab.kind` = 'sweep'")
        known = sorted({r.data.params["sweep_name"] for r in sweeps if "sweep_name" in r.data.params})
        raise UserError(f"no sweep {sweep!r} in the MLflow store {client.tracking_uri}. "
                        f"Sweeps there: {', '.join(known) or 'none yet'}")
    return runs[0]


def collect_trials(client: MlflowClient, parent: Run) -> tuple[pd.DataFrame, Histories]:
    """One row per child run (params, final metrics, status) and each run's per-epoch history."""
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=5000)
    rows: list[dict[str, Any]] = []
    histories: Histories = {}
    for run in children:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        row = {"run_id": run.info.run_id, "trial": tags.get("sweeplab.trial_name", run.info.run_name),
               "status": tags.get("sweeplab.status", run.info.status.lower()),
               "failure_reason": tags.get("sweeplab.failure_reason", ""),
               "restarts": int(tags.get("sweeplab.restarts", "0"))}
        row.update({k: _parse(v) for k, v in params.items()})
        row.update({f"final {k}": v for k, v in metrics.items()})
        rows.append(row)
        histories[run.info.run_id] = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in ("val/acc", "train/acc", "val/loss", "train/loss")
        }
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("trial").reset_index(drop=True)
    return frame, histories


def _completed(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs that ran every epoch: the only ones ranked, as in the terminal summary."""
    return frame[frame["status"] == TrialStatus.COMPLETED.value] if "status" in frame else frame


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def _png(fig: Any, folder: Path, name: str) -> Path:
    path = folder / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def curves_by(
    frame: pd.DataFrame, histories: Histories, key: str, label: str, metric: str, folder: Path
) -> Path | None:
    """Mean ± std of ``metric`` vs epoch for every value of ``key``, one panel per model."""
    if key not in frame or frame.empty:
        return None
    plt = pyplot()
    panels = sorted(frame["model.name"].unique()) if key != "model.name" and "model.name" in frame else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, model in zip(axes[0], panels, strict=True):
        subset = frame if model is None else frame[frame["model.name"] == model]
        for value, group in subset.groupby(key, sort=True):
            series = [histories[r][metric] for r in group["run_id"] if histories[r].get(metric)]
            if not series:
                continue
            length = max(len(s) for s in series)
            grid = np.full((len(series), length), np.nan)
            for i, s in enumerate(series):
                grid[i, : len(s)] = [v for _, v in s]
            scale = display_scale(metric)
            mean, std = np.nanmean(grid, 0) * scale, np.nanstd(grid, 0) * scale
            epochs = np.arange(1, length + 1)
            ax.plot(epochs, mean, marker="o", label=f"{value} (n={len(series)})")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        if is_fraction(metric):
            ax.set_ylim(top=100.5)  # the std band must not suggest accuracies above 100 %
        ax.set(xlabel="epoch", ylabel=axis_label(metric),
               title=f"{metric} by {label}" + (f" — {model}" if model else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig, folder, f"curves_by_{label.split()[0]}.png")


def summary_by(frame: pd.DataFrame, key: str, metric: str, mode: str) -> pd.DataFrame:
    """Each completed run's ranked value of ``metric``, per value of ``key`` (per model): mean, std
    and count over runs."""
    col = ranked_label(metric)
    done = _completed(frame)
    if key not in done or col not in done or done.empty:
        return pd.DataFrame()
    by = ["model.name", key] if key != "model.name" and "model.name" in done else [key]
    table = done.groupby(by)[col].agg(["mean", "std", "count"]).reset_index()
    table["std"] = table["std"].fillna(0.0)
    return table.sort_values(by[:-1] + ["mean"], ascending=[True] * (len(by) - 1) + [mode == "min"])


def bars_by(table: pd.DataFrame, key: str, label: str, metric: str, folder: Path) -> Path | None:
    if table.empty:
        return None
    plt = pyplot()
    scale = display_scale(metric)
    panels = sorted(table["model.name"].unique()) if key != "model.name" and "model.name" in table else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, model in zip(axes[0], panels, strict=True):
        sub = table if model is None else table[table["model.name"] == model]
        ax.bar(sub[key].astype(str), sub["mean"] * scale, yerr=sub["std"] * scale, capsize=4, color="#4c72b0")
        low = max(0.0, float((sub["mean"] - sub["std"]).min() * scale) - 5) if is_fraction(metric) else 0
        ax.set_ylim(bottom=low, top=100.5 if is_fraction(metric) else None)
        ax.set(ylabel=f"{axis_label(ranked_label(metric))} mean ± std",
               title=f"{label}" + (f" — {model}" if model else ""))
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig, folder, f"best_by_{label.split()[0]}.png")


def params_vs_metric(frame: pd.DataFrame, metric: str, folder: Path) -> Path | None:
    col = ranked_label(metric)
    if "final params" not in frame or col not in frame:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    scale = display_scale(metric)
    for model, group in frame.groupby("model.name") if "model.name" in frame else [("runs", frame)]:
        ax.scatter(group["final params"], group[col] * scale, label=model, alpha=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel=axis_label(col), title=f"parameter count vs {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, folder, "params_vs_metric.png")


def optuna_plots(frame: pd.DataFrame, space: dict[str, Any], metric: str, mode: str, folder: Path) -> list[Path]:
    """Parameter importance and parallel coordinates from an in-memory study rebuilt from the runs."""
    import warnings

    import optuna

    col = ranked_label(metric)
    done = _completed(frame)
    keys = [k if k != "model" else "model.name" for k in space]
    if col not in done or len(done) < 2 or not all(k in done for k in keys):
        return []
    dists: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        column = key if key != "model" else "model.name"
        if spec["type"] == "categorical":
            dists[column] = optuna.distributions.CategoricalDistribution(sorted({str(v) for v in done[column]}))
        elif spec["type"] == "int":
            dists[column] = optuna.distributions.IntDistribution(
                int(spec["low"]), int(spec["high"]), log=spec.get("log", False)
            )
        else:
            dists[column] = optuna.distributions.FloatDistribution(
                spec["low"], spec["high"], log=spec.get("log", False)
            )
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in done.iterrows():
        params = {k: (str(row[k]) if isinstance(d, optuna.distributions.CategoricalDistribution) else row[k])
                  for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[col])))
    out = []
    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from optuna.visualization import matplotlib as ovm

        if len(dists) > 1 and len({tuple(sorted(t.params.items())) for t in study.trials}) > 2:
            try:
                ax = ovm.plot_param_importances(study, target_name=metric)
                out.append(_png(ax.figure, folder, "param_importance.png"))
            except (ValueError, RuntimeError, ZeroDivisionError):
                plt.close("all")
        ax = ovm.plot_parallel_coordinate(study, target_name=metric)
        # matplotlib types Axes.figure as Figure | SubFigure; optuna draws on a top-level Figure
        ax.figure.set_size_inches(9, 4.5)  # type: ignore[union-attr]
        out.append(_png(ax.figure, folder, "parallel_coordinate.png"))
    return out


def build_report(
    client: MlflowClient, parent_run_id: str, out_dir: Path | None = None, log_to_parent: bool = False
) -> Path:
    """Write report.html (+ PNGs and trials.csv) to out_dir and/or the parent run's artifacts."""
    parent = client.get_run(parent_run_id)
    p = parent.data.params
    objectives = json.loads(p.get("objectives", '[["val/acc", "max"]]'))
    metric, mode = objectives[0]
    space = json.loads(p.get("space", "{}"))
    frame, histories = collect_trials(client, parent)
    if not frame.empty:  # each run's value as the sweep ranks it (metrics.RANKED_BY)
        frame[ranked_label(metric)] = [
            final_value(dict(histories[r][metric])) if histories[r].get(metric) else row.get(f"final {metric}")
            for r, (_, row) in zip(frame["run_id"], frame.iterrows(), strict=True)
        ]
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="sweeplab-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "trials.csv", index=False)

    figures: list[tuple[str, Path]] = []
    tables: list[tuple[str, pd.DataFrame]] = []
    if not frame.empty:
        for key, label in GROUPINGS:
            path = curves_by(frame, histories, key, label, metric, folder)
            if path:
                figures.append((f"{metric} vs epoch by {label} (mean ± std over runs)", path))
            table = summary_by(frame, key, metric, mode)
            if not table.empty and table[key].nunique() > 1:
                tables.append((f"{ranked_label(metric)} by {label}", table))
                bars = bars_by(table, key, label, metric, folder)
                if bars:
                    figures.append((f"{ranked_label(metric)} by {label}, error bars = std over runs", bars))
        for title, path in [(f"parameter count vs {metric}", params_vs_metric(frame, metric, folder))]:
            if path:
                figures.append((title, path))
        for path in optuna_plots(frame, space, metric, mode, folder):
            figures.append((path.stem.replace("_", " "), path))

    page = _html(parent, frame, tables, figures, metric, mode)
    (folder / "report.html").write_text(page)
    if log_to_parent:
        client.log_artifacts(parent_run_id, str(folder), "report")
    return folder / "report.html"


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(parent: Run, frame: pd.DataFrame, tables: list[tuple[str, pd.DataFrame]],
          figures: list[tuple[str, Path]], metric: str, mode: str) -> str:
    p = parent.data.params
    esc = html.escape
    parts = [f"<h1>sweep {esc(p.get('sweep_id', parent.info.run_name))}</h1>",
             "<p>" + " · ".join(f"<b>{esc(k)}</b> {esc(str(p.get(k, '')))}" for k in
                                ("sampler", "scheduler", "seeds", "num_configs", "max_epochs")) + "</p>",
             f"<p><b>search space</b> <code>{esc(p.get('space', ''))}</code></p>"]
    if not frame.empty and "status" in frame:
        counts = frame["status"].value_counts().to_dict()
        parts.append("<p><b>trials</b> " + ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.items())) + "</p>")
    for title, table in tables:
        key = table.columns[-4]
        per_model = "model.name" in table and key != "model.name"
        rows = "".join(
            "<tr>" + ("<td>" + esc(str(r["model.name"])) + "</td>" if per_model else "")
            + f"<td>{esc(str(r[key]))}</td>"
            + f"<td>{format_metric(metric, r['mean'])} ± {format_metric(metric, r['std'])}</td>"
            + f"<td>{int(r['count'])}</td></tr>"
            for _, r in table.iterrows())
        head = ("<th>model</th>" if per_model else "") + f"<th>{esc(key)}</th><th>mean ± std</th><th>runs</th>"
        parts.append(f"<h2>{esc(title)}</h2><table><tr>{head}</tr>{rows}</table>")
    for title, path in figures:
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='{_img(path)}'>")
    col = ranked_label(metric)
    if not frame.empty and col in frame:
        always = ("trial", "status", col, "final params", "model.name", "model.activation")
        shown = [c for c in frame.columns if c in always or c in json.loads(p.get("space", "{}"))]
        # completed runs first, best first, as the terminal summary orders them
        ordered = frame.assign(_done=frame["status"] != TrialStatus.COMPLETED.value).sort_values(
            ["_done", col], ascending=[True, mode == "min"], na_position="last")[shown]
        parts.append("<h2>all trials</h2>" + ordered.to_html(
            index=False, formatters={col: lambda v: format_metric(metric, v)}, na_rep="-",
            float_format=lambda v: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} img{max-width:100%} code{font-size:90%}")
    head = f"<meta charset='utf-8'><title>sweeplab report</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"
