"""Fused trials in a sweep (sweep.fuse): members train as packs yet are reported as trials of their own.

Real local Ray, real Optuna and MLflow stores (SQLite files), LeNet on 300 MNIST digits. On a CPU
fusing switches itself off, so these sweeps force it (sweep.fuse_on_cpu=true).
"""
from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only

import optuna  # noqa: E402
import pytest  # noqa: E402
from sweep_helpers import journal_in, write_sweep  # noqa: E402

from sweeplab.errors import ConfigError  # noqa: E402
from sweeplab.run_files import RUN_FILES  # noqa: E402
from sweeplab.sweep.plan import plan_sweep  # noqa: E402

SMALL = ["data=mnist5k", "data.subset=300", "train.num_threads=1", "train.batch_size=32"]
GRID = """
train: {epochs: 3}
sweep:
  sampler: grid
  max_concurrent: 2
  scheduler: {kind: none}
  space:
    optimizer.lr: {type: categorical, choices: [0.05, 0.1]}
    optimizer.momentum: {type: categorical, choices: [0.0, 0.9]}
"""
CURVES = ("train/loss", "val/loss")


# --- planning: what a fused sweep refuses before Ray starts ------------------------------------------
def plan(tmp_path, body: str, *overrides: str, model: str = "lenet"):
    path = write_sweep(tmp_path, "fuse", body, model=model)
    return plan_sweep(str(path), [f"output_dir={tmp_path}", *SMALL, *overrides])


