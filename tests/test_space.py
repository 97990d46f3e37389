"""Search spaces: sweep files -> Optuna distributions, grid points and Hydra overrides; bad files rejected.

Fast: no Ray is started. Every sweep file is written to tmp_path the way a user writes one.
"""
from __future__ import annotations

import contextlib
import itertools
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from sweep_helpers import cli, sweeplab, write_sweep

from sweeplab.errors import ConfigError
from sweeplab.program import program
from sweeplab.sweep.launch import launch_sweep, trial_spec
from sweeplab.sweep.plan import plan_sweep
from sweeplab.sweep.samplers import make_sampler
from sweeplab.sweep.space import overrides_for, to_override
from sweeplab.sweep.trainable import compose_trial

MIXED = """
sweep:
  sampler: {sampler}
  seeds: [0, 1]
  space:
    optimizer: {{type: categorical, choices: [sgd, adam]}}
    optimizer.lr: {{type: float, low: 0.01, high: 0.1}}
    optimizer.weight_decay: {{type: float, low: 1.0e-6, high: 1.0e-3, log: true}}
    optimizer.momentum: {{type: float, low: 0.5, high: 0.9, step: 0.2}}
    train.batch_size: {{type: int, low: 16, high: 64}}
    train.eval_batch_size: {{type: int, low: 100, high: 700, step: 300}}
    data.subset: {{type: int, low: 100, high: 1000, log: true}}
    model.activation: {{type: categorical, choices: [relu, tanh]}}
    model.hidden_sizes: {{type: categorical, choices: [[64], [128, 64]]}}
"""


def plan(tmp_path, body: str, name: str = "space", model: str = "mlp", overrides=()):
    return plan_sweep(str(write_sweep(tmp_path, name, body, model)), [f"output_dir={tmp_path / 'out'}", *overrides])


def distributions(sweep_plan) -> dict:
    return {d.key: d.distribution() for d in sweep_plan.dims}


def asked_grid_points(sweep_plan) -> list[dict]:
    """Every configuration Optuna's grid sampler asks for, as a sweep would run them."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler("grid", sweep_plan.dims, 0, False))
    asked = []
    for _ in range(sweep_plan.num_configs):
        trial = study.ask(distributions(sweep_plan))
        asked.append(trial.params)
        with contextlib.suppress(RuntimeError):  # the grid sampler stops the study after its last point
            study.tell(trial, 0.0)
    return asked


def test_every_space_type_becomes_the_matching_optuna_distribution(tmp_path):
    dists = distributions(plan(tmp_path, MIXED.format(sampler="tpe")))
    assert dists == {
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
        "optimizer.lr": FloatDistribution(0.01, 0.1),
        "optimizer.weight_decay": FloatDistribution(1e-6, 1e-3, log=True),
        "optimizer.momentum": FloatDistribution(0.5, 0.9, step=0.2),
        "train.batch_size": IntDistribution(16, 64),
        "train.eval_batch_size": IntDistribution(100, 700, step=300),
        "data.subset": IntDistribution(100, 1000, log=True),
        "model.activation": CategoricalDistribution(["relu", "tanh"]),
        # Optuna keeps scalars only: a list choice travels as the Hydra text that sets it
        "model.hidden_sizes": CategoricalDistribution(["[64]", "[128,64]"]),
    }


def test_list_choice_becomes_a_hydra_list_override_and_the_group_comes_first():
    params = {"optimizer.lr": 0.05, "model.hidden_sizes": "[128,64]", "model": "mlp", "model.activation": "tanh"}
    assert overrides_for(params) == [
        "model=mlp",  # the group is picked first, so the keys after it land in the chosen model
        "model.activation=tanh",
        "model.hidden_sizes=[128,64]",
        "optimizer.lr=0.05",
    ]


@pytest.mark.parametrize("value, text", [(1e-05, "1e-05"), (0.1, "0.1"), (True, "true"), (None, "null"), (32, "32")])
def test_scalar_overrides_are_hydra_syntax(value, text):
    assert overrides_for({"data.resize": value}) == [f"data.resize={text}"]


def test_sampled_values_reach_the_trial_config_unchanged(tmp_path):
    """What Optuna samples is exactly what a trial trains with: ask a real study, compose each trial."""
    sweep_plan = plan(tmp_path, MIXED.format(sampler="random"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler("random", sweep_plan.dims, 0, False))
    spec = trial_spec(sweep_plan)
    seen = set()
    for _ in range(6):
        params = study.ask(distributions(sweep_plan)).params
        cfg = compose_trial(spec, {**params, "seed": 1})
        seen.add(cfg.optimizer.name)
        assert cfg.train.seed == 1 and cfg.optimizer.name == params["optimizer"]
        assert cfg.optimizer.lr == params["optimizer.lr"]
        assert cfg.optimizer.weight_decay == params["optimizer.weight_decay"]
        assert cfg.optimizer.momentum == pytest.approx(params["optimizer.momentum"])
        assert any(params["optimizer.momentum"] == pytest.approx(v) for v in (0.5, 0.7, 0.9))
        assert cfg.train.batch_size == params["train.batch_size"]
        assert cfg.train.eval_batch_size == params["train.eval_batch_size"]
        assert params["train.eval_batch_size"] in (100, 400, 700)
        assert cfg.data.subset == params["data.subset"] and 100 <= params["data.subset"] <= 1000
        assert cfg.model.activation == params["model.activation"]
        assert list(cfg.model.hidden_sizes) == {"[64]": [64], "[128,64]": [128, 64]}[params["model.hidden_sizes"]]
    assert seen == {"sgd", "adam"}


def test_an_interpolation_that_reads_a_searched_key_takes_the_trials_value_as_its_rerun_does(tmp_path):
    """``eval_batch_size: ${train.batch_size}`` with train.batch_size searched: each trial resolves it with its own
    value, as the rerun's command line (``sweeplab best``) does; before, the trial kept the default's."""
    from sweeplab.compose import compose
    from sweeplab.sweep.launch import trial_spec
    from sweeplab.sweep.trainable import _composed, trial_overrides

    sweep_plan = plan(tmp_path, """
