"""Sweep options beyond the defaults, checked before Ray starts: any Optuna sampler by name or _target_,
conditional space keys (when:), the PBT and HyperBand schedulers, sweep.time_budget_s. Fast: no Ray."""
from __future__ import annotations

import math

import optuna
import pytest
import torch
from omegaconf import OmegaConf
from sweep_helpers import cli, write_sweep

from sweeplab.config.schema import OptimizerConfig, TrainConfig
from sweeplab.errors import ConfigError
from sweeplab.optim import apply_hyperparameters, build_schedule
from sweeplab.sweep.launch import stopping_epochs, trial_spec
from sweeplab.sweep.pbt import clip_to_space, mutated_dims
from sweeplab.sweep.plan import plan_sweep
from sweeplab.sweep.samplers import SAMPLERS, make_sampler, resolve_sampler, sampler_label
from sweeplab.sweep.space import Dimension, sample
from sweeplab.sweep.trainable import compose_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # QMC and GP: ours to use

LR = Dimension("optimizer.lr", "float", 0.01, 0.1, log=True)
MOMENTUM = Dimension("optimizer.momentum", "float", 0.5, 0.9)
ACT = Dimension("model.activation", "categorical", choices=("relu", "tanh"))


def plan(tmp_path, body: str, model: str = "mlp"):
    return plan_sweep(str(write_sweep(tmp_path, "options", body, model)), [f"output_dir={tmp_path / 'out'}"])


def drawn(sampler: optuna.samplers.BaseSampler, dims: list[Dimension], n: int = 3) -> list[dict]:
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample(dims, trial))
        study.tell(trial, 0.5)
    return out


# --- samplers --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_registered_sampler_name_makes_its_optuna_class_and_samples_the_space(name):
    dims = [Dimension("optimizer.momentum", "float", 0.5, 0.9, step=0.2), *([ACT] if name != "cmaes" else [])]
    sampler = make_sampler(name, dims, 0, multi_objective=False)  # CMA-ES: numbers only (test below)
    assert type(sampler) is SAMPLERS.get(name).cls
    for params in drawn(sampler, dims, 2):
        assert params["optimizer.momentum"] in (0.5, 0.7, 0.9) and params.get("model.activation", "relu") in (
            "relu", "tanh")


def test_a_target_sampler_gets_its_arguments_and_the_sweep_seed():
    spec = OmegaConf.create({"_target_": "optuna.samplers.QMCSampler", "scramble": True})
    assert resolve_sampler(spec) == (optuna.samplers.QMCSampler, {"scramble": True})
    assert sampler_label(spec) == "QMCSampler(scramble=True)"
    expected = drawn(optuna.samplers.QMCSampler(scramble=True, seed=7), [LR, MOMENTUM])
    assert drawn(make_sampler(spec, [LR, MOMENTUM], 7, False), [LR, MOMENTUM]) == expected
    assert drawn(make_sampler("random", [LR], 3, False), [LR]) == drawn(optuna.samplers.RandomSampler(seed=3), [LR])


def test_a_registered_name_as_target_keeps_its_defaults_under_the_arguments_given():
    cls, args = resolve_sampler({"_target_": "tpe", "n_startup_trials": 3})
    assert cls is optuna.samplers.TPESampler and args == {**SAMPLERS.get("tpe").defaults, "n_startup_trials": 3}


@pytest.mark.parametrize("spec, words", [
    ("bayesian", ["unknown sampler 'bayesian'", "sweep.sampler", ", ".join(SAMPLERS.names()), "_target_"]),
    ({"_target_": "optuna.samplers.NoSuchSampler"}, ["NoSuchSampler", "not an Optuna sampler class", "qmc"]),
    ({"_target_": "collections.OrderedDict"}, ["collections.OrderedDict", "not an Optuna sampler class"]),
    ({"scramble": True}, ["needs _target_"]),
    ({"_target_": "qmc", "scrambled": True}, ["QMCSampler takes no argument 'scrambled'", "scramble, seed"]),
    ({"_target_": "optuna.samplers.QMCSampler", "qmc_type": "fibonacci"}, ["QMCSampler refuses", "fibonacci"]),
])
def test_a_sampler_that_cannot_be_made_is_refused_in_one_line_saying_what_is_known(spec, words):
    with pytest.raises(ConfigError) as err:
        make_sampler(spec, [LR], 0, False)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_cmaes_is_refused_for_several_objectives_by_name_or_target():
    for spec in ("cmaes", {"_target_": "optuna.samplers.CmaEsSampler"}):
        with pytest.raises(ConfigError, match="optimises one objective"):
            make_sampler(spec, [LR], 0, multi_objective=True)


