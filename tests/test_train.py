"""The training function every caller shares, and the ``sweeplab`` command around it."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from sweeplab.compose import compose
from sweeplab.config.schema import MemoryFormat
from sweeplab.data import DATASETS
from sweeplab.data import datasets as datasets_module
from sweeplab.models import MODELS, build_model
from sweeplab.models.layers import ACTIVATIONS, POOLINGS
from sweeplab.train import StopTraining, granted_device, memory_format, train

REPORTED = ("train/loss", "train/acc", "val/loss", "val/acc", "epoch_seconds", "samples_per_second", "lr")
TIMING = ("epoch_seconds", "samples_per_second")  # wall-clock: the only values allowed to differ

MLP_MNIST5K = ["model=mlp", "data=mnist5k", "data.subset=500", "train.epochs=2"]
# Small, but with every source of state a resume must restore: shuffling and augmentation (the
# batch generator), dropout (torch's RNG), momentum buffers and a cosine learning-rate schedule.
SMALL_ALEXNET_DIGITS = ["model=alexnet", "model.filters=[4,4,4,4,4]", "model.fc_sizes=[16,16]", "model.dropout=0.5",
                        "data=digits", "data.subset=300", "data.augment=true", "train.batch_size=32",
                        "train.lr_schedule=cosine", "optimizer=sgd", "optimizer.momentum=0.9", "train.epochs=3"]


def config(*overrides: str):
    return compose(["train.device=cpu", "tracking=none", *overrides])


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def fresh_train(cfg, **kwargs):
    getattr(datasets_module, "_CACHE", {}).clear()  # load the data again, as a new process would
    return train(cfg, **kwargs)


def test_same_config_and_seed_give_identical_runs():
    cfg = config(*MLP_MNIST5K)
    first, second = fresh_train(cfg), fresh_train(cfg)
    assert len(first.history) == 2
    assert [without_timing(m) for m in first.history] == [without_timing(m) for m in second.history]
    assert_same_weights(first.model, second.model)
    other = fresh_train(config(*MLP_MNIST5K, "train.seed=1"))
    assert [without_timing(m) for m in other.history] != [without_timing(m) for m in first.history]


def test_an_epoch_never_ends_in_a_batch_of_one_image_that_batch_norm_cannot_train_on():
    """300 digits keep 299 training images; at batch 298 the last batch would hold one, which GoogLeNet's batch norm
    sees at 1x1 (one value per channel) and refuses. That image waits for the next epoch's shuffle."""
    from sweeplab.data.batches import training_starts

    assert list(training_starts(299, 298)) == [0] and list(training_starts(300, 298)) == [0, 298]
    assert list(training_starts(1, 64)) == [0] and list(training_starts(129, 64)) == [0, 64]
    cfg = config("model=googlenet", "model.pool_after=[1,2]", "data=digits", "data.subset=300", "train.epochs=1",
                 "train.batch_size=298")
    result = train(cfg)
    assert math.isfinite(result.history[-1]["train/loss"])


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    cfg = config(*SMALL_ALEXNET_DIGITS)
    uninterrupted = fresh_train(cfg)

    checkpoint = tmp_path / "checkpoint.pt"

    def crash_after_first_epoch(metrics, make_checkpoint):
        torch.save(make_checkpoint(), checkpoint)  # as Ray Tune would: serialised, not kept in memory
        raise StopTraining

    interrupted = fresh_train(cfg, reporter=crash_after_first_epoch)
    assert len(interrupted.history) == 1

    state = torch.load(checkpoint)  # torch's safe default (weights_only=True) must be able to read it
    assert state["epoch"] == 1
    resumed_epochs = []
    resumed = fresh_train(cfg, resume=state, reporter=lambda m, _c: resumed_epochs.append(m["epoch"]))
    assert resumed_epochs == [2, 3]
    assert [without_timing(m) for m in resumed.history] == [without_timing(m) for m in uninterrupted.history]
    assert without_timing(resumed.metrics) == without_timing(uninterrupted.metrics)
    assert_same_weights(resumed.model, uninterrupted.model)


@pytest.mark.parametrize(("choice", "device", "model", "expected"), [
    ("auto", "cpu", "lenet", torch.channels_last),
    ("auto", "cuda", "lenet", torch.contiguous_format),
    ("auto", "cpu", "mlp", torch.contiguous_format),
    ("auto", "cpu", "rnn", torch.contiguous_format),
    ("contiguous", "cpu", "lenet", torch.contiguous_format),
    ("channels_last", "cuda", "lenet", torch.channels_last),
    ("channels_last", "cpu", "mlp", torch.contiguous_format),  # no convolution: its images stay as they are
])
def test_a_convnet_on_the_cpu_is_laid_out_channels_last_unless_asked_otherwise(choice, device, model, expected):
    net = build_model(config(f"model={model}").model, (1, 28, 28), 10)
    assert memory_format(MemoryFormat(choice), torch.device(device), net) == expected