train: {eval_batch_size: "${train.batch_size}"}
optimizer: {weight_decay: "${optimizer.lr}"}
sweep:
  space:
    optimizer.lr: {type: categorical, choices: [0.1, 0.01]}
    train.batch_size: {type: int, low: 16, high: 32}
""")
    spec = trial_spec(sweep_plan)
    config = {"optimizer.lr": 0.1, "train.batch_size": 20, "seed": 0}
    trial = compose_trial(spec, config)
    assert (trial.train.eval_batch_size, trial.optimizer.weight_decay) == (20, 0.1)
    rerun = compose(trial_overrides(spec, config), sweep_plan.sweep_file)
    assert (rerun.train.eval_batch_size, rerun.optimizer.weight_decay) == (20, 0.1)
    # a sweep whose interpolations read no searched key resolves its config once, not each trial
    plain = trial_spec(plan(tmp_path, "sweep:\n  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1}}\n",
                            name="plain", overrides=["tracking=server"]))
    assert _composed(plain.sweep_file, plain.sweep_text, plain.overrides, plain.project_root,
                     plain.space_keys)[1] is False


def test_group_choice_composes_the_chosen_model_with_its_own_defaults(tmp_path):
    sweep_plan = plan(tmp_path, """
sweep:
  space:
    model: {type: categorical, choices: [mlp, lenet]}
    model.activation: {type: categorical, choices: [tanh]}
""")
    spec = trial_spec(sweep_plan)
    cfg = compose_trial(spec, {"model": "lenet", "model.activation": "tanh", "seed": 0})
    assert cfg.model.name == "lenet" and cfg.model.activation == "tanh" and "conv1_filters" in cfg.model


def test_grid_points_of_a_mixed_space(tmp_path):
    sweep_plan = plan(tmp_path, MIXED.format(sampler="grid")
                      .replace("optimizer.lr: {type: float, low: 0.01, high: 0.1}",
                               "optimizer.lr: {type: float, low: 0.01, high: 0.02, step: 0.01}")
                      .replace("data.subset: {type: int, low: 100, high: 1000, log: true}",
                               "data.subset: {type: categorical, choices: [100, 1000]}")
                      .replace("optimizer.weight_decay: {type: float, low: 1.0e-6, high: 1.0e-3, log: true}",
                               "optimizer.weight_decay: {type: categorical, choices: [0.0]}")
                      .replace("train.batch_size: {type: int, low: 16, high: 64}",
                               "train.batch_size: {type: int, low: 16, high: 64, step: 48}")
                      # Optuna's grid sampler scans every trial per ask: a small grid keeps this fast
                      .replace("optimizer.momentum: {type: float, low: 0.5, high: 0.9, step: 0.2}",
                               "optimizer.momentum: {type: float, low: 0.5, high: 0.9, step: 0.4}"))
    axes = {
        "optimizer": ["sgd", "adam"],
        "optimizer.lr": [0.01, 0.02],
        "optimizer.weight_decay": [0.0],
        "optimizer.momentum": [0.5, 0.9],
        "train.batch_size": [16, 64],
        "train.eval_batch_size": [100, 400, 700],
        "data.subset": [100, 1000],
        "model.activation": ["relu", "tanh"],
        "model.hidden_sizes": ["[64]", "[128,64]"],
    }
    expected = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    points = asked_grid_points(sweep_plan)
    assert len(points) == len(expected) == 2 * 2 * 2 * 2 * 3 * 2 * 2 * 2
    assert sorted(map(repr, points)) == sorted(map(repr, expected))  # each point exactly once
    assert sweep_plan.num_configs == len(expected)
    assert sweep_plan.num_trials == 2 * len(expected)  # every configuration once per seed


def test_optuna_grid_sampler_asks_every_grid_point_exactly_once(tmp_path):
    sweep_plan = plan(tmp_path, """