def test_cmaes_is_refused_a_categorical_or_conditional_key_it_would_draw_at_random():
    lenet_only = Dimension("model.conv1_filters", "int", 4, 8, when=(("model.activation", ("relu",)),))
    for dims in ([LR, ACT], [LR, ACT, lenet_only]):
        with pytest.raises(ConfigError, match="searches numbers only: it would draw model.activation"):
            make_sampler("cmaes", dims, 0, multi_objective=False)
    make_sampler("cmaes", [LR, MOMENTUM], 0, multi_objective=False)  # numbers: its own
    independent = {"_target_": "optuna.samplers.CmaEsSampler", "independent_sampler": optuna.samplers.TPESampler()}
    make_sampler(independent, [LR, ACT], 0, multi_objective=False)  # the user's choice for such keys


def test_bruteforce_runs_each_configuration_of_a_smaller_space_once(tmp_path):
    sweep_plan = plan(tmp_path, """
sweep:
  sampler: bruteforce
  num_trials: 10
  space:
    model.activation: {type: categorical, choices: [relu, tanh]}
    optimizer.lr: {type: categorical, choices: [0.01, 0.1]}
""")
    assert sweep_plan.num_configs == 4  # not 10, of which 6 would repeat a configuration


def _searcher(storage: str, dims: list[Dimension], sampler: str, num_configs: int, seeds=(0,)):
    from sweeplab.sweep.searcher import OptunaSearcher

    return OptunaSearcher(dims, sampler, 0, storage, "s-1", [("val/acc", "max")], list(seeds), num_configs, 3)


def _run(searcher, ran: list, n: int) -> None:
    for _ in range(n):
        trial_id = f"t{len(ran)}"
        config = searcher.suggest(trial_id)
        if config == "FINISHED":
            return
        ran.append(config)
        searcher.on_trial_complete(trial_id, {"epoch": 3, "val/acc": 0.5})


def test_a_resumed_grid_runs_each_point_once(tmp_path):
    """GridSampler gives trial n the n-th of its points shuffled by its seed: a resumed sweep keeps the seed (a new
    one, as other samplers get so as not to replay their draws, ran 5 of 8 points, some twice)."""
    dims = [Dimension("optimizer.lr", "categorical", choices=(0.1, 0.01, 0.001, 0.0001)),
            Dimension("model.dropout", "categorical", choices=(0.0, 0.5))]
    storage, ran = str(tmp_path / "optuna.journal"), []
    first = _searcher(storage, dims, "grid", 8, seeds=(0, 1))
    _run(first, ran, 6)
    first.save(str(tmp_path / "searcher.pkl"))
    resumed = _searcher(storage, dims, "grid", 8, seeds=(0, 1))
    resumed.restore(str(tmp_path / "searcher.pkl"))
    _run(resumed, ran, 20)
    points = [(c["optimizer.lr"], c["model.dropout"]) for c in ran if c["seed"] == 0]
    assert len(points) == 8 and len(set(points)) == 8


def test_a_configuration_asked_after_the_searchers_last_snapshot_runs_on_resume_and_no_more_are_asked(tmp_path):
    """A driver killed between Tune's snapshots of the searcher leaves a configuration RUNNING in Optuna that the
    snapshot never saw: the resumed searcher runs it, and asks Optuna for no configuration beyond num_trials."""
    storage, ran = str(tmp_path / "optuna.journal"), []
    first = _searcher(storage, [LR], "tpe", 4)
    _run(first, ran, 2)
    first.save(str(tmp_path / "searcher.pkl"))
    orphan = first.suggest("killed")  # asked after the snapshot, then the driver is gone
    resumed = _searcher(storage, [LR], "tpe", 4)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    _run(resumed, ran, 10)
    states = [t.state.name for t in resumed.study.get_trials()]
    assert states == ["COMPLETE"] * 4
    assert orphan["optuna_trial"] in [c["optuna_trial"] for c in ran[2:]]
    assert [c["optimizer.lr"] for c in ran if c["optuna_trial"] == orphan["optuna_trial"]] == [orphan["optimizer.lr"]]


