"""Real sweeps with Ray's and Optuna's own machinery beyond ASHA and TPE: Population Based Training,
HyperBand, samplers by name and by _target_, a time budget, a conditional space. One local Ray for the
module; each sweep is an MLP (or LeNet) on 500 MNIST digits for 2-4 epochs."""
from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback only

import optuna  # noqa: E402
import pytest  # noqa: E402
from sweep_helpers import TINY, journal_in, write_sweep  # noqa: E402

from sweeplab.compose import project_root  # noqa: E402
from sweeplab.program import program  # noqa: E402
from sweeplab.sweep.rerun import PBT_RERUN, best_command  # noqa: E402
from sweeplab.sweep.space import Dimension, sample  # noqa: E402
from sweeplab.sweep.summary import format_summary  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

LR = Dimension("optimizer.lr", "float", 0.01, 0.1, log=True)
MOMENTUM = Dimension("optimizer.momentum", "float", 0.5, 0.9)
SPACE = """
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.1, log: true}
    optimizer.momentum: {type: float, low: 0.5, high: 0.9}
"""


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray (started as a sweep starts it) that every sweep of the module joins."""
    import ray

    from sweeplab.compose import compose
    from sweeplab.sweep.launch import start_ray

    ray.shutdown()
    start_ray(compose(["cluster.num_cpus=2"]))
    yield
    ray.shutdown()


def run(ref, out: Path, *overrides: str):
    from sweeplab.sweep.launch import launch_sweep

    started = time.monotonic()
    outcome = launch_sweep(str(ref), [f"output_dir={out}", *TINY, *overrides], quiet=True)
    print(f"sweep {outcome.sweep_id}: {time.monotonic() - started:.0f}s")
    return outcome


def study_of(out: Path, outcome) -> optuna.Study:
    return optuna.load_study(study_name=outcome.sweep_id, storage=journal_in(out))


def children(out: Path) -> dict[str, object]:
    """Trial name -> MLflow child run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`sweeplab.kind` = 'trial'")
    return {r.data.tags["sweeplab.trial_name"]: r for r in runs}


def lr_history(out: Path, run) -> list[float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]


def qmc_points(n: int, **args) -> list[dict]:
    """What Optuna's QMCSampler (seed 0, as sweep.sampler_seed) asks for first over SPACE."""
    study = optuna.create_study(sampler=optuna.samplers.QMCSampler(seed=0, **args))
    return [sample([LR, MOMENTUM], study.ask()) for _ in range(n)]


def test_pbt_copies_a_strong_trials_checkpoint_and_trains_on_with_perturbed_values(ray_session, tmp_path):
    # ten epochs, nine chances to exploit. Ray's PBT is asynchronous: a lower-quantile trial exploits a random
    # upper-quantile one only if that one's own last result was in the upper quantile too (else it kept no
    # checkpoint), so with the shipped four epochs about one run in four made no exploit, and with six a full
    # suite of 2026-12-01 07:16 made none
    outcome = run(project_root() / "sweeps" / "pbt.yaml", tmp_path, "train.epochs=10")
    assert {t.status for t in outcome.trials} == {"completed"}
    # Ray's record of each exploit: [trial, donor, trial's epoch, donor's epoch, donor's config, new config]
    exploits = [json.loads(line) for line in (Path(outcome.record["ray_path"]) / "pbt_global.txt").read_text()
                .splitlines()]
    assert exploits and all(e[0] != e[1] for e in exploits)
    # Optuna keeps the values it asked for; the values PBT left a trial with are kept beside them
    study = study_of(tmp_path, outcome)
    mutated = {t.number: seed["final_params"] for t in study.trials for seed in t.user_attrs["seeds"].values()
               if "final_params" in seed}
    assert mutated
    runs = children(tmp_path)
    for number, final in mutated.items():
        asked = study.trials[number].params
        assert final["optimizer.lr"] != asked["optimizer.lr"]
        # the trial trained on with the new lr: its MLflow child shows the lr schedule PBT gave it
        history = lr_history(tmp_path, runs[f"trial_{number:03d}_seed0"])
        assert history[0] == pytest.approx(asked["optimizer.lr"])
        assert history[-1] == pytest.approx(final["optimizer.lr"]) and len(set(history)) > 1
        # its run's params keep the values it was asked with; tags hold those it trains on since its last exploit,
        # and the report compares it by them
        child = runs[f"trial_{number:03d}_seed0"]
        assert float(child.data.params["optimizer.lr"]) == pytest.approx(asked["optimizer.lr"])
        assert float(child.data.tags["sweeplab.pbt.optimizer.lr"]) == pytest.approx(final["optimizer.lr"])
    # no command reruns a PBT trial: the summary and `best` say so, and give the values it ended with
    number, final = next(iter(mutated.items()))
    command = best_command(outcome, next(t for t in outcome.trials if t.number == number))
    lr = next(float(a.split("=")[1]) for a in shlex.split(command) if a.startswith("optimizer.lr="))
    assert lr == pytest.approx(final["optimizer.lr"])
    assert f"rerun it ({PBT_RERUN}): {program()} train" in format_summary(outcome)