sweep:
  sampler: grid
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.03, step: 0.01}
    train.eval_batch_size: {type: int, low: 1, high: 3}
    model.hidden_sizes: {type: categorical, choices: [[64], [128, 64]]}
""")
    assert sweep_plan.num_configs == 3 * 3 * 2
    expected = [{"optimizer.lr": lr, "train.eval_batch_size": e, "model.hidden_sizes": h}
                for lr, e, h in itertools.product([0.01, 0.02, 0.03], [1, 2, 3], ["[64]", "[128,64]"])]
    key = lambda p: (round(p["optimizer.lr"], 9), p["train.eval_batch_size"], p["model.hidden_sizes"])  # noqa: E731
    assert sorted(map(key, asked_grid_points(sweep_plan))) == sorted(map(key, expected))


# --- bad sweep files: rejected before anything starts, naming the key and the file -------------
BAD = {
    "typo_in_sweep_block": ("""
sweep:
  num_trail: 4
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.1}
""", "num_trail"),
    "typo_in_space_field": ("""
sweep:
  space:
    optimizer.lr: {type: float, low: 0.01, hihg: 0.1}
""", "hihg"),
    "space_key_not_in_config": ("""
sweep:
  space:
    optimizer.learning_rate: {type: float, low: 0.01, high: 0.1}
""", "optimizer.learning_rate"),
    "empty_range": ("""
sweep:
  space:
    optimizer.lr: {type: float, low: 0.1, high: 0.1}
""", "optimizer.lr"),
    "inverted_range": ("""
sweep:
  space:
    train.eval_batch_size: {type: int, low: 8, high: 2}
""", "train.eval_batch_size"),
    "log_range_from_zero": ("""
sweep:
  space:
    optimizer.lr: {type: float, low: 0.0, high: 0.1, log: true}
""", "optimizer.lr"),
    "log_range_below_zero": ("""
sweep:
  space:
    optimizer.lr: {type: float, low: -1.0, high: 0.1, log: true}
""", "optimizer.lr"),
    "unknown_sampler": ("""
sweep:
  sampler: bayesian
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.1}
""", "sampler"),
    "unknown_type": ("""
sweep:
  space:
    optimizer.lr: {type: double, low: 0.01, high: 0.1}
""", "optimizer.lr"),
    "empty_choices": ("""
sweep:
  space:
    model.activation: {type: categorical, choices: []}
""", "model.activation"),
    "grid_float_without_step": ("""
sweep:
  sampler: grid
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.1}
""", "optimizer.lr"),
    "unknown_group_option": ("""
sweep:
  space:
    model: {type: categorical, choices: [mlp, resnet50]}
""", "resnet50"),
    "key_missing_in_a_group_choice": ("""
sweep:
  space:
    model: {type: categorical, choices: [mlp, lenet]}
    model.hidden_sizes: {type: categorical, choices: [[64], [128, 64]]}
""", "model=lenet"),
    "empty_space": ("""
sweep:
  space: {}
""", "sweep.space"),
    "unknown_scheduler": ("""
