"""Fused trials: a pack's members train as the same trials would alone."""
from __future__ import annotations

import math

import pytest
import torch

from sweeplab.compose import compose
from sweeplab.errors import ConfigError
from sweeplab.fused import fusable, train_fused, train_pack
from sweeplab.fusion import group_for_fusion, should_fuse
from sweeplab.train import StopTraining, TrainingDiverged, train

LENET = ["tracking=none", "train.device=cpu", "model=lenet", "data=mnist5k", "data.subset=300",
         "train.epochs=2", "train.batch_size=32", "train.lr_schedule=cosine"]
MLP = ["tracking=none", "train.device=cpu", "model=mlp", "data=digits", "data.subset=300",
       "train.epochs=2", "train.batch_size=32"]
MEMBERS = [  # differ in everything a pack may differ in
    ["optimizer.lr=0.05", "optimizer.momentum=0.9", "train.seed=0"],
    ["optimizer.lr=0.02", "optimizer.momentum=0.0", "optimizer.weight_decay=0.001", "train.seed=1"],
    ["optimizer.lr=0.1", "optimizer.momentum=0.5", "train.seed=2"],
]
CURVE = ("train/loss", "val/loss")


def assert_same_curve(fused, alone, rtol=1e-4, images=1):
    """Same epochs, losses equal up to float reassociation, accuracies equal to within ``images`` images."""
    assert [h["epoch"] for h in fused.history] == [h["epoch"] for h in alone.history]
    for f, a in zip(fused.history, alone.history, strict=True):
        assert f["lr"] == a["lr"]
        for key in CURVE:
            assert f[key] == pytest.approx(a[key], rel=rtol), key
        assert round(abs(f["train/acc"] - a["train/acc"]) * 300) <= images  # 300 training images
        assert abs(f["val/acc"] - a["val/acc"]) <= 1 / 100


def test_fused_lenet_matches_unfused_trials():
    cfgs = [compose(LENET + m) for m in MEMBERS]
    fused = train_fused(cfgs)
    for cfg, result in zip(cfgs, fused, strict=True):
        alone = train(cfg)
        assert_same_curve(result, alone)
        # weights agree to ~1e-8 unless rounding flips a ReLU or max-pool tie, which moves a few by ~1e-4
        for f, a in zip(result.model.parameters(), alone.model.parameters(), strict=True):
            torch.testing.assert_close(f, a, rtol=1e-3, atol=1e-3)
        # the checkpoint is train()'s: same optimizer hyperparameters, momentum buffers, schedule position
        fo, ao = result.state["optimizer"], alone.state["optimizer"]
        assert fo["param_groups"] == ao["param_groups"]
        assert fo["state"].keys() == ao["state"].keys()
        for i in ao["state"]:
            torch.testing.assert_close(fo["state"][i]["momentum_buffer"], ao["state"][i]["momentum_buffer"],
                                       rtol=1e-3, atol=1e-3)
        assert result.state["schedule"] == alone.state["schedule"]
        assert result.state["rng"]["generator"].equal(alone.state["rng"]["generator"])
        assert result.confusion.sum() == alone.confusion.sum()


def test_fused_nesterov_with_weight_decay_matches_unfused_trials():
    cfgs = [compose(MLP + ["optimizer.nesterov=true", "train.lr_schedule=step", "train.step_size=1"] + m)
            for m in (MEMBERS[0], MEMBERS[2])]
    for fused, cfg in zip(train_fused(cfgs), cfgs, strict=True):
        assert_same_curve(fused, train(cfg))


def test_fused_augmentation_draws_each_members_crops_as_alone():
    cfgs = [compose(MLP + ["data.augment=true"] + m) for m in MEMBERS[:2]]
    for fused, cfg in zip(train_fused(cfgs), cfgs, strict=True):
        assert_same_curve(fused, train(cfg))


def test_a_member_checkpoint_resumes_in_train():
    """A fused member's checkpoint is an ordinary trial checkpoint: train() resumes from it."""
    cfg = compose(LENET + MEMBERS[0])
    saved = {}

    def keep_first_epoch(metrics, checkpoint):
        if metrics["epoch"] == 1:
            saved.update(checkpoint())

    train_fused([cfg, compose(LENET + MEMBERS[1])], [keep_first_epoch, None])
    resumed = train(cfg, resume=saved)
    assert_same_curve(resumed, train(cfg))


def test_stopped_member_leaves_the_pack_and_the_others_carry_on():
    cfgs = [compose(MLP + ["train.epochs=3"] + m) for m in MEMBERS]
    seen = {i: [] for i in range(3)}

    def reporter(i, stop_after=None):
        def report(metrics, checkpoint):
            seen[i].append(metrics["epoch"])
            if metrics["epoch"] == stop_after:
                raise StopTraining

        return report

    stopped = train_fused(cfgs, [reporter(0), reporter(1, stop_after=1), reporter(2)])
    full = train_fused(cfgs)
    assert seen == {0: [1, 2, 3], 1: [1], 2: [1, 2, 3]}
    assert len(stopped[1].history) == 1
    stopped_alone = train(cfgs[1], reporter(1, stop_after=1))
    assert_same_curve(stopped[1], stopped_alone)
    for i in (0, 2):
        assert_same_curve(stopped[i], full[i], rtol=1e-6)
        assert_same_curve(stopped[i], train(cfgs[i]))