def test_an_unknown_sampler_on_the_command_line_ends_in_one_line_and_exit_2(tmp_path):
    path = write_sweep(tmp_path, "s", "sweep:\n  space:\n    optimizer.lr: {type: float, low: 0.01, high: 0.1}\n")
    result = cli("sweep", str(path), "sweep.sampler=gpp", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("sweeplab sweep: error: unknown sampler 'gpp'")
    assert "Did you mean 'gp'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(path) in result.stderr


# --- conditional spaces ----------------------------------------------------------------------------
CONDITIONAL = """
sweep:
  sampler: random
  space:
    model: {type: categorical, choices: [mlp, lenet]}
    optimizer.lr: {type: float, low: 0.01, high: 0.1, log: true}
    model.hidden_sizes: {type: categorical, choices: [[64], [128, 64]], when: {model: mlp}}
    model.conv1_filters: {type: int, low: 4, high: 8, when: {model: [lenet]}}
"""


def test_a_conditional_key_is_sampled_only_for_its_choice_and_reaches_the_trial_config(tmp_path):
    sweep_plan = plan(tmp_path, CONDITIONAL)
    spec = trial_spec(sweep_plan)
    seen = set()
    for params in drawn(make_sampler("tpe", sweep_plan.dims, 0, False), sweep_plan.dims, 8):
        model = params["model"]
        seen.add(model)
        assert ("model.hidden_sizes" in params) == (model == "mlp")
        assert ("model.conv1_filters" in params) == (model == "lenet")
        cfg = compose_trial(spec, {**params, "seed": 0})
        assert cfg.model.name == model
        if model == "lenet":
            assert cfg.model.conv1_filters == params["model.conv1_filters"]
        else:
            assert OmegaConf.to_container(cfg.model.hidden_sizes) in ([64], [128, 64])
    assert seen == {"mlp", "lenet"}


@pytest.mark.parametrize("line, words", [
    ("model.conv1_filters: {type: int, low: 4, high: 8}",
     ["model=mlp has no key 'model.conv1_filters'", "when: {model: [lenet]}"]),
    ("model.conv1_filters: {type: int, low: 4, high: 8, when: {model: [mlp, lenet]}}",
     ["model=mlp has no key 'model.conv1_filters'"]),
    ("model.conv1_filters: {type: int, low: 4, high: 8, when: {model: vgg}}", ["when.model='vgg'", "mlp, lenet"]),
    ("model.conv1_filters: {type: int, low: 4, high: 8, when: {optimizer.lr: 0.1}}",
     ["when.optimizer.lr", "categorical dimension listed before this one", "model"]),
    ("model.conv1_filters: {type: int, low: 4, high: 8, when: lenet}", ["'when' must map"]),
])
def test_a_conditional_key_that_cannot_apply_is_refused_naming_key_and_file(tmp_path, line, words):
    body = ("sweep:\n  space:\n    model: {type: categorical, choices: [mlp, lenet]}\n"
            "    optimizer.lr: {type: float, low: 0.01, high: 0.1}\n    " + line + "\n")
    with pytest.raises(ConfigError) as err:
        plan(tmp_path, body)
    message = str(err.value)
    assert "sweep.space.model.conv1_filters" in message and "options.yaml" in message
    assert all(w in message for w in words), message


def test_a_grid_over_a_conditional_space_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="grid cannot search a space with conditional keys"):
        plan(tmp_path, CONDITIONAL.replace("sampler: random", "sampler: grid").replace(
            "{type: float, low: 0.01, high: 0.1, log: true}", "{type: categorical, choices: [0.01, 0.1]}"))


# --- schedulers and the time budget -------------------------------------------------------------
def scheduler(**kw) -> OmegaConf:
    return OmegaConf.create({"kind": "pbt", "grace_period": 1, "reduction_factor": 2, "perturbation_interval": 2,
                             "mutate": [], **kw})


def test_pbt_perturbs_every_number_of_the_space_unless_told_and_never_a_group_or_conditional_key():
    """Nor a key that changes a weight's shape or the input's: a weak trial that copies a strong one's checkpoint
    builds its model with the perturbed values and loads the copied weights into it."""
    group = Dimension("model", "categorical", choices=("mlp", "lenet"))
    conditional = Dimension("model.conv1_filters", "int", 4, 8, when=(("model", ("lenet",)),))
    width = Dimension("model.hidden_size", "int", 32, 64)
    dropout = Dimension("model.dropout", "float", 0.0, 0.5)
    size = Dimension("data.resize", "int", 28, 32)
    dims = [group, LR, MOMENTUM, ACT, conditional, width, dropout, size]
    assert mutated_dims(scheduler(), dims) == [LR, MOMENTUM, dropout]
    assert mutated_dims(scheduler(mutate=["model.activation"]), dims) == [ACT]
    for key in ("model", "model.conv1_filters", "train.epochs", "model.hidden_size", "data.resize"):
        with pytest.raises(ConfigError, match=f"'{key}' cannot be perturbed by PBT"):
            mutated_dims(scheduler(mutate=[key]), dims)
    with pytest.raises(ConfigError, match="no number to perturb"):
        mutated_dims(scheduler(), [group, ACT])


