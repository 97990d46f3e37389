"""A user's mistake stops sweeplab at once with one line naming what was wrong and what would be
right: no traceback, nothing started, nothing created where it should not be."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sweeplab.errors import UserError
from sweeplab.sweep.plan import plan_sweep

SWEEPLAB = [sys.executable, "-m", "sweeplab.cli"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEPLAB, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


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
    done = _cli("train", *override.split(), f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
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
    for command in ("report", "best", "status"):
        args = [command, "smoke"] if command != "status" else [command]
        done = _cli(*args, f"output_dir={tmp_path / 'typo'}", cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "typo").exists()


def test_storage_passwords_are_not_printed():
    from sweeplab.tracking.store import redact

    assert redact("postgresql://sweeplab:s3cret@db:5432/optuna") == "postgresql://sweeplab:***@db:5432/optuna"
