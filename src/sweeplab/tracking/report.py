"""A sweep's comparison report, built from the MLflow store alone.

Curves of the objective vs epoch grouped by activation (mean ± std over runs) and by architecture (each at its
best setting, over its seeds), bars of the final-epoch value with error bars, parameter count vs
accuracy, Optuna parameter importance and parallel coordinates, a CSV of all
trials, and one self-contained HTML page tying them together.
"""
from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sweeplab.config.schema import SWEEP_NAME
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
from sweeplab.redact import MASK, redact
from sweeplab.tracking.artifacts import pyplot
from sweeplab.tracking.runs import EXPLOITED_PREFIX

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from mlflow.entities import Run

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
    runs: list[Run] = []
    if re.fullmatch(SWEEP_NAME, sweep):  # no sweep has another name, and a quote would break the filter
        runs = client.search_runs(
            ids, f"tags.`sweeplab.kind` = 'sweep' and tags.`sweeplab.sweep_id` = '{sweep}'", max_results=1
        ) or client.search_runs(ids, f"tags.`sweeplab.kind` = 'sweep' and params.sweep_name = '{sweep}'",
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
        # a PBT exploit's values replace the ones it was asked with: the run's weights are the donor's since
        row.update({k.removeprefix(EXPLOITED_PREFIX): _parse(v) for k, v in tags.items()
                    if k.startswith(EXPLOITED_PREFIX)})
        row.update({f"final {k}": v for k, v in metrics.items()})
        rows.append(row)
        histories[run.info.run_id] = {
            key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=_logged)]
            for key in ("val/acc", "train/acc", "val/loss", "train/loss")
        }
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("trial").reset_index(drop=True)
    if "model" in frame:  # the searched model option (vgg16, whose model.name is vgg) names the architecture
        frame["model.name"] = frame["model"].where(frame["model"].notna(), frame.get("model.name"))
    return frame, histories


