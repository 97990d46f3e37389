"""A user's mistake stops sweeplab at once with one line naming what was wrong and what would be
right: no traceback, nothing started, nothing created where it should not be."""
from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import cli, sweeplab

from sweeplab.errors import UserError
from sweeplab.sweep.plan import plan_sweep


@pytest.mark.parametrize(
    "override, named",
    [
        ("optimizer.momentum=-0.5", "optimizer.momentum"),
        ("optimizer.betas=[1.5,0.9]", "optimizer.betas"),
        ("train.device=gpu", "train.device"),
        ("train.eval_batch_size=0", "train.eval_batch_size"),
        ("model=mlp model.hidden_sizes=[-5]", "model.hidden_sizes"),
        ("model=vgg model.stages=[]", "model.stages"),
        ("model=alexnet model.dropout=1.5", "model.dropout"),
        ("model=rnn model.cell=transformer", "model.cell"),
        ("tracking=server tracking.uri=http://127.0.0.1:9", "http://127.0.0.1:9"),
    ],
)
def test_train_rejects_bad_values_before_any_training(override, named, tmp_path):
    done = cli("train", *override.split(), f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert done.returncode == 2
    assert named in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "out" / "train").exists()  # rejected before a run folder was made


def _sweep_file(folder: Path, body: str, name: str = "mine.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("# @package _global_\ndefaults:\n  - override /model: mlp\n  - _self_\n" + body)
    return path


SPACE = "  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1, log: true}}\n"


@pytest.mark.parametrize(
    "body, named",
    [
        ("sweep:\n  metric: val/accuracy\n" + SPACE, "val/accuracy"),
        ("sweep:\n  seeds: [0, 0]\n" + SPACE, "sweep.seeds"),
        ("train: {epochs: 2}\nsweep:\n  scheduler: {kind: asha, grace_period: 5}\n" + SPACE, "grace_period"),
        ("sweep:\n  space: {model.activation: {type: categorical, choices: [relu, nosuch]}}\n", "nosuch"),
        ("sweep:\n  space: {model.hidden_sizes: {type: int, low: 8, high: 64}}\n", "model.hidden_sizes"),
        ("sweep:\n  space: {optimizer.lr: {type: float, low: 0.0, high: 0.1}}\n", "optimizer.lr"),
        ("sweep:\n  space: {optimizer.lr: {type: float, low: 0.1, high: 0.01}\n", "YAML"),
        ("data: {name: cifar10, root: /nonexistent}\nmodel: {name: mlp}\nsweep:\n" + SPACE, "cifar-10-batches-py"),
    ],
)
def test_bad_sweep_files_are_rejected_with_the_key_named(body, named, tmp_path):
    path = _sweep_file(tmp_path, body)
    with pytest.raises(UserError) as err:
        plan_sweep(str(path), [f"output_dir={tmp_path}"])
    assert named in str(err.value)


def test_a_sweep_file_may_live_in_a_folder_named_like_a_config_group(tmp_path):
    path = _sweep_file(tmp_path / "train", "train: {epochs: 1}\nsweep:\n" + SPACE)
    plan = plan_sweep(str(path), [f"output_dir={tmp_path}"])
    assert plan.cfg.model.name == "mlp" and plan.cfg.train.epochs == 1


def test_read_only_commands_do_not_create_stores(tmp_path):
    for command in ("report", "best", "status", "dashboard"):
        args = [command, "smoke"] if command != "status" else [command]
        done = cli(*args, f"output_dir={tmp_path / 'typo'}", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
    assert not (tmp_path / "typo").exists()


def test_an_unreachable_storage_is_named_without_its_password(tmp_path):
    storage = "postgresql://sweeplab:s3cret@127.0.0.1:9/optuna"  # nothing listens on port 9
    done = cli("best", "smoke", "cluster=compose", f"cluster.optuna_storage={storage}", f"output_dir={tmp_path}",
               cwd=tmp_path)
    assert done.returncode == 2
    assert "postgresql://sweeplab:***@127.0.0.1:9/optuna" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_the_installed_command_reports_a_mistake_in_one_line_without_a_traceback(tmp_path):
    """Across the process boundary, as a shell sees it: exit status 2, one line on stderr, nothing on stdout."""
    done = sweeplab("train", "model=nosuch", f"output_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("sweeplab train: error:") and "nosuch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args, named", [(["sweep"], "sweep"), (["train", "--epochs", "3"], "--epochs"),
                                         (["nosuch"], "nosuch")])
def test_a_malformed_command_line_gets_usage_and_exit_2(args, named, tmp_path):
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: sweeplab" in done.stderr and named in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