def test_pbt_keeps_perturbed_values_inside_their_ranges():
    assert clip_to_space([LR, MOMENTUM], {"optimizer.lr": 0.12, "optimizer.momentum": 0.96 * 1.2, "seed": 0}) == {
        "optimizer.lr": 0.1, "optimizer.momentum": 0.9, "seed": 0}


def test_pbt_keeps_perturbed_values_on_their_steps():
    batch = Dimension("train.batch_size", "int", 32, 256, step=32)
    decay = Dimension("optimizer.weight_decay", "float", 0.0, 0.01, step=0.001)
    assert clip_to_space([batch, decay], {"train.batch_size": 76.8, "optimizer.weight_decay": 0.0024}) == {
        "train.batch_size": 64, "optimizer.weight_decay": 0.002}


def test_pbt_resamples_with_fresh_draws_after_an_in_process_training_seeded_them():
    """PBT's explore draws from the process's global generators; train() seeds them with train.seed, the seed a
    sweep's RandomSampler uses too, so its resamples replayed the initial population's values."""
    import random

    import numpy as np

    from sweeplab.sweep.pbt import make_pbt
    from sweeplab.train import seed_everything

    seed_everything(0)
    make_pbt(scheduler(quantile_fraction=0.5, resample_probability=0.25), [LR, MOMENTUM], "val/acc", "max", 4)
    assert np.random.random() != np.random.RandomState(0).random_sample()
    assert random.random() != random.Random(0).random()


def test_trials_checkpoint_where_pbt_and_hyperband_act():
    assert stopping_epochs(scheduler(), 7) == {2, 4, 6}
    assert stopping_epochs(scheduler(kind="hyperband"), 4) == {1, 2, 3, 4}


@pytest.mark.parametrize("override, key", [
    ("sweep.time_budget_s=0", "sweep.time_budget_s"),
    ("sweep.scheduler.perturbation_interval=0", "sweep.scheduler.perturbation_interval"),
    ("sweep.scheduler.quantile_fraction=0.75", "sweep.scheduler.quantile_fraction"),
    ("sweep.scheduler.mutate=[model.activation]", "sweep.scheduler.mutate"),
])
def test_out_of_range_scheduler_and_budget_settings_are_refused(tmp_path, override, key):
    path = write_sweep(tmp_path, "s", "sweep:\n  scheduler: {kind: pbt}\n  space:\n"
                                      "    optimizer.lr: {type: float, low: 0.01, high: 0.1}\n")
    with pytest.raises(ConfigError, match=key):
        plan_sweep(str(path), [override, f"output_dir={tmp_path / 'out'}"])


def test_restored_optimizer_takes_the_configs_lr_and_momentum_in_place_on_its_schedule():
    """What PBT's exploit relies on: a copied state trains on with the new values; a retry changes nothing."""
    def trained(lr: float, momentum: float):
        weight = torch.nn.Parameter(torch.ones(2))
        optimizer = torch.optim.SGD([weight], lr=lr, momentum=momentum)
        schedule = build_schedule(optimizer, TrainConfig(epochs=4))
        return optimizer, schedule

    optimizer, schedule = trained(0.1, 0.9)
    for _ in range(2):
        optimizer.step()
        schedule.step()
    saved_lr = optimizer.param_groups[0]["lr"]
    for lr, momentum in ((0.1, 0.9), (0.2, 0.5)):
        restored, restored_schedule = trained(lr, momentum)
        restored.load_state_dict(optimizer.state_dict())
        restored_schedule.load_state_dict(schedule.state_dict())
        apply_hyperparameters(restored, restored_schedule, OptimizerConfig(name="sgd", lr=lr, momentum=momentum),
                              TrainConfig(epochs=4))
        assert restored.param_groups[0]["lr"] == pytest.approx(saved_lr * lr / 0.1)
        assert restored.param_groups[0]["momentum"] == momentum
        restored_schedule.step()
        # the cosine schedule goes on from the copied epoch, scaled to the new lr
        assert restored_schedule.get_last_lr()[0] == pytest.approx(lr * (1 + math.cos(3 * math.pi / 4)) / 2)