def _tracker(out: Path, experiment: str):
    """The MLflow tracker of a smoke sweep whose store is ``out``'s own, set up: its parent run made or found."""
    from sweeplab.sweep.launch import sync_command, trial_spec
    from sweeplab.sweep.plan import plan_sweep
    from sweeplab.sweep.tracker import MlflowSweepTracker

    plan = plan_sweep("smoke", [f"output_dir={out}", f"tracking.experiment={experiment}", "tracking.log_models=0"])
    tracker = MlflowSweepTracker(plan.cfg, plan, f"smoke-{experiment}", trial_spec(plan),
                                 sync_command(f"smoke-{experiment}", [], plan.cfg))
    tracker.setup()
    return tracker


def _trial_runs(out: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment).experiment_id
    return client, client.search_runs([found], "tags.`sweeplab.kind` = 'trial'")


def test_a_resumed_trial_paused_and_started_again_counts_one_restart(tmp_path):
    """Tune starts a trial again after each pause (HyperBand, PBT): a resumed sweep's trial restarted once."""
    from ray.tune.experiment import Trial

    trial = Trial("t", config={"optuna_trial": 0, "seed": 0}, stub=True)
    first = _tracker(tmp_path, "paused")
    first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [trial], trial, {"epoch": 1, "val/loss": 1.0})
    first.on_experiment_end([trial])  # interrupted: the run ends KILLED
    first.finish()
    resumed = _tracker(tmp_path, "paused")
    resumed.on_trial_start(0, [trial], trial)
    resumed.on_trial_start(0, [trial], trial)  # after a pause
    resumed.finish()
    _, (run,) = _trial_runs(tmp_path, "paused")
    assert run.info.status == "RUNNING" and run.data.tags["sweeplab.restarts"] == "1"


def test_an_exploit_of_a_donor_behind_logs_the_epochs_trained_again(tmp_path):
    """Asynchronous PBT may copy a donor whose last checkpoint is behind the trial: the trial trains those epochs
    again from the donor's weights with its new values, and its MLflow run logs them at their steps; a retried
    trial (the same config) repeats no epoch its run holds."""
    from ray.tune.experiment import Trial

    trial = Trial("t", config={"optuna_trial": 0, "seed": 0, "optimizer.lr": 0.01}, stub=True)

    def report(tracker, step: int, lr: float) -> None:
        config = {**trial.config, "optimizer.lr": lr}
        tracker.on_trial_result(0, [trial], trial, {"epoch": step, "lr": lr, "val/loss": 1.0 / step, "config": config})

    first = _tracker(tmp_path, "exploit")
    first.on_trial_start(0, [trial], trial)
    for step in (1, 2, 3):
        report(first, step, 0.01)
    report(first, 3, 0.01)  # a retry from its own checkpoint: logged once
    first.on_experiment_end([trial])  # interrupted
    first.finish()
    resumed = _tracker(tmp_path, "exploit")  # --resume: the trial goes on from its checkpoint of epoch 2
    resumed.on_trial_start(0, [trial], trial)
    report(resumed, 3, 0.01)  # logged before the interruption: once
    for step in (2, 3, 4):  # exploited a donor at epoch 1, with a perturbed lr
        report(resumed, step, 0.02)
    resumed.finish()

    client, (run,) = _trial_runs(tmp_path, "exploit")
    history = sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, "lr"))
    assert history == [(1, 0.01), (2, 0.01), (2, 0.02), (3, 0.01), (3, 0.02), (4, 0.02)]


def test_hyperband_with_a_named_sampler_stops_the_weaker_trial_of_its_halving_bracket(ray_session, tmp_path):
    path = write_sweep(tmp_path, "hyperband", """
train: {epochs: 2}
sweep:
  name: hyperband
  sampler: qmc
  num_trials: 4
  max_concurrent: 4
  resources: {cpu: 0.5}
  scheduler: {kind: hyperband, reduction_factor: 2}
""" + SPACE)
    outcome = run(path, tmp_path, "tracking=none")  # nothing here reads MLflow: the driver's CPU left to the trials
    # max_t 2, eta 2: Ray's first bracket runs 2 trials to the end; the second runs 2 for one epoch,
    # pausing the first to finish until the other has, and keeps the better one
    assert sorted(t.epochs for t in outcome.trials) == [1, 2, 2, 2]
    assert sorted(t.status for t in outcome.trials) == ["completed", "completed", "completed", "stopped"]
    asked = [t.params for t in sorted(study_of(tmp_path, outcome).trials, key=lambda t: t.number)]
    assert asked == qmc_points(4)  # the sampler the name picks, with the sweep seed