def test_a_diverging_member_ends_alone():
    cfgs = [compose(MLP + m) for m in (MEMBERS[0], ["optimizer.lr=1e4", "optimizer.momentum=0.9", "train.seed=1"])]
    told = []  # in order: the member that trains on reports each epoch, and the pack tells each outcome

    def report(metrics, checkpoint):
        told.append(("epoch", metrics["epoch"]))

    ok, diverged = train_fused(cfgs, [report, None], on_end=lambda index, outcome: told.append((index, outcome)))
    assert isinstance(diverged, TrainingDiverged) and "optimizer.lr=10000" in str(diverged)
    # the diverged member's end is told at the epoch it diverged, not when the pack ends (a sweep frees its trial)
    assert told == [("epoch", 1), (1, diverged), ("epoch", 2), (0, ok)]
    with pytest.raises(TrainingDiverged):
        train(cfgs[1])
    assert len(ok.history) == 2 and math.isfinite(ok.metrics["val/loss"])
    assert_same_curve(ok, train(cfgs[0]))


def test_a_pack_whose_last_members_leave_together_ends():
    """Every member diverging, a pack of one diverging, every member stopped after the same epoch: the pack ends
    with each member's outcome (it raised on an empty index before)."""
    diverging = [compose(MLP + ["optimizer.lr=1e4", f"train.seed={i}"]) for i in range(2)]
    assert all(isinstance(o, TrainingDiverged) for o in train_fused(diverging))
    assert isinstance(train_fused(diverging[:1])[0], TrainingDiverged)

    def stop(metrics, checkpoint):
        raise StopTraining

    cfgs = [compose(MLP + m) for m in MEMBERS[:2]]
    assert [len(o.history) for o in train_fused(cfgs, [stop, stop])] == [1, 1]


@pytest.mark.parametrize(("override", "named"), [
    (["model.conv1_filters=8"], "model.conv1_filters"),
    (["train.batch_size=64"], "train.batch_size"),
    (["data.subset=200"], "data.subset"),
])
def test_fusable_names_the_key_that_differs(override, named):
    cfgs = [compose(LENET), compose(LENET + override)]
    reason = fusable(cfgs)
    assert named in reason and "optimizer.lr" in reason  # what differs, and what may
    with pytest.raises(ConfigError, match=named):
        train_fused(cfgs)


@pytest.mark.parametrize(("override", "named"), [
    (["optimizer=adam"], "only sgd"),
    (["model=vgg", "data=digits", "data.resize=32"], "batch norm"),
    (["model=alexnet"], "dropout"),
    (["train.loss=mse"], "vmap"),
    # trains under vmap (grad decomposes the cell), but its evaluation does not: no batching rule for aten::lstm
    (["model=rnn", "model.cell=lstm"], "aten::lstm"),
    (["model=rnn", "model.cell=gru"], "aten::gru"),
])
def test_fusable_refuses_what_a_pack_cannot_reproduce(override, named):
    assert named in fusable([compose(LENET + override)] * 2)


def test_fusable_accepts_members_differing_in_hyperparameters_only():
    assert fusable([compose(LENET + m) for m in MEMBERS]) is None
    assert fusable([compose(MLP + m) for m in MEMBERS]) is None
    assert fusable([compose(MLP + ["model=simple_convnet", "data=mnist5k"] + m) for m in MEMBERS]) is None


def test_trials_group_into_packs_by_shared_settings():
    cfgs = [compose(LENET + m) for m in MEMBERS] + [compose(LENET + ["model.conv1_filters=8"])] + \
        [compose(LENET + ["optimizer.lr=0.2"])]
    assert group_for_fusion(cfgs, size=2) == [[0, 1], [2, 4], [3]]
    for pack in group_for_fusion(cfgs, size=8):
        assert fusable([cfgs[i] for i in pack]) is None


def test_fusing_is_off_on_cpu_unless_forced():
    assert not should_fuse("cpu", 16)
    assert should_fuse("cpu", 16, force=True)
    assert should_fuse("cuda", 16)
    assert not should_fuse("cuda", 1)


def test_train_pack_on_cpu_runs_the_trials_one_by_one():
    cfgs = [compose(MLP + m) for m in MEMBERS[:2]]
    packed = train_pack(cfgs)
    def untimed(result):
        return [{k: v for k, v in h.items() if k not in ("epoch_seconds", "samples_per_second")}
                for h in result.history]

    for cfg, result in zip(cfgs, packed, strict=True):
        assert untimed(result) == untimed(train(cfg))  # exactly train()
    forced = train_pack(cfgs, force=True)
    for fused, alone in zip(forced, packed, strict=True):
        assert_same_curve(fused, alone)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_lenet_matches_unfused_trials_on_cuda():
    cfgs = [compose(LENET + ["train.device=cuda"] + m) for m in MEMBERS]
    for fused, cfg in zip(train_pack(cfgs), cfgs, strict=True):  # on a GPU the pack fuses by itself
        # cuDNN runs other kernels for grouped convolutions than for plain ones, so the sums reassociate more than on
        # the CPU: losses agree to 1e-3, and an image whose two top logits nearly tie may flip (the H200 flipped 1,
        # then 2 of 300), so the training accuracy is held to 1 %, as the validation accuracy is
        assert_same_curve(fused, train(cfg), rtol=1e-3, images=3)