def test_a_convnet_trains_the_same_curve_channels_last_as_contiguous():
    """Dropout, augmentation, momentum and a schedule: only the sums' order may differ between the layouts."""
    nhwc = fresh_train(config(*SMALL_ALEXNET_DIGITS))
    nchw = fresh_train(config(*SMALL_ALEXNET_DIGITS, "train.memory_format=contiguous"))
    def last_conv(result) -> torch.Tensor:  # the first has 1 input channel: either layout would fit it
        return [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight

    assert last_conv(nhwc).is_contiguous(memory_format=torch.channels_last) and not last_conv(nhwc).is_contiguous()
    assert last_conv(nchw).is_contiguous()
    assert len(nhwc.history) == len(nchw.history) == 3
    for a, b in zip(nhwc.history, nchw.history, strict=True):
        assert without_timing(a) == pytest.approx(without_timing(b), rel=1e-4, abs=1e-6)
    for key, value in nhwc.model.state_dict().items():
        torch.testing.assert_close(value, nchw.model.state_dict()[key], rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def mlp_run():
    """Two epochs of the mlp on 500 mnist5k images, with what its reporter saw."""
    seen = []
    cfg = config(*MLP_MNIST5K, "train.lr_schedule=cosine")
    result = fresh_train(cfg, reporter=lambda m, checkpoint: seen.append((m, checkpoint())))
    return cfg, result, seen


def test_reporter_gets_every_metric_each_epoch(mlp_run):
    cfg, result, seen = mlp_run
    assert [m["epoch"] for m, _ in seen] == [1, 2]
    for metrics, state in seen:
        assert set(REPORTED) <= set(metrics)
        assert all(math.isfinite(metrics[k]) for k in REPORTED)
        assert 0.0 <= metrics["train/acc"] <= 1.0 and 0.0 <= metrics["val/acc"] <= 1.0
        assert metrics["train/loss"] > 0 and metrics["val/loss"] > 0
        assert metrics["epoch_seconds"] > 0 and metrics["samples_per_second"] > 0
        assert state["epoch"] == metrics["epoch"]  # the checkpoint is of the epoch just reported
    lrs = [m["lr"] for m, _ in seen]
    assert lrs[0] == pytest.approx(cfg.optimizer.lr)
    assert lrs[1] == pytest.approx(cfg.optimizer.lr * 0.5)  # cosine over 2 epochs: halfway down after one
    assert seen[1][0]["val/acc"] > 0.5  # it learns: chance is 0.1
    assert result.metrics["val/acc"] == seen[-1][0]["val/acc"]


def test_stop_training_from_the_reporter_ends_early():
    calls = []

    def stop_at_once(metrics, _checkpoint):
        calls.append(metrics["epoch"])
        raise StopTraining

    result = fresh_train(config(*MLP_MNIST5K, "train.epochs=5"), reporter=stop_at_once)
    assert calls == [1]
    assert len(result.history) == 1 and result.metrics["epoch"] == 1


def test_mse_loss_trains():
    result = fresh_train(config("model=mlp", "data=mnist5k", "data.subset=1000", "train.epochs=3", "train.loss=mse"))
    losses = [m["train/loss"] for m in result.history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]
    # 0.5 * sum((softmax - one_hot)^2) never exceeds 1; cross-entropy starts near ln(10) = 2.3
    assert all(0 < m["train/loss"] <= 1 and 0 < m["val/loss"] <= 1 for m in result.history)
    assert result.metrics["val/acc"] > 0.5


@pytest.mark.slow
def test_lenet_on_mnist5k_reaches_90_percent_in_two_epochs():
    result = fresh_train(config("model=lenet", "data=mnist5k", "train.epochs=2"))
    assert result.metrics["val/acc"] > 0.90


# --- the command line ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (["model=simple_convnet", "model.conv.filter_size=40"], ["conv1", "28x28", "filter_size=40"]),
        (["model=nosuch"], ["nosuch", *MODELS.names()]),
        (["optimizer.lrr=0.1"], ["optimizer.lrr"]),
    ],
    ids=["filter-too-big", "unknown-model", "misspelled-key"],
)
def test_cli_train_with_bad_input_fails_with_one_clear_line(run_cli, tmp_path, args, expected):
    proc = run_cli("train", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for part in expected:
        assert part in lines[0]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("weights.pt"))


def test_cli_train_writes_a_usable_run_folder(run_cli, tmp_path):
    proc = run_cli("train", "model=mlp", "data=digits", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    folders = list((tmp_path / "outputs").glob("train/*"))
    assert len(folders) == 1
    folder = folders[0]
    assert not [p for p in tmp_path.iterdir() if p.name != "outputs"]  # nothing written outside output_dir

    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.model.name == "mlp" and saved.data.name == "digits" and saved.train.epochs == 2
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(REPORTED) <= set(rows[0])
    final = json.loads((folder / "final_metrics.json").read_text())
    assert final["val/acc"] == pytest.approx(float(rows[-1]["val/acc"]))
    assert 0.5 < final["val/acc"] <= 1.0

    model = build_model(saved.model, DATASETS.get("digits").input_shape, DATASETS.get("digits").num_classes)
    model.load_state_dict(torch.load(folder / "weights.pt"))  # the weights fit the saved config

    progress = [line for line in proc.stdout.splitlines() if "val/acc" in line]
    assert len(progress) >= 3  # one line per epoch, then the final metrics
    assert f"{final['val/acc'] * 100:.2f}%" in progress[-1]


def test_cli_models_lists_every_model_activation_and_pooling(run_cli):
    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    first_words = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(MODELS.names()) <= first_words
    for name in [*ACTIVATIONS.names(), *POOLINGS.names()]:
        assert name in proc.stdout


def test_cli_datasets_lists_every_dataset(run_cli):
    proc = run_cli("datasets")
    assert proc.returncode == 0, proc.stderr
    first_words = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(DATASETS.names()) <= first_words


@pytest.mark.parametrize("device, gpu_ids, expected", [
    ("auto", [], "cpu"),  # Ray granted no GPU: a GPU the trial can see is not its own
    ("auto", [0], "auto"), ("cpu", [0], "cpu"), ("cuda", [], "cuda"),
    ("cuda:1", [1], "cuda"),  # Ray shows the trial its granted GPU alone, as cuda:0
    ("cuda:1", [2, 3], "cuda:1"),  # the second of its two
])
def test_a_trial_trains_on_a_gpu_only_where_ray_granted_one(device, gpu_ids, expected):
    assert granted_device(device, gpu_ids) == expected