def test_hyperband_stops_a_trial_still_saving_its_pause_when_its_bracket_finishes(ray_session, tmp_path):
    """Two trials of HyperBand's full-length bracket reach its last epoch together; the first to report is paused,
    and its pause saves a checkpoint (slowly here) while the second finishes the bracket. Ray 2.60's own
    HyperBandScheduler leaves the first PAUSED for good (the sweep hangs); sweeplab's stops it."""
    from ray import tune

    from sweeplab.compose import compose
    from sweeplab.sweep.launch import make_scheduler

    barrier = tmp_path / "barrier"
    barrier.mkdir()

    class Paced(tune.Trainable):
        def setup(self, config):
            self.epoch, self.score = 0, config["score"]

        def step(self):
            self.epoch += 1
            if self.epoch == 2:  # both trials report their last epoch within a few milliseconds
                (barrier / str(self.score)).touch()
                while len(list(barrier.iterdir())) < 2:
                    time.sleep(0.005)
            return {"epoch": self.epoch, "val/acc": self.score}

        def save_checkpoint(self, checkpoint_dir):
            time.sleep(3)  # the pause's save is still in flight when the other trial's result arrives
            return {"epoch": self.epoch}

        def load_checkpoint(self, checkpoint):
            self.epoch = checkpoint["epoch"]

    scheduler = make_scheduler(compose(["sweep.scheduler.kind=hyperband"]).sweep.scheduler,
                               "val/acc", "max", epochs=2)
    started = time.monotonic()
    grid = tune.Tuner(
        tune.with_resources(Paced, {"cpu": 0.5}),
        param_space={"score": tune.grid_search([0.5, 0.6])},
        tune_config=tune.TuneConfig(scheduler=scheduler, time_budget_s=240),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
    ).fit()
    # timed from the moment both trials reached the bracket's end, not from the start, which a busy machine's Ray
    # start-up stretches (57 s once, against 14 s when quiet): a trial left paused keeps the run waiting until the
    # time budget ends, minutes later
    reached = max(f.stat().st_mtime for f in barrier.iterdir())
    assert time.time() - reached < 60, (time.time() - reached, time.monotonic() - started)
    assert sorted(r.metrics["epoch"] for r in grid) == [2, 2]
    assert not grid.errors


def test_a_target_sampler_with_arguments_and_a_time_budget_that_ends_the_sweep(ray_session, tmp_path):
    path = write_sweep(tmp_path, "budget", """
train: {epochs: 2}
sweep:
  name: budget
  sampler: {_target_: optuna.samplers.QMCSampler, scramble: true}
  num_trials: 1000  # far more than 10 s can run, however fast the trials start
  time_budget_s: 10
  scheduler: {kind: none}
""" + SPACE)
    outcome = run(path, tmp_path, "tracking=none")
    ended = [t for t in outcome.trials if t.status != "running"]
    assert len(ended) < 1000  # a trial that the budget cut off stays running, as in an interrupted sweep
    assert outcome.record["ended_by"].startswith("sweep.time_budget_s=10")
    assert "ended by the time budget, sweep.time_budget_s=10" in format_summary(outcome)
    assert study_of(tmp_path, outcome).user_attrs["ended_by"] == outcome.record["ended_by"]
    asked = [t.params for t in sorted(study_of(tmp_path, outcome).trials, key=lambda t: t.number)]
    assert asked[:2] == qmc_points(2, scramble=True)


def test_a_conditional_space_gives_each_trial_only_the_keys_of_its_choice(ray_session, tmp_path):
    outcome = run(project_root() / "sweeps" / "conditional.yaml", tmp_path, "sweep.num_trials=4")
    assert {t.status for t in outcome.trials} == {"completed"}
    runs = children(tmp_path)
    models = set()
    for trial in study_of(tmp_path, outcome).trials:
        params, model = trial.params, trial.params["model"]
        models.add(model)
        assert ("model.hidden_sizes" in params) == (model == "mlp")
        assert ("model.conv1_filters" in params) == (model == "lenet")
        logged = runs[f"trial_{trial.number:03d}_seed0"].data.params  # the config the trial trained with
        assert logged["model.name"] == model and logged["model"] == model  # the option it picked, too
        if model == "lenet":
            assert logged["model.conv1_filters"] == str(params["model.conv1_filters"])
        else:
            assert "model.conv1_filters" not in logged
    assert models == {"mlp", "lenet"}


def test_a_trial_ending_before_its_own_checkpoint_after_an_exploit_gets_no_donors_files(tmp_path):
    """After a PBT exploit Ray's latest checkpoint of the trial is the donor's until the trial saves its own: a
    trial that ends then (it diverged at the perturbed values, or crashed) logs no files rather than the donor's
    config and weights into its run."""
    from types import SimpleNamespace

    from ray.tune import Checkpoint

    from sweeplab.sweep.tracker import own_checkpoint

    experiment = tmp_path / "sweep-1"
    mine, donor = experiment / "trial_a", experiment / "trial_b"
    for folder in (mine / "checkpoint_000001", donor / "checkpoint_000003"):
        folder.mkdir(parents=True)
    saved = Checkpoint(str(mine / "checkpoint_000001"))
    assert own_checkpoint(SimpleNamespace(checkpoint=saved, path=str(mine))) == {
        "path": str(mine / "checkpoint_000001"), "fs": "local"}
    exploited = SimpleNamespace(checkpoint=Checkpoint(str(donor / "checkpoint_000003")), path=str(mine))
    assert own_checkpoint(exploited) is None
    assert own_checkpoint(SimpleNamespace(checkpoint=None, path=str(mine))) is None
