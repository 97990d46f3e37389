"""Which Optuna storage a sweep opens: a journal file in a new output_dir, the SQLite file an earlier version
left in an old one, a database URL or a journal path from cluster.optuna_storage."""
from __future__ import annotations

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from sweep_helpers import cli

from sweeplab.errors import ConfigError
from sweeplab.sweep.sweep_id import claim_sweep_id
from sweeplab.tracking.study_store import configured_storage, default_storage, local_file, open_storage

OBJECTIVES = [("val/acc", "max")]


def _recorded_sweep(storage: str, name: str) -> str:
    """A study as a sweep leaves it: claimed under a fresh id, with the attributes the readers list it by."""
    sweep_id = claim_sweep_id(storage, name, OBJECTIVES)
    study = optuna.load_study(study_name=sweep_id, storage=open_storage(storage))
    for key, value in {"sweep_id": sweep_id, "name": name, "started": "2026-11-29 17:00:00",
                       "objectives": [list(o) for o in OBJECTIVES], "seeds": [0]}.items():
        study.set_user_attr(key, value)
    return sweep_id


def test_a_new_output_dir_gets_a_journal_file(tmp_path):
    storage = default_storage(tmp_path)
    assert storage == str(tmp_path.resolve() / "optuna.journal") and local_file(storage) == tmp_path / "optuna.journal"
    assert type(open_storage(storage)).__name__ == "JournalStorage"


def test_the_journal_is_written_in_optunas_own_format(tmp_path):
    """sweeplab appends without an fsync per write; Optuna's own file backend (what optuna-dashboard opens)
    reads every entry back."""
    storage = default_storage(tmp_path)
    sweep_id = _recorded_sweep(storage, "mine")
    study = optuna.load_study(study_name=sweep_id, storage=open_storage(storage))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)

    stock = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    read = optuna.load_study(study_name=sweep_id, storage=stock)
    assert [t.params for t in read.trials] == [t.params for t in study.trials]
    assert read.user_attrs["name"] == "mine" and all(t.datetime_complete for t in read.trials)


def test_an_output_dir_an_earlier_version_made_keeps_its_sqlite_file(tmp_path):
    """Its sweeps stay listed, and a new sweep there joins them, instead of starting a journal beside them."""
    old = f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    sweep_id = _recorded_sweep(old, "earlier")
    assert default_storage(tmp_path) == old

    done = cli("status", f"output_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 0 and sweep_id in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "optuna.journal").exists()


def test_a_configured_storage_is_a_database_url_or_a_journal_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://sweeplab@127.0.0.1:5432/optuna"
    assert configured_storage(url, "cluster.optuna_storage") == url and local_file(url) is None
    assert configured_storage("studies/a.journal", "cluster.optuna_storage") == str(tmp_path / "studies/a.journal")
    with pytest.raises(ConfigError, match=r"cluster.optuna_storage='postgres:/db' is neither a database URL"):
        configured_storage("postgres:/db", "cluster.optuna_storage")


def test_status_reads_a_journal_path_given_as_cluster_optuna_storage(tmp_path):
    journal = tmp_path / "shared" / "studies.journal"
    sweep_id = _recorded_sweep(str(journal), "elsewhere")
    done = cli("status", f"cluster.optuna_storage={journal}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert done.returncode == 0 and sweep_id in done.stdout, done.stdout + done.stderr
