"""What Hydra users type at `sweeplab train`: --cfg, --info, -m, hydra.run.dir, .hydra/, --version,
python -m sweeplab and shell completion."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sweep_helpers import cli, journal_in

import sweeplab
from sweeplab.completion import candidates, install_script
from sweeplab.compose import compose, conf_dir
from sweeplab.errors import ConfigError
from sweeplab.sweep.multirun import multirun_sweep

COMMANDS = {"": ["--version", "--shell-completion"], "train": ["--cfg", "--info", "--multirun"], "sweep": ["--resume"],
            "status": [], "models": []}


def test_version_prints_the_package_version(tmp_path):
    done = cli("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"sweeplab {sweeplab.__version__}\n")


def test_python_dash_m_sweeplab_is_the_same_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(sweeplab.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "sweeplab", "--version"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"sweeplab {sweeplab.__version__}\n"), done.stderr


@pytest.mark.parametrize("flag", ["--cfg", "-c"])
def test_cfg_job_prints_the_composed_config_and_trains_nothing(flag, tmp_path):
    done = cli("train", "model=mlp", "optimizer.lr=0.2", flag, "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed == yaml.safe_load(yaml.safe_dump(_plain(compose(["model=mlp", "optimizer.lr=0.2"]))))
    assert list(tmp_path.iterdir()) == []


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def test_cfg_all_adds_hydra_record_with_the_picked_options_and_run_dir(tmp_path):
    done = cli("train", "model=mlp", f"hydra.run.dir={tmp_path / 'here'}", "--cfg", "all", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["model"]["name"] == "mlp"
    assert printed["hydra"]["runtime"]["choices"]["model"] == "mlp"
    assert printed["hydra"]["run"]["dir"] == str(tmp_path / "here")
    assert not (tmp_path / "here").exists()


@pytest.mark.parametrize("which", ["job", "all"])
def test_sweep_cfg_prints_what_its_trials_compose_from_and_starts_nothing(which, tmp_path):
    """`sweeplab sweep smoke --cfg job`: the sweep file and the overrides composed, sweep: block included, as
    `train --cfg` prints a run's; no Ray, no store, no output folder."""
    out = tmp_path / "out"
    done = cli("sweep", "smoke", "--cfg", which, "train.epochs=1", f"output_dir={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    composed = _plain(compose(["train.epochs=1", f"output_dir={out}"], conf_dir().parent / "sweeps" / "smoke.yaml"))
    assert {k: v for k, v in printed.items() if k != "hydra"} == yaml.safe_load(yaml.safe_dump(composed))
    assert printed["sweep"]["name"] == "smoke" and "optimizer.lr" in printed["sweep"]["space"]
    if which == "all":
        assert printed["hydra"]["runtime"]["choices"]["model"] == "mlp"
    assert not out.exists()


def test_a_removal_override_may_follow_a_flag(tmp_path):
    """`~key` and `~key=value` are Hydra's overrides that remove a key: after a flag they reach Hydra as before it."""
    for removal in ("~model", "~model=mlp"):
        before = cli("train", "model=mlp", removal, "--cfg", "job", cwd=tmp_path)
        after = cli("train", "model=mlp", "--cfg", "job", removal, cwd=tmp_path)
        assert after.returncode == before.returncode == 2 and after.stderr == before.stderr, after.stderr
        assert f"({removal} removed it)" in after.stderr


def test_info_lists_search_path_groups_and_their_options(tmp_path):
    done = cli("train", "model=mlp", "--info", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert conf_dir().as_uri() in done.stdout
    for group in ("model", "optimizer", "data"):
        options = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        assert any(line.split()[:1] == [group] and ", ".join(options) in line for line in done.stdout.splitlines())
    model_line = next(line for line in done.stdout.splitlines() if line.split()[:1] == ["model"])
    assert model_line.split()[1] == "mlp"
    both = cli("train", "model=mlp", "--cfg", "job", "--info", cwd=tmp_path)  # each prints and exits: one of them
    assert both.returncode == 2 and "argument --info: not allowed with argument -c/--cfg" in both.stderr


def test_a_comma_list_without_multirun_says_to_add_m(tmp_path):
    done = cli("train", "optimizer.lr=0.01,0.1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("sweeplab train: error: optimizer.lr=0.01,0.1") and "add -m" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_several_options_of_a_group_without_multirun_say_to_pick_one_not_to_give_a_list():
    from sweeplab.errors import UserError
    from sweeplab.hydra_habits import refuse_sweeps_without_multirun

    with pytest.raises(UserError) as err:
        refuse_sweeps_without_multirun(["model=mlp,lenet"])
    assert str(err.value).endswith("for one run, pick one of them, e.g. model=mlp") and "[a,b]" not in str(err.value)
    with pytest.raises(UserError) as err:  # glob(): the group's options
        refuse_sweeps_without_multirun(["model=glob(*net*)"])
    assert str(err.value).endswith("for one run, pick one of the group's options: alexnet, googlenet, lenet, mlp, "
                                   "rnn, simple_convnet, vgg, vgg16")


def test_several_values_of_what_a_sweep_shares_do_not_send_the_user_to_m():
    """-m's grid would refuse them too: a sweep's tracking, cluster and sweep settings are one for all its runs."""
    from sweeplab.errors import UserError
    from sweeplab.hydra_habits import refuse_sweeps_without_multirun

    with pytest.raises(UserError) as err:
        refuse_sweeps_without_multirun(["tracking=local,none"])
    assert str(err.value) == ("tracking=local,none names several values, and tracking is one for all of a sweep's "
                              "runs, so -m cannot train a run for each either; pick one of them, e.g. tracking=local")
    with pytest.raises(UserError) as err:
        refuse_sweeps_without_multirun(["cluster.num_cpus=1,2"])
    assert str(err.value).endswith("give it one value, e.g. cluster.num_cpus=1 (or a list, cluster.num_cpus=[a,b], "
                                   "where it takes one)")


def test_multirun_gives_each_run_told_to_train_on_cuda_a_gpu(tmp_path):
    """As `sweeplab train train.device=cuda` trains on a GPU, so does each run of the same -m line."""
    for device, gpu in (("train.device=cuda", 1), ("train.device=cpu,cuda", 1), ("train.device=auto", 0)):
        path, _, _ = multirun_sweep([f"output_dir={tmp_path}", "optimizer.lr=0.01,0.1", device])
        assert yaml.safe_load(path.read_text())["sweep"].get("resources", {"gpu": 0})["gpu"] == gpu, device


def test_hydra_settings_other_than_the_run_dir_are_refused_by_name(tmp_path):
    done = cli("train", "hydra.job.chdir=true", cwd=tmp_path)
    assert done.returncode == 2
    assert "hydra.job.chdir" in done.stderr and "hydra.run.dir" in done.stderr and len(done.stderr.splitlines()) == 1


def test_hydra_run_dir_resolves_now_as_hydra_does():
    """Hydra's own default run dir is outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}: the folder is the date, not the text."""
    import time

    from sweeplab.errors import UserError
    from sweeplab.hydra_habits import train_line

    line = train_line(["model=mlp", "hydra.run.dir=runs/${now:%Y}/x"])
    assert line.run_dir == Path("runs") / time.strftime("%Y") / "x" and line.overrides == ["model=mlp"]
    with pytest.raises(UserError, match=re.escape("hydra.run.dir=${nosuch:x}: Unsupported interpolation type")):
        train_line(["hydra.run.dir=${nosuch:x}"])


@pytest.mark.slow
def test_hydra_run_dir_is_the_run_folder_and_holds_hydras_record(run_cli, tmp_path):
    folder = tmp_path / "my run"
    done = run_cli("train", "model=mlp", "data=digits", "train.epochs=1", f"hydra.run.dir={folder}")
    assert done.returncode == 0, done.stderr
    assert (folder / "weights.pt").is_file() and not (tmp_path / "outputs" / "train").exists()
    record = folder / ".hydra"
    assert yaml.safe_load((record / "config.yaml").read_text())["model"]["name"] == "mlp"
    overrides = yaml.safe_load((record / "overrides.yaml").read_text())
    assert overrides[:3] == ["model=mlp", "data=digits", "train.epochs=1"]
    hydra = yaml.safe_load((record / "hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["choices"]["data"] == "digits" and hydra["run"]["dir"] == str(folder)


# --- -m: the grid as a sweep file ---------------------------------------------------------------------------
def test_multirun_turns_sweep_overrides_into_a_grid(tmp_path):
    path, fixed, _ = multirun_sweep([f"output_dir={tmp_path}", "model=mlp,lenet", "optimizer.lr=0.01,0.1",
                                  "train.batch_size=range(32,96,32)", "train.seed=3,4", "data=digits"])
    assert path.parent.parent == tmp_path / "multirun"
    assert fixed == [f"output_dir={tmp_path}", "data=digits"]
    sweep = compose(fixed, path).sweep
    assert sweep.sampler == "grid" and sweep.name == "multirun" and sweep.scheduler.kind == "none"
    assert {key: list(spec.choices) for key, spec in sweep.space.items()} == {
        "model": ["mlp", "lenet"], "optimizer.lr": [0.01, 0.1], "train.batch_size": [32, 64]}
    assert list(sweep.seeds) == [3, 4]


def test_a_grid_file_holds_no_password_from_the_command_line(tmp_path):
    storage = "cluster.optuna_storage=postgresql://sweeplab:s3cret@127.0.0.1:9/optuna"
    path, fixed, _ = multirun_sweep([f"output_dir={tmp_path}", "optimizer.lr=0.01,0.1", storage])
    assert storage in fixed  # the trials get it; the file on disk does not
    assert "s3cret" not in path.read_text() and "sweeplab:***@" in path.read_text()


def test_two_grids_written_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt, *_: "20260101-120000")
    first, _, _ = multirun_sweep([f"output_dir={tmp_path}", "optimizer.lr=0.01,0.1"])
    second, _, _ = multirun_sweep([f"output_dir={tmp_path}", "optimizer.lr=0.2,0.3"])
    assert [first.parent.name, second.parent.name] == ["20260101-120000", "20260101-120000-2"]
    assert "0.01" in first.read_text() and "0.2" in second.read_text()


def test_a_quoted_grid_plans_its_trials_with_the_unquoted_values(tmp_path):
    """Quoted values are grid values like any other: the file holds their text, each trial's config gets it, and
    the trial's command line quotes it again (a path with a space stays one value)."""
    import itertools

    from sweeplab.sweep.launch import trial_spec
    from sweeplab.sweep.multirun import planned_multirun
    from sweeplab.sweep.trainable import compose_trial, trial_overrides

    plan, _ = planned_multirun([f"output_dir={tmp_path}", "model.activation='relu','tanh'",
                                "data.root='/tmp/a b','/tmp/c'", "data=digits", "tracking=none"])
    space = yaml.safe_load(plan.sweep_file.read_text())["sweep"]["space"]
    assert {key: spec["choices"] for key, spec in space.items()} == {
        "model.activation": ["relu", "tanh"], "data.root": ["/tmp/a b", "/tmp/c"]}
    assert plan.num_configs == 4
    spec = trial_spec(plan)
    for activation, root in itertools.product(["relu", "tanh"], ["/tmp/a b", "/tmp/c"]):
        config = {"model.activation": activation, "data.root": root, "seed": 0}
        for cfg in (compose_trial(spec, config), compose(trial_overrides(spec, config))):
            assert (cfg.model.activation, cfg.data.root) == (activation, root)
    assert "data.root='/tmp/a b'" in trial_overrides(spec, {"model.activation": "relu", "data.root": "/tmp/a b",
                                                             "seed": 0})


def test_multirun_glob_picks_the_matching_options_of_a_group(tmp_path):
    path, _, _ = multirun_sweep([f"output_dir={tmp_path}", "model=glob(*net*)"])
    expected = sorted(p.stem for p in (conf_dir() / "model").glob("*net*.yaml"))
    assert yaml.safe_load(path.read_text())["sweep"]["space"]["model"]["choices"] == expected


@pytest.mark.parametrize("override, named", [("optimizer.lr=interval(0.01,0.1)", "interval()"),
                                             ("+optimizer.nosuch=1,2", "+optimizer.nosuch"),
                                             ("train.epochs=5,10", "-m train.epochs=5,10: a sweep trains every trial "
                                                                   "for the same train.epochs")])
def test_multirun_refuses_what_has_no_grid(override, named, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(named)):
        multirun_sweep([f"output_dir={tmp_path}", override])
    assert list(tmp_path.iterdir()) == []  # no sweep file left behind


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("override, named", [
    ("optimizer.lr=0.1,-1", "error: -m optimizer.lr=0.1,-1: the value -1 fails"),
    ("model.activation='relu','foo'", "error: -m model.activation='relu','foo': the value 'foo' fails"),
    ("tracking.uri=http://127.0.0.1:9", "http://127.0.0.1:9"),  # a store checked before the sweep starts
])
def test_a_multirun_mistake_names_the_command_line_and_leaves_no_grid_file(override, named, relative, tmp_path):
    """A value out of range, or a store that does not answer, is found before the grid is announced, named as
    typed (not in a file the user never wrote, wherever output_dir is), and the file and folders made for the grid
    are gone."""
    output_dir = "out" if relative else tmp_path / "out"
    done = cli("train", "-m", "model=mlp,lenet", "data=digits", f"output_dir={output_dir}", override, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "multirun.yaml" not in lines[0], done.stderr
    assert "written to" not in done.stdout and not (tmp_path / "out").exists()


# --- shell completion -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("words, current, expected", [
    ([], "tr", ["train"]),
    ([], "--v", ["--version"]),
    (["train"], "--c", ["--cfg"]),
    (["train"], "model=l", ["model=lenet"]),
    (["train"], "optim", ["optimizer.", "optimizer="]),
    (["sweep"], "sm", ["smoke"]),
])
def test_completion_offers_commands_options_and_sweeps(words, current, expected):
    assert candidates(words, current, COMMANDS) == expected


def test_completion_offers_the_keys_of_the_picked_model():
    mlp = candidates(["train", "model=mlp"], "model.", COMMANDS)
    lenet = candidates(["train"], "model.", COMMANDS)
    assert "model.hidden_sizes=" in mlp and "model.hidden_sizes=" not in lenet
    assert "model.conv1_filters=" in lenet
    assert "optimizer.lr=" in candidates(["train"], "optimizer.", COMMANDS)


@pytest.mark.slow
def test_the_installed_bash_script_completes_on_tab(tmp_path):
    """The script as `eval "$(sweeplab --shell-completion install=bash)"` installs it, asked as bash asks on TAB."""
    script = cli("--shell-completion", "install=bash", cwd=tmp_path).stdout
    assert script == install_script("bash") + "\n"

    def tab(line: str) -> list[str]:
        words = line.split(" ")
        program = (f'{script}\nCOMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({" ".join(words)}); '
                   f'COMP_CWORD={len(words) - 1}; _sweeplab_complete; printf "%s\\n" "${{COMPREPLY[@]}}"')
        env = {**os.environ, "PYTHONPATH": str(Path(sweeplab.__file__).parents[1])}
        done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert tab("sweeplab tr") == ["train"]
    assert tab("sweeplab train model=mlp optimizer=ad") == ["optimizer=adam", "optimizer=adamw"]


@pytest.mark.slow
def test_multirun_runs_the_grid_as_a_tracked_sweep(tmp_path):
    """`sweeplab train -m ... optimizer.lr=0.01,0.1`: two trials through Ray, Optuna's grid sampler, and an
    MLflow parent run with a child per grid point."""
    import optuna
    import ray
    from mlflow import MlflowClient

    out = tmp_path / "outputs"
    try:
        done = cli("train", "-m", "model=mlp", "data=digits", "train.epochs=1", "train.num_threads=1",
                   "optimizer.lr=0.01,0.1", f"output_dir={out}", cwd=tmp_path)
    finally:
        ray.shutdown()
    assert done.returncode == 0, done.stderr + done.stdout
    assert any("2/2 trials, 2/2 epochs of the budget" in line for line in done.stdout.splitlines())

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("multirun")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(float(c.data.params["optimizer.lr"]) for c in children) == [0.01, 0.1]
    assert {c.data.params["model.name"] for c in children} == {"mlp"}

    storage = journal_in(out)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.user_attrs["sampler"] == "grid" and summary.study_name.startswith("multirun-")
    assert len(study.trials) == 2 and all("grid_id" in t.system_attrs for t in study.trials)  # GridSampler's mark

    # every grid is named multirun: its grid file stands for the sweep run from it, in report as in status, not
    # for the latest multirun (one started later, here its parent run alone)
    later = client.create_run(experiment.experiment_id, run_name="multirun-later",
                              tags={"sweeplab.kind": "sweep", "sweeplab.sweep_id": "multirun-later"})
    client.log_param(later.info.run_id, "sweep_name", "multirun")
    (grid_file,) = out.glob("multirun/*/multirun.yaml")
    report = cli("report", str(grid_file), f"output_dir={out}", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith(f"report for {summary.study_name}: "), report.stdout