def test_a_restored_optimizer_and_schedule_take_every_value_of_the_configs():
    """PBT perturbs any number of train.* and optimizer.*: Adam's betas and a step schedule's gamma and step size
    too, not only the lr, momentum and weight decay; a copy trained on a schedule goes on at the config's constant
    lr where the config has none."""
    def trained(opt: OptimizerConfig, train: TrainConfig):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=opt.lr, betas=tuple(opt.betas))
        return optimizer, build_schedule(optimizer, train)

    first = OptimizerConfig(name="adam", lr=0.01, betas=[0.9, 0.999])
    optimizer, schedule = trained(first, TrainConfig(epochs=6, lr_schedule="step", step_size=1, gamma=0.5))
    optimizer.step()
    schedule.step()  # lr 0.005
    perturbed = OptimizerConfig(name="adam", lr=0.01, betas=[0.5, 0.9])
    train = TrainConfig(epochs=6, lr_schedule="step", step_size=1, gamma=0.9)
    restored, restored_schedule = trained(perturbed, train)
    restored.load_state_dict(optimizer.state_dict())
    restored_schedule.load_state_dict(schedule.state_dict())
    apply_hyperparameters(restored, restored_schedule, perturbed, train)
    assert restored.param_groups[0]["betas"] == (0.5, 0.9)
    restored_schedule.step()
    assert restored.param_groups[0]["lr"] == pytest.approx(0.005 * 0.9)  # the new gamma from the copied lr on

    flat = TrainConfig(epochs=6, lr_schedule="none")
    restored, no_schedule = trained(first, flat)
    restored.load_state_dict(optimizer.state_dict())
    apply_hyperparameters(restored, no_schedule, first, flat)
    assert no_schedule is None and restored.param_groups[0]["lr"] == 0.01


# --- what Optuna records when a scheduler changes or pauses a trial --------------------------------
def test_optuna_keeps_the_asked_values_and_the_values_pbt_left_a_trial_with(tmp_path):
    from sweeplab.sweep.searcher import OptunaSearcher

    searcher = OptunaSearcher([LR, MOMENTUM], "random", 0, f"sqlite:///{tmp_path / 'optuna.db'}", "s-1",
                              [("val/acc", "max")], [0], 2, 3)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_result("a", {"epoch": 1, "val/acc": 0.5})
    # PBT copied b's values into a, then perturbed lr; Tune hands searchers the config flattened
    copied = {"config/optimizer.lr": second["optimizer.lr"] * 1.2,
              "config/optimizer.momentum": second["optimizer.momentum"], "config/seed": 0, "config/optuna_trial": 1}
    searcher.on_trial_complete("a", {"epoch": 3, "val/acc": 0.8, **copied})
    # HyperBand ends a paused trial with no result: its last reported epoch stands
    searcher.on_trial_result("b", {"epoch": 1, "val/acc": 0.4})
    searcher.on_trial_complete("b", None)
    a, b = searcher.study.trials
    assert a.params == {k: first[k] for k in ("optimizer.lr", "optimizer.momentum")} and a.value == 0.8
    assert a.user_attrs["seeds"]["0"]["final_params"] == {
        "optimizer.lr": second["optimizer.lr"] * 1.2, "optimizer.momentum": second["optimizer.momentum"]}
    assert b.state == optuna.trial.TrialState.PRUNED and b.user_attrs["status"] == "stopped"
    assert b.user_attrs["epochs"] == 1 and "final_params" not in b.user_attrs["seeds"]["0"]


@pytest.mark.parametrize("overrides, said", [
    (["cluster.num_gpus=1"], True),  # a local Ray with a GPU, trials asking for none
    (["cluster.num_gpus=1", "sweep.resources.gpu=1"], False),
    (["cluster.num_gpus=1", "train.device=cpu"], False),  # CPUs asked for by name
    (["cluster.num_gpus=0"], False),
])
def test_a_gpu_the_trials_do_not_ask_for_is_said_before_ray_starts(tmp_path, capsys, overrides, said):
    """Ray 2.60 hides no GPU from a trial granted none, so such trials train on CPUs (train.granted_device): a GPU
    left idle is a choice the user sees, in one line."""
    from sweeplab.sweep.launch import check_before_start

    check_before_start(plan_sweep("smoke", [f"output_dir={tmp_path}", "tracking=none", *overrides]))
    out = capsys.readouterr().out
    line = ("sweeplab sweep: a local Ray here has 1 GPU and the trials ask for none (sweep.resources.gpu=0): they "
            "train on CPUs; sweep.resources.gpu=1 gives each trial a GPU, 0.25 puts four on one")
    assert (line in out) is said, out
