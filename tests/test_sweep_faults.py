"""Fast checks of the sweep launch path's fault handling: which checkpoint a trial continues from when its
registered one is damaged, and the resume command an interrupted sweep prints. No Ray is started."""
from __future__ import annotations

import shlex

import torch

from sweeplab.program import program


def _checkpoints(folder, states):
    """A trial folder as Ray leaves it: checkpoint_000000, checkpoint_000001, ... each with a state.pt."""
    from ray import tune

    made = []
    for i, state in enumerate(states):
        path = folder / f"checkpoint_{i:06d}"
        path.mkdir(parents=True)
        torch.save(state, path / "state.pt")
        made.append(tune.Checkpoint(str(path)))
    return made


def test_a_truncated_checkpoint_falls_back_to_the_trials_last_intact_one(tmp_path):
    from sweeplab.sweep.trainable import readable_state

    first, second, third = _checkpoints(tmp_path, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    newest = tmp_path / "checkpoint_000002" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:50])  # cut off mid-write
    state, warning = readable_state(third)
    assert state == {"epoch": 2}
    assert f"{newest} is unreadable" in warning and "checkpoint_000001 (epoch 2)" in warning
    assert "\n" not in warning

    assert readable_state(second) == ({"epoch": 2}, "")  # an intact checkpoint: no warning


def test_a_trial_with_no_intact_checkpoint_restarts_from_epoch_1(tmp_path):
    from sweeplab.sweep.trainable import readable_state

    checkpoints = _checkpoints(tmp_path, [{"epoch": 1}, {"epoch": 2}])
    (tmp_path / "checkpoint_000000" / "state.pt").write_bytes(b"")
    (tmp_path / "checkpoint_000001" / "state.pt").unlink()
    state, warning = readable_state(checkpoints[-1])
    assert state is None
    assert "checkpoint_000001/state.pt is unreadable" in warning and warning.endswith("from epoch 1")


def test_the_resume_command_names_the_stores_and_no_secret(tmp_path, monkeypatch):
    from sweeplab.sweep.launch import resume_command

    monkeypatch.chdir(tmp_path)
    overrides = ["output_dir=runs", "train.epochs=3", "cluster.optuna_storage=postgresql://bob:s3cret@db:5432/optuna",
                 "tracking.uri=postgresql://bob:s3cret@db:5432/mlflow"]
    command = shlex.split(resume_command("smoke-20260101-120000-2", overrides))
    assert command == [*shlex.split(program()), "sweep", "smoke-20260101-120000-2", "--resume",
                       f"output_dir={tmp_path / 'runs'}", "cluster.optuna_storage=postgresql://bob:***@db:5432/optuna",
                       "tracking.uri=postgresql://bob:***@db:5432/mlflow"]


def test_the_printed_commands_locate_the_stores_from_any_folder(tmp_path, monkeypatch):
    """A resume or sync command printed by a sweep run in one folder, pasted in another, opens the same stores:
    each location given relative to the first folder is printed absolute, quoted where Hydra needs it."""
    from sweeplab.compose import compose
    from sweeplab.sweep.launch import resume_command, sync_command

    sweep_id = "smoke-20260101-120000-2"
    ran_in = tmp_path / "ran in"
    ran_in.mkdir()
    monkeypatch.chdir(ran_in)
    overrides = ["output_dir='mes données'", "tracking.uri=sqlite:///stores/mlflow.db",
                 "cluster.optuna_storage=stores/optuna.journal", "cluster.storage_path=ray", "train.epochs=3"]
    commands = {"sweep": resume_command(sweep_id, overrides),
                "sync": sync_command(sweep_id, overrides, compose(overrides))}
    monkeypatch.chdir(tmp_path)  # where its user pastes it
    for verb, command in commands.items():
        args = shlex.split(command)
        assert args[len(shlex.split(program())):][:2] == [verb, sweep_id]
        cfg = compose([a for a in args[len(shlex.split(program())) + 2:] if a != "--resume"])
        assert cfg.output_dir == str(ran_in / "mes données")
        assert cfg.tracking.uri == f"sqlite:///{ran_in / 'stores' / 'mlflow.db'}"
        assert cfg.cluster.optuna_storage == str(ran_in / "stores" / "optuna.journal")
        assert cfg.cluster.storage_path == str(ran_in / "ray")
    assert "train.epochs=3" in commands["sync"] and "train.epochs" not in commands["sweep"]  # recorded with the sweep
    assert f"\"output_dir='{ran_in / 'mes données'}'\"" in commands["sweep"]  # as its user would type it