def _logged(metric: Any) -> tuple[int, int]:
    """A value's place in its history: by step, a step logged again (a PBT exploit of a donor behind) after the
    value logged first."""
    return metric.step, metric.timestamp


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
    frame: pd.DataFrame, histories: Histories, key: str, label: str, metric: str, folder: Path,
    mode: str = "max",
) -> Path | None:
    """Mean ± std of ``metric`` vs epoch for every value of ``key``, one panel per model; several architectures
    each at its best setting, as ``summary_by`` ranks them."""
    if key not in frame or frame.empty:
        return None
    if key == "model.name" and frame[key].nunique() > 1 and ranked_label(metric) in frame:
        frame = at_best_settings(_completed(frame), ranked_label(metric), mode)
    plt = pyplot()
    panels = sorted(frame["model.name"].unique()) if key != "model.name" and "model.name" in frame else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, model in zip(axes[0], panels, strict=True):
        subset = frame if model is None else frame[frame["model.name"] == model]
        for value, group in subset.groupby(key, sort=True):
            series = [histories[r][metric] for r in group["run_id"] if histories[r].get(metric)]
            if not series:
                continue
            epochs, grid = aligned(series)
            scale = display_scale(metric)
            mean, std = np.nanmean(grid, 0) * scale, np.nanstd(grid, 0) * scale
            ax.plot(epochs, mean, marker="o", label=f"{value} (n={len(series)})")
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        if is_fraction(metric):
            ax.set_ylim(top=100.5)  # the std band must not suggest accuracies above 100 %
        ax.set(xlabel="epoch", ylabel=axis_label(metric),
               title=f"{metric} by {label}" + (f" — {model}" if model else ""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no curve (every run invalid): no legend, no matplotlib warning
            ax.legend(fontsize=8)
    return _png(fig, folder, f"curves_by_{label.split()[0]}.png")


def aligned(series: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs' histories on one grid: the steps any run logged, and a row per run (NaN where it has no value). By
    step, not by position: a step logged twice (a PBT exploit of a donor behind) keeps its later value."""
    steps = np.array(sorted({step for history in series for step, _ in history}))
    column = {step: j for j, step in enumerate(steps)}
    grid = np.full((len(series), len(steps)), np.nan)
    for i, history in enumerate(series):
        for step, value in history:
            grid[i, column[step]] = value
    return steps, grid


def summary_by(frame: pd.DataFrame, key: str, metric: str, mode: str) -> pd.DataFrame:
    """Each completed run's ranked value of ``metric``, per value of ``key`` (per model): mean, std
    and count over runs; the architectures each at its best setting, over that setting's seeds, as the terminal
    summary ranks them (over every setting, a good architecture tried at a hopeless learning rate ranked last)."""
    col = ranked_label(metric)
    done = _completed(frame)
    if key not in done or col not in done or done.empty:
        return pd.DataFrame()
    if key == "model.name" and done[key].nunique() > 1:
        done = at_best_settings(done, col, mode)
    by = ["model.name", key] if key != "model.name" and "model.name" in done else [key]
    # the population's std (ddof 0), as the terminal summary, the study's attributes and the curves' bands
    table = done.groupby(by)[col].agg(mean="mean", std=lambda runs: runs.std(ddof=0), count="count").reset_index()
    return table.sort_values(by[:-1] + ["mean"], ascending=[True] * (len(by) - 1) + [mode == "min"])


def at_best_settings(done: pd.DataFrame, col: str, mode: str) -> pd.DataFrame:
    """The completed runs of each model's best configuration (all its seeds), by their mean of ``col``."""
    if "optuna_trial" not in done or "model.name" not in done:
        return done
    means = done.groupby(["model.name", "optuna_trial"])[col].mean()
    best = set(means.groupby(level=0).idxmax() if mode == "max" else means.groupby(level=0).idxmin())
    return done[[pair in best for pair in zip(done["model.name"], done["optuna_trial"], strict=True)]]


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
    done = _completed(frame)  # ranked at their final epoch, as the tables: no run stopped partway
    for model, group in done.groupby("model.name") if "model.name" in done else [("runs", done)]:
        ax.scatter(group["final params"], group[col] * scale, label=model, alpha=0.8)
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters", ylabel=axis_label(col), title=f"parameter count vs {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, folder, "params_vs_metric.png")


# optuna.visualization's plotly figures of the real study: file name -> (title, function)
OPTUNA_FIGURES = {
    "optimization_history": ("optimization history", "plot_optimization_history"),
    "intermediate_values": ("every trial's objective by epoch, stopped trials included", "plot_intermediate_values"),
    "param_importances": ("parameter importance", "plot_param_importances"),
    "parallel_coordinate": ("parallel coordinates", "plot_parallel_coordinate"),
    "slice": ("objective vs each parameter", "plot_slice"),
    "contour": ("objective over pairs of parameters", "plot_contour"),
}


def load_study(storage: str | None, sweep_id: str) -> optuna.Study | None:
    """The sweep's own Optuna study, or None where its storage is not at hand (only the MLflow store
    travelled, or the database is down): the report then goes without the Optuna figures."""
    import optuna

    from sweeplab.tracking.study_store import local_file, open_storage

    if not storage or ((path := local_file(storage)) is not None and not path.exists()):
        return None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        return optuna.load_study(study_name=sweep_id, storage=open_storage(storage))
    except Exception:  # a study that is not there, a database that does not answer
        return None


def draws_importance(searched: int) -> bool:
    """Whether the report draws Optuna's parameter importance for a study that searches ``searched`` parameters
    (one parameter has nothing to be more important than)."""
    return searched >= 2


def optuna_figures(study: optuna.Study, metric: str) -> dict[str, Any]:
    """Interactive (plotly) figures of the study, each only where it has something to show: history and
    intermediate values (stopped trials included), importance, parallel coordinates, slice, contour."""
    import warnings

    from optuna import visualization
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    params = {name for t in complete for name in t.params}
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None  # noqa: E731  (the first objective ranks, as everywhere)
    wanted = {"optimization_history": len(complete) >= 1,
              "intermediate_values": any(t.intermediate_values for t in study.get_trials(deepcopy=False)),
              "param_importances": len(complete) >= 3 and draws_importance(len(params)),
              "parallel_coordinate": len(complete) >= 2 and len(params) >= 1,
              "slice": len(complete) >= 1 and len(params) >= 1,
              "contour": len(complete) >= 3 and len(params) >= 2}
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning and empty-plot warnings
        for name, (_, function) in OPTUNA_FIGURES.items():
            if not wanted[name]:
                continue
            kwargs: dict[str, Any] = {} if name == "intermediate_values" else {"target": target, "target_name": metric}
            if name == "param_importances":  # PED-ANOVA: no random forest to fit (fANOVA's took seconds)
                from optuna.importance import PedAnovaImportanceEvaluator  # imports scikit-learn: 2 s

                kwargs["evaluator"] = PedAnovaImportanceEvaluator()
            try:
                out[name] = getattr(visualization, function)(study, **kwargs)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importance of a constant objective
                continue
    return out


def plotly_js() -> str:
    """plotly.js itself, inlined once per page: the report opens without internet."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def study_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial of the study as Optuna holds it (state, values, params, sweeplab's status)."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs"))
    keep = [c for c in frame.columns if not c.startswith("user_attrs_") or c in ("user_attrs_status",
                                                                                 "user_attrs_epochs")]
    frame = frame[keep].rename(columns=lambda c: c.removeprefix("user_attrs_").removeprefix("params_"))
    return frame.astype({c: str for c in frame.columns if frame[c].dtype == object})


def log_report(client: MlflowClient, parent_run_id: str, optuna_storage: str | None = None) -> None:
    """The report (below) into the parent run's artifacts only, drawn in a temporary folder that goes once logged."""
    with tempfile.TemporaryDirectory(prefix="sweeplab-report-") as folder:
        build_report(client, parent_run_id, Path(folder), True, optuna_storage)


def build_report(
    client: MlflowClient, parent_run_id: str, out_dir: Path, log_to_parent: bool = False,
    optuna_storage: str | None = None,
) -> Path:
    """Write report.html (+ PNGs and trials.csv) to out_dir, and with ``log_to_parent`` to the parent run's
    artifacts too; the path of report.html. The Optuna figures come from the sweep's study in ``optuna_storage``
    (default: the storage the sweep recorded); with ``log_to_parent`` they are also logged one by one
    (``mlflow.log_figure``), with the study's trials as a table (``mlflow.log_table``)."""
    parent = client.get_run(parent_run_id)
    p = parent.data.params
    objectives = json.loads(p.get("objectives", '[["val/acc", "max"]]'))
    metric, mode = objectives[0]
    frame, histories = collect_trials(client, parent)
    if not frame.empty:  # each run's value as the sweep ranks it (metrics.RANKED_BY)
        frame[ranked_label(metric)] = [
            final_value(dict(histories[r][metric])) if histories[r].get(metric) else row.get(f"final {metric}")
            for r, (_, row) in zip(frame["run_id"], frame.iterrows(), strict=True)
        ]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "trials.csv", index=False)

    figures: list[tuple[str, Path]] = []
    tables: list[tuple[str, pd.DataFrame]] = []
    if not frame.empty:
        # a grouping with one value (one activation) only repeats the all-runs curve: drawn once, by architecture
        varied = [(key, label) for key, label in GROUPINGS if key in frame and frame[key].nunique() > 1]
        for key, label in varied or GROUPINGS[-1:]:
            over = "over the seeds of each one's best setting" if key == "model.name" else "over runs"
            path = curves_by(frame, histories, key, label, metric, folder, mode)
            if path:
                figures.append((f"{metric} vs epoch by {label} (mean ± std {over})", path))
            table = summary_by(frame, key, metric, mode)
            if not table.empty and table[key].nunique() > 1:
                tables.append((f"{ranked_label(metric)} by {label}", table))
                bars = bars_by(table, key, label, metric, folder)
                if bars:
                    figures.append((f"{ranked_label(metric)} by {label}, error bars = std {over}", bars))
        for title, path in [(f"parameter count vs {metric}", params_vs_metric(frame, metric, folder))]:
            if path:
                figures.append((title, path))
    sweep_id = parent.data.tags.get("sweeplab.sweep_id", p.get("sweep_id", parent.info.run_name))
    study = load_study(optuna_storage or p.get("optuna_storage"), sweep_id)
    interactive = optuna_figures(study, metric) if study is not None else {}

    page = _html(parent, frame, tables, figures, metric, mode, interactive, study is not None)
    (folder / "report.html").write_text(page)
    if log_to_parent:
        client.log_artifacts(parent_run_id, str(folder), "report")
        for name, figure in interactive.items():
            client.log_figure(parent_run_id, figure, f"report/optuna/{name}.html")
        table = "report/optuna/trials.json"  # log_table adds to a table logged before (a retried end)
        logged = {a.path for a in client.list_artifacts(parent_run_id, "report/optuna")}
        if study is not None and table not in logged:
            client.log_table(parent_run_id, study_table(study), table)
    return folder / "report.html"


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(parent: Run, frame: pd.DataFrame, tables: list[tuple[str, pd.DataFrame]],
          figures: list[tuple[str, Path]], metric: str, mode: str, interactive: dict[str, Any],
          study_found: bool) -> str:
    p = parent.data.params
    esc = html.escape
    parts = [f"<h1>sweep {esc(p.get('sweep_id', parent.info.run_name))}</h1>",
             "<p>" + " · ".join(f"<b>{esc(k)}</b> {esc(str(p.get(k, '')))}" for k in
                                ("sampler", "scheduler", "seeds", "num_configs", "max_epochs")) + "</p>",
             f"<p><b>search space</b> <code>{esc(p.get('space', ''))}</code></p>"]
    if not frame.empty and "status" in frame:
        counts = frame["status"].value_counts().to_dict()
        parts.append("<p><b>runs</b> (one per configuration and seed) "
                     + ", ".join(f"{n} {esc(s)}" for s, n in sorted(counts.items())) + "</p>")
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
    if interactive:
        parts.append("<h2>the Optuna study</h2>")
    elif not study_found:
        storage = p.get("optuna_storage", "none recorded")
        how = ("; its password is not recorded: rebuild with the whole URL, "
               "sweeplab report SWEEP cluster.optuna_storage=URL" if MASK in storage else "")
        parts.append(f"<p>The sweep's Optuna study is not reachable from here ({esc(redact(storage))}{esc(how)}): "
                     "no Optuna figures.</p>")
    for name, figure in interactive.items():
        parts.append(f"<h3>{esc(OPTUNA_FIGURES[name][0])}</h3><div class='optuna' id='optuna-{name}'>"
                     + figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}") + "</div>")
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
    script = f"<script>{plotly_js()}</script>" if interactive else ""
    head = f"<meta charset='utf-8'><title>sweeplab report</title><style>{style}</style>{script}"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(parts)}</body></html>"