sweep:
  scheduler: {kind: bohb}
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.1}
""", "bohb"),
}


@pytest.mark.parametrize("objectives", [
    "metric: test/acc",
    "metric: test/loss\n  mode: min",
    "objectives: [{metric: val/acc, mode: max}, {metric: test/loss, mode: min}]",
])
def test_a_metric_trials_never_report_per_epoch_is_refused_at_planning(tmp_path, objectives):
    """test/* is scored once after training: a sweep steered by it would end every trial in error."""
    path = write_sweep(tmp_path, "test_metric", f"""
sweep:
  {objectives}
  space:
    optimizer.lr: {{type: float, low: 0.01, high: 0.1}}
""")
    with pytest.raises(ConfigError) as caught:
        plan_sweep(str(path), [f"output_dir={tmp_path / 'out'}"])
    message = str(caught.value)
    assert "test/" in message and "never reported per epoch" in message and str(path) in message
    assert "val/acc" in message  # what to use instead


@pytest.mark.parametrize("name", list(BAD))
def test_bad_sweep_file_is_rejected_naming_key_and_file(tmp_path, name):
    body, key = BAD[name]
    path = write_sweep(tmp_path, name, body)
    with pytest.raises(ConfigError) as caught:
        plan_sweep(str(path), [f"output_dir={tmp_path / 'out'}"])
    message = str(caught.value)
    assert key in message, message
    assert str(path) in message, message


@pytest.mark.parametrize(("body", "suggestion"), [
    ("sweep:\n  space: {optimizer.lrr: {type: float, low: 0.01, high: 0.1}}\n",
     "'optimizer.lrr' is not a key of the composed config; did you mean 'optimizer.lr'?"),
    ("train: {epochz: 3}\nsweep:\n  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1}}\n",
     "key train.epochz); its keys are: batch_size, cuda_graphs, device, epochs,"),
    ("sweep:\n  samplr: tpe\n  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1}}\n",
     "key sweep.samplr); its keys are: checkpoint_interval_s,"),
])
def test_a_misspelled_key_in_a_sweep_file_gets_the_nearest_right_one(tmp_path, body, suggestion):
    path = write_sweep(tmp_path, "typo", body)
    with pytest.raises(ConfigError) as caught:
        plan_sweep(str(path), [f"output_dir={tmp_path / 'out'}"])
    message = str(caught.value)
    assert suggestion in message and str(path) in message, message
    assert message.endswith("?") or "did you mean" in message, message


def test_a_step_that_divides_the_range_as_written_is_accepted(tmp_path):
    """In floats 0.1 - 0.01 is not a whole number of 0.01 steps; as written it is, and every point is searched."""
    sweep_plan = plan(tmp_path, """
sweep:
  sampler: grid
  space:
    optimizer.lr: {type: float, low: 0.01, high: 0.1, step: 0.01}
    train.batch_size: {type: int, low: 16, high: 64, step: 16}
""")
    assert distributions(sweep_plan)["optimizer.lr"] == FloatDistribution(0.01, 0.1, step=0.01)
    assert sweep_plan.num_configs == 10 * 4


def test_a_loss_is_minimised_and_offline_datasets_are_searched(tmp_path):
    sweep_plan = plan(tmp_path, """
sweep:
  sampler: grid
  metric: val/loss
  mode: min
  space: {data: {type: categorical, choices: [mnist5k, digits]}}
""")
    assert sweep_plan.objectives == [("val/loss", "min")] and sweep_plan.num_configs == 2


def test_a_searched_key_cannot_also_be_set_on_the_command_line(tmp_path):
    path = write_sweep(tmp_path, "clash", "sweep:\n  space:\n    optimizer.lr: {type: float, low: 0.01, high: 0.1}")
    with pytest.raises(ConfigError, match="optimizer.lr"):
        plan_sweep(str(path), ["optimizer.lr=0.5"])


def test_launch_stops_at_a_bad_file_before_ray_or_any_output(tmp_path):
    import ray

    ray.shutdown()  # whatever an earlier test left, so what follows shows launch started nothing
    path = write_sweep(tmp_path, "inverted", BAD["inverted_range"][0])
    with pytest.raises(ConfigError, match="train.eval_batch_size"):
        launch_sweep(str(path), [f"output_dir={tmp_path / 'out'}"])
    assert not ray.is_initialized()
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_sweep_file_in_one_line_with_exit_2(tmp_path):
    path = write_sweep(tmp_path, "logzero", BAD["log_range_from_zero"][0])
    started = time.monotonic()
    done = sweeplab("sweep", str(path), cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.lr" in lines[0] and str(path) in lines[0], done.stderr
    assert not (tmp_path / "outputs").exists()  # nothing started: no Ray, no stores
    assert elapsed < 60  # a mistake is reported in seconds, not after Ray starts


def test_cli_names_an_unknown_sweep(tmp_path):
    done = cli("sweep", "no_such_sweep", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no_such_sweep" in done.stderr and "smoke" in done.stderr  # the known sweeps are listed


def test_a_worker_composes_its_trial_without_the_sweep_file_on_disk(tmp_path):
    """Cluster workers get the sweep file's text in the trial spec, not a path they may lack."""
    import dataclasses

    text = "# @package _global_\ndefaults:\n  - override /model: mlp\n  - _self_\ntrain: {epochs: 7}\n" \
        "sweep:\n  space:\n    optimizer.lr: {type: float, low: 0.1, high: 0.5}\n"
    written = tmp_path / "x.yaml"
    written.write_text(text)
    spec = trial_spec(plan_sweep(str(written), [f"output_dir={tmp_path / 'out'}"]))
    written.unlink()  # the worker has only the spec
    spec = dataclasses.replace(spec, sweep_file=str(tmp_path / "gone" / "x.yaml"))
    cfg = compose_trial(spec, {"optimizer.lr": 0.25, "seed": 3})
    assert (cfg.model.name, cfg.train.epochs, cfg.optimizer.lr, cfg.train.seed) == ("mlp", 7, 0.25, 3)


# --- values travel as Hydra overrides: data, never syntax -------------------------------------
AWKWARD = ["/data/my datasets", "/données/été", "a,b,c", "it's", "C:\\data\\", "true", "1e-3", "null", "",
           "/data/plain", "sqlite:////abs/mlflow.db", "postgresql://bob@db:5432/optuna"]


@pytest.mark.parametrize("value", AWKWARD)
def test_an_override_sets_exactly_the_value_given(value):
    from sweeplab.compose import compose

    cfg = compose([to_override("data.root", value), to_override("tracking.experiment", value)])
    assert cfg.data.root == value and cfg.tracking.experiment == value


def test_the_best_command_reruns_with_a_data_root_holding_spaces_and_accents(tmp_path):
    """`sweeplab best` prints a shell line; pasted into a shell it must set the same data.root."""
    import shlex

    from sweeplab.compose import compose
    from sweeplab.sweep.outcome import SweepOutcome, TrialRow
    from sweeplab.sweep.rerun import best_command

    root = str(tmp_path / "mes données, été")
    path = write_sweep(tmp_path, "quoted",
                       "sweep:\n  space:\n    model.activation: {type: categorical, choices: [tanh, relu]}")
    record = {"sweep_id": "quoted-1", "sweep_file": str(path), "overrides": [to_override("data.root", root)],
              "seeds": [3], "objectives": [["val/acc", "max"]]}
    trial = TrialRow(0, {"model.activation": "tanh"}, "COMPLETE", "completed", [0.9], [0.0], 2,
                     seeds={"3": {"status": "completed", "values": [0.9]}})
    command, prog = shlex.split(best_command(SweepOutcome(record, [trial]), trial)), shlex.split(program())
    assert command[:len(prog) + 1] == [*prog, "train"]
    cfg = compose(command[len(prog) + 1:])
    assert (cfg.data.root, cfg.model.activation, cfg.train.seed) == (root, "tanh", 3)



def test_a_space_drawing_cuda_without_a_gpu_granted_is_refused(tmp_path):
    """Ray grants no GPU at sweep.resources.gpu=0 and hides none: a trial drawing cuda would train unaccounted."""
    body = """
sweep:
  space:
    train.device: {type: categorical, choices: [cpu, cuda]}
"""
    with pytest.raises(ConfigError, match=r"train.device=cuda \(a choice of sweep.space\) but sweep.resources.gpu=0") \
            as err:
        plan(tmp_path, body)
    assert "or train on CPUs with cuda left out of sweep.space's train.device choices" in str(err.value)
    assert plan(tmp_path, body, overrides=["sweep.resources.gpu=1"]).dims[0].choices == ("cpu", "cuda")
    # a sweep begun before this was checked resumes (and syncs) with the overrides it recorded
    recorded = plan_sweep(str(write_sweep(tmp_path, "space", body)), [f"output_dir={tmp_path / 'out'}"], recorded=True)
    assert recorded.dims[0].choices == ("cpu", "cuda")