def test_fuse_must_be_at_least_one(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.fuse=0 is out of range.*>= 1"):
        plan(tmp_path, GRID, "sweep.fuse=0")


@pytest.mark.parametrize(("overrides", "named"), [
    (["optimizer=adam"], "optimizer.name=adam: only sgd"),  # every pack would be refused
    (["model=alexnet"], "dropout"),
    (["sweep.fuse=4"], "sweep.max_concurrent=2"),  # a pack holds trials that run at once
    (["sweep.scheduler.kind=hyperband"], "kind=hyperband pauses trials"),  # a paused member would hold its pack
])
def test_a_sweep_that_could_never_fuse_is_refused(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        plan(tmp_path, GRID, "sweep.fuse=2", *overrides)


def test_pbt_which_pauses_trials_to_exploit_does_not_fuse(tmp_path):
    body = "train: {epochs: 3}\nsweep:\n  sampler: random\n  max_concurrent: 2\n  scheduler: {kind: pbt}\n" \
           "  space:\n    optimizer.lr: {type: float, low: 0.01, high: 0.1}\n"
    assert plan(tmp_path, body).cfg.sweep.scheduler.kind == "pbt"  # unfused, the same sweep plans
    with pytest.raises(ConfigError, match="kind=pbt pauses trials"):
        plan(tmp_path, body, "sweep.fuse=2")


def test_a_searched_range_outside_the_member_keys_is_named(tmp_path):
    body = GRID + "    optimizer.weight_decay: {type: float, low: 0.0001, high: 0.001}\n" \
                  "    model.conv1_filters: {type: int, low: 4, high: 8}\n"
    with pytest.raises(ConfigError, match=r"searches model.conv1_filters over a range") as err:
        plan(tmp_path, body.replace("sampler: grid", "sampler: random"), "sweep.fuse=2")
    assert "\n" not in str(err.value)


def test_searched_member_keys_and_choices_fuse(tmp_path):
    body = GRID + "    model.conv1_filters: {type: categorical, choices: [4, 6]}\n"
    assert plan(tmp_path, body, "sweep.fuse=2").cfg.sweep.fuse == 2


def test_fusing_is_off_on_cpu_unless_forced(tmp_path, capsys):
    from sweeplab.sweep.launch import trial_spec
    from sweeplab.sweep.packs import fusing, start_packs

    on_cpu = plan(tmp_path, GRID, "sweep.fuse=2")
    assert not fusing(on_cpu.cfg) and fusing(plan(tmp_path, GRID, "sweep.fuse=2", "sweep.fuse_on_cpu=true").cfg)
    assert fusing(plan(tmp_path, GRID, "sweep.fuse=2", "sweep.resources.gpu=1").cfg)
    spec = trial_spec(on_cpu)
    assert start_packs(on_cpu, "fuse-1", spec) is spec  # the trials train as they would without sweep.fuse
    assert capsys.readouterr().out.strip().splitlines() == [
        "sweeplab sweep: sweep.fuse=2: fusing is off without a GPU (on CPUs it does not pay); the trials train unfused"]


# --- real sweeps ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def run_sweep(tmp_path_factory, name: str, body: str, *overrides: str):
    from sweeplab.sweep.launch import launch_sweep

    out = tmp_path_factory.mktemp(name)
    path = write_sweep(out, name, body, model="lenet")
    outcome = launch_sweep(str(path), [f"output_dir={out}", *SMALL, *overrides], quiet=True)
    return out, outcome


def two_lrs(epochs: int, second_lr: float) -> str:
    """A grid of two learning rates, 0.05 and ``second_lr``, trained at once (one pack of two), with no scheduler."""
    return f"""
train: {{epochs: {epochs}, lr_schedule: none}}
sweep:
  sampler: grid
  max_concurrent: 2
  scheduler: {{kind: none}}
  space:
    optimizer.lr: {{type: categorical, choices: [0.05, {second_lr}]}}
"""


def children(out, experiment: str) -> dict:
    """The sweep's MLflow child runs, by (lr, momentum)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`sweeplab.kind` = 'trial'")
    return client, {(float(r.data.params["optimizer.lr"]), float(r.data.params["optimizer.momentum"])): r for r in runs}


def curve(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.fixture(scope="module")
def fused_and_alone(ray_session, tmp_path_factory):
    fused = run_sweep(tmp_path_factory, "fused", GRID, "sweep.fuse=2", "sweep.fuse_on_cpu=true")
    alone = run_sweep(tmp_path_factory, "alone", GRID)
    return fused, alone


@pytest.mark.slow
def test_fused_sweep_reports_every_member_as_a_trial(fused_and_alone):
    (out, outcome), _ = fused_and_alone
    assert outcome.counts() == {"completed": 4}
    study = optuna.load_study(study_name=outcome.sweep_id, storage=journal_in(out))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    client, runs = children(out, "fused")
    assert len(runs) == 4
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags["sweeplab.status"] == "completed"
        assert "2 trials" in run.data.tags["sweeplab.placement"]  # it really trained in a pack of two
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
            assert [step for step, _ in curve(client, run, key)] == [1, 2, 3]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= set(RUN_FILES)


@pytest.mark.slow
def test_fused_members_train_as_the_same_trials_alone(fused_and_alone):
    (fused_out, _), (alone_out, alone) = fused_and_alone
    assert alone.counts() == {"completed": 4}
    client, fused_runs = children(fused_out, "fused")
    alone_client, alone_runs = children(alone_out, "alone")
    assert fused_runs.keys() == alone_runs.keys()
    for params, run in fused_runs.items():
        assert "pack" not in alone_runs[params].data.tags["sweeplab.placement"]
        for key in CURVES:
            got, want = curve(client, run, key), curve(alone_client, alone_runs[params], key)
            assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4), (params, key)


@pytest.mark.slow
def test_asha_stops_one_member_and_its_pack_mate_trains_on(ray_session, tmp_path_factory):
    body = """
train: {epochs: 3, lr_schedule: none}
sweep:
  sampler: grid
  sampler_seed: 1  # Optuna asks for lr 0.1 first: a pack reports its members in trial order, and ASHA
  #                  lets the first trial to reach a rung through, so the hopeless one is the one judged
  max_concurrent: 2
  scheduler: {kind: asha, grace_period: 1, reduction_factor: 2}
  space:
    optimizer.lr: {type: categorical, choices: [0.1, 0.00001]}
"""
    out, outcome = run_sweep(tmp_path_factory, "asha", body, "sweep.fuse=2", "sweep.fuse_on_cpu=true")
    status = {t.params["optimizer.lr"]: t.status for t in outcome.trials}
    assert status == {0.1: "completed", 0.00001: "stopped"}, status
    study = optuna.load_study(study_name=outcome.sweep_id, storage=journal_in(out))
    states = {t.params["optimizer.lr"]: t.state for t in study.trials}
    assert states == {0.1: optuna.trial.TrialState.COMPLETE, 0.00001: optuna.trial.TrialState.PRUNED}
    client, runs = children(out, "asha")
    good, stopped = runs[(0.1, 0.9)], runs[(0.00001, 0.9)]
    assert good.data.tags["sweeplab.placement"] == stopped.data.tags["sweeplab.placement"]  # one pack
    assert stopped.data.tags["sweeplab.status"] == "stopped"
    assert "scheduler" in stopped.data.tags["sweeplab.failure_reason"]
    assert [s for s, _ in curve(client, stopped, "val/acc")] == [1]
    assert [s for s, _ in curve(client, good, "val/acc")] == [1, 2, 3]
    for run in (good, stopped):  # a stopped member keeps the files of its last epoch, as an unfused trial does
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= set(RUN_FILES)


@pytest.mark.slow
def test_a_diverged_member_ends_its_trial_while_its_pack_trains_on(ray_session, tmp_path_factory):
    """Its trial ends at the epoch it diverged: it held its share of the pack's resources, and Optuna waited for
    its value, until the whole pack had trained before."""
    out, outcome = run_sweep(tmp_path_factory, "diverge", two_lrs(4, 10000.0), "sweep.fuse=2",
                             "sweep.fuse_on_cpu=true")
    status = {t.params["optimizer.lr"]: t.status for t in outcome.trials}
    assert status == {0.05: "completed", 10000.0: "invalid"}, status
    client, runs = children(out, "diverge")
    good, diverged = runs[(0.05, 0.9)], runs[(10000.0, 0.9)]
    assert "2 trials" in good.data.tags["sweeplab.placement"]  # the two trained in one pack
    logged = {m.step: m.timestamp for m in client.get_metric_history(good.info.run_id, "val/acc")}
    assert sorted(logged) == [1, 2, 3, 4]
    # it ended at epoch 1, not once the pack had trained its last epoch (its end then came after epoch 4's metrics)
    assert diverged.info.end_time < logged[4], (diverged.info.end_time, logged)


@pytest.mark.slow
def test_a_pack_whose_config_cannot_train_ends_each_member_invalid_without_retries(ray_session, tmp_path_factory):
    """A config mistake only training finds (a validation share that leaves no validation image) ends each member's
    trial invalid with the reason, as alone; it crashed every member before, and Tune retried each to no end."""
    _, outcome = run_sweep(tmp_path_factory, "unsplit", two_lrs(2, 0.1), "sweep.fuse=2", "sweep.fuse_on_cpu=true",
                           "data.val_fraction=0.0001")
    assert {t.status for t in outcome.trials} == {"invalid"}, [(t.status, t.reason) for t in outcome.trials]
    assert all("leaves no validation image" in t.reason for t in outcome.trials)


@pytest.mark.slow
def test_a_crashed_member_is_retried_alone_from_its_checkpoint(fused_and_alone, tmp_path_factory, monkeypatch):
    """Both members crash once after epoch 1; each retry resumes from its checkpoint in a pack of its own
    (through train, on the pack's resources) and still trains the curve of the unfused trial."""
    import ray

    _, (alone_out, _) = fused_and_alone
    ray.shutdown()  # workers read the fault injection's variable when Ray starts
    monkeypatch.setenv("SWEEPLAB_FAULT_AFTER_EPOCH", "1")
    try:
        body = GRID.replace("choices: [0.0, 0.9]", "choices: [0.9]")  # two trials: one pack
        out, outcome = run_sweep(tmp_path_factory, "crash", body, "sweep.fuse=2", "sweep.fuse_on_cpu=true",
                                 "sweep.checkpoint_interval_s=0", "sweep.max_failures=1")
    finally:
        ray.shutdown()
    assert outcome.counts() == {"completed": 2}
    assert len(list((out / "faults").iterdir())) == 2  # both members really crashed once
    client, runs = children(out, "crash")
    alone_client, alone_runs = children(alone_out, "alone")
    assert len(runs) == 2
    for params, run in runs.items():
        assert run.data.tags["sweeplab.restarts"] == "1" and run.data.tags["sweeplab.status"] == "completed"
        assert "2 trials" in run.data.tags["sweeplab.placement"]  # epoch 1 trained in the pack
        for key in CURVES:
            got, want = curve(client, run, key), curve(alone_client, alone_runs[params], key)
            assert [s for s, _ in got] == [1, 2, 3]  # epoch 1 from the pack, 2 and 3 from the retry: none twice
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4), (params, key)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= set(RUN_FILES)


@pytest.mark.slow
def test_a_trial_a_started_pack_refused_is_seated_in_another(ray_session):
    """The manager forgets a pack that refused a trial. The refused pack comes back to it through Ray as another
    handle of the same actor: compared by identity, it was never forgotten, and with sweep.fuse >= 3 the trial was
    sent back to the same started pack again and again."""
    import time

    import ray

    from sweeplab.sweep import packs

    # "local": a plain ray.init() joins the `ray start` head another test may have up on this machine meanwhile
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    manager = packs.PackManager.options(max_concurrency=16).remote(3, True, {"num_cpus": 1.0, "num_gpus": 0.0})
    first = ray.get(manager.join.remote("t1", ("k",), False, None))
    assert ray.get(first.add.remote("t1", (1,), None, None))
    time.sleep(packs.FORMATION_S + 1.5)  # the pack has started with one member of its three
    refused = ray.get(manager.join.remote("t2", ("k",), False, None))
    assert refused == first and not ray.get(refused.add.remote("t2", (2,), None, None))
    other = ray.get(manager.join.remote("t2", ("k",), False, refused))
    assert other != first and ray.get(other.add.remote("t2", (2,), None, None))
