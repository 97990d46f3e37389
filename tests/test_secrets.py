"""No secret is written down: a password in the Optuna storage URL or the tracking URI never reaches
MLflow (params, tags, artifacts), Optuna's attributes, Ray's experiment folder or the console."""
from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest
from servers import password_postgres
from sweep_helpers import interrupt_sweep, sweeplab

from sweeplab.program import program

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def checking_postgres():
    """A PostgreSQL server that checks passwords (scram-sha-256): a connection with the masked ``***`` in place of
    the password is refused there, as it would be on any real deployment, where the machine's trust-auth server would
    let it in. Its superuser's URL."""
    with password_postgres() as admin_url:
        yield admin_url


@pytest.fixture
def secret_role(checking_postgres):
    """A role with a password and two databases it owns (Optuna's and MLflow's) on that server: the secret, the
    Optuna storage URL and the tracking URI."""
    import psycopg

    tag = uuid.uuid4().hex[:8]
    role, secret = f"sweeplab_secret_{tag}", f"SECRET{tag}pw"
    names = [f"sweeplab_secret_optuna_{tag}", f"sweeplab_secret_mlflow_{tag}"]
    with psycopg.connect(f"{checking_postgres}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        for name in names:
            admin.execute(f"CREATE DATABASE {name} OWNER {role}")
    host = checking_postgres.rsplit("@", 1)[1]
    return secret, *[f"postgresql+psycopg://{role}:{secret}@{host}/{name}" for name in names]


def test_a_password_in_the_storage_urls_is_written_nowhere(secret_role, tmp_path):
    import optuna
    from mlflow import MlflowClient

    secret, optuna_url, mlflow_url = secret_role
    stores = [f"cluster.optuna_storage={optuna_url}", f"tracking.uri={mlflow_url}", f"output_dir={tmp_path / 'out'}"]
    done = sweeplab("sweep", "smoke", "train.epochs=1", "sweep.num_trials=2", "data.subset=300", *stores,
                    cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Token authentication is" not in done.stderr  # a local Ray's token auth is chosen, not warned about
    best = sweeplab("best", "smoke", *stores, cwd=tmp_path, timeout=120)
    assert best.returncode == 0, best.stderr
    assert best.stdout.startswith(f"{program()} train")
    # the report rebuilt reads the study with the password this command was given, not the recorded "***"
    report = sweeplab("report", "smoke", *stores, "--out", str(tmp_path / "report"), cwd=tmp_path, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "<h2>the Optuna study</h2>" in (tmp_path / "report" / "report.html").read_text()
    # given only the tracking store, it says how to give the password rather than trying the masked URL in vain
    bare = sweeplab("report", "smoke", f"tracking.uri={mlflow_url}", "--out", str(tmp_path / "bare"), cwd=tmp_path,
                    timeout=300)
    assert bare.returncode == 0, bare.stderr
    assert "its password is not recorded" in (tmp_path / "bare" / "report.html").read_text()
    console = "".join(r.stdout + r.stderr for r in (done, best, report, bare))
    assert secret not in console

    summaries = optuna.get_all_study_summaries(storage=optuna_url)
    assert summaries
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=optuna_url)
        assert secret not in json.dumps(study.user_attrs, default=str)
        for trial in study.trials:
            assert secret not in json.dumps([trial.params, trial.user_attrs, trial.system_attrs], default=str)
        recorded = " ".join(study.user_attrs["overrides"])
        assert "cluster.optuna_storage=postgresql+psycopg://" in recorded and ":***@" in recorded

    client = MlflowClient(tracking_uri=mlflow_url)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) >= 3  # the parent and a child per trial
    parent = next(r for r in runs if r.data.tags.get("sweeplab.kind") == "sweep")
    assert client.list_artifacts(parent.info.run_id, "report/optuna")  # the sweep's own report read the study
    for run in runs:
        assert secret not in json.dumps([run.data.params, run.data.tags]), run.info.run_name
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl" / run.info.run_id)))
        for path in folder.rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path

    written = [p for p in tmp_path.rglob("*") if p.is_file() and "dl" not in p.relative_to(tmp_path).parts]
    assert any("ray" in p.parts for p in written)  # Ray's experiment folder: trials, tuner.pkl, searcher state
    leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
    assert leaks == []


def test_an_interrupted_sweep_on_password_stores_resumes_with_the_password_retyped(secret_role, tmp_path):
    """The printed resume command shows the passwords as ``***``; with them retyped, as docs/reliability.md asks, the
    sweep resumes on stores that check them and completes."""
    import optuna

    secret, optuna_url, mlflow_url = secret_role
    stores = [f"cluster.optuna_storage={optuna_url}", f"tracking.uri={mlflow_url}", f"output_dir={tmp_path / 'out'}"]
    output, code = interrupt_sweep([*stores, "sweep.num_trials=2", "sweep.max_concurrent=1", "train.epochs=2",
                                    "sweep.scheduler.kind=none", "data.subset=300"],
                                   "trial_000_seed0 epoch  1/2", cwd=tmp_path)
    assert code == 130 and secret not in output, output[-3000:]
    lines = output.splitlines()
    printed = shlex.split(lines[next(i for i, line in enumerate(lines) if "continue it with:" in line) + 1])
    command = printed[len(shlex.split(program())):]
    # each store whose password it masks is on it, for its user to retype: the tracking URI too, which the resumed
    # sweep otherwise took from the recorded overrides, masked, and was refused
    assert command[:1] == ["sweep"] and {a.split("=")[0] for a in command if ":***@" in a} == {
        "cluster.optuna_storage", "tracking.uri"}
    resumed = sweeplab(*[a.replace(":***@", f":{secret}@") for a in command], cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert secret not in resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name=command[1], storage=optuna_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
