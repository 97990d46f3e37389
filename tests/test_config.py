"""Composition with Hydra: defaults, overrides as Hydra users write them, and errors
that name the key and the file."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweeplab.compose import compose, compose_with_choices, flatten, resolve_sweep_file, to_yaml
from sweeplab.config.schema import Loss, LrSchedule, Mode, SchedulerKind, TrainConfig
from sweeplab.errors import ConfigError
from sweeplab.models import MODELS
from sweeplab.models.layers import WeightInit
from sweeplab.models.zoo import RnnCell
from sweeplab.structured import typed

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUP_FILES = sorted(p for p in CONF.glob("*/*.yaml"))


def _file_values(path: Path) -> dict:
    """What a YAML file sets, resolved ('${oc.env:X,default}' gives its default here)."""
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    values.pop("defaults", None)
    return values


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private copy of conf/ and sweeps/, used through SWEEPLAB_HOME."""
    shutil.copytree(CONF, tmp_path / "conf")
    if (REPO / "sweeps").is_dir():
        shutil.copytree(REPO / "sweeps", tmp_path / "sweeps")
    monkeypatch.setenv("SWEEPLAB_HOME", str(tmp_path))
    return tmp_path


def test_defaults_compose_from_the_group_files():
    cfg = compose()
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml").defaults)
    picked = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}
    assert {"model", "optimizer", "data", "train"} <= set(picked)
    for group, option in picked.items():
        composed = OmegaConf.to_container(cfg[group], resolve=True)
        for key, value in _file_values(CONF / group / f"{option}.yaml").items():
            assert composed[key] == value, f"{group}.{key} is not what {group}/{option}.yaml says"
    assert cfg.model.name == "lenet" and cfg.data.name == "mnist5k"


def test_overrides_apply_as_hydra_users_expect():
    cfg = compose(["model=vgg16", "data=cifar10", "optimizer.lr=0.01", "model.activation=tanh"])
    assert cfg.model.name == "vgg"
    assert cfg.model.activation == "tanh"
    assert cfg.model.stages == _file_values(CONF / "model" / "vgg16.yaml")["stages"]
    assert cfg.data.name == "cifar10" and cfg.data.augment is True
    assert cfg.optimizer.lr == 0.01 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.name == "sgd"  # untouched groups keep their defaults


def test_list_and_nested_overrides():
    cfg = compose(["model=mlp", "model.hidden_sizes=[256,128]", "train.epochs=3"])
    assert list(cfg.model.hidden_sizes) == [256, 128] and cfg.train.epochs == 3
    cfg = compose(["model=simple_convnet", "model.conv.filter_size=3", "model.conv.pad=1"])
    assert cfg.model.conv.filter_size == 3 and cfg.model.conv.pad == 1 and cfg.model.conv.filter_num == 30


def test_misspelled_key_names_it():
    with pytest.raises(ConfigError, match=r"optimizer\.lrr"):
        compose(["optimizer.lrr=0.1"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer.lrr=0.1"], "optimizer has no key 'lrr' (optimizer.lrr); its keys are: betas, lr, momentum, name, "
                            "nesterov, weight_decay; did you mean 'lr'?"),
    (["trian.epochs=3"], "the config has no key 'trian' (trian); its keys are: cluster, data, model, optimizer, "
                         "output_dir, sweep, tracking, train; did you mean 'train'?"),
    (["sweep.scheduler.kindd=asha"], "(sweep.scheduler.kindd); its keys are: grace_period, kind,"),
    (["model=lenet", "model.conv1_filter=3"], "did you mean 'conv1_filters'?"),
    (["model=lenett"], "Available model options: alexnet, googlenet, lenet, mlp, rnn, simple_convnet, vgg, vgg16; "
                       "did you mean 'lenet'?"),
    (["data=mnist5"], "did you mean 'mnist5k'?"),
])
def test_a_misspelled_key_or_option_gets_the_nearest_right_one(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("key", ["optimizer.lrr", "foo", "outptu_dir", "train.epoch", "sweep.scheduler.kindd",
                                 "model.hidden_size"])
def test_a_key_added_with_plus_is_refused_in_the_same_words_as_without(key):
    """Hydra's + (and ++) adds any key, even to a node its schema types: composition refuses it as it refuses the
    key without +, so that --cfg, train and a sweep's planning all say so, and no typo is silently ignored."""
    with pytest.raises(ConfigError) as plain_override:
        compose(["model=mlp", f"{key}=1"])
    for plus in ("+", "++"):
        with pytest.raises(ConfigError) as added:
            compose(["model=mlp", f"{plus}{key}=1"])
        assert str(added.value) == str(plain_override.value)
    assert f"has no key '{key.rpartition('.')[2]}' ({key})" in str(plain_override.value)


def test_a_misspelled_top_level_key_added_with_plus_gets_the_nearest_one():
    with pytest.raises(ConfigError) as err:
        compose(["+outptu_dir=/data/runs"])
    assert str(err.value).startswith("the config has no key 'outptu_dir' (outptu_dir); its keys are: cluster, data,")
    assert str(err.value).endswith("; did you mean 'output_dir'?")


def test_plus_still_adds_keys_where_no_schema_types_them():
    """sweep.space and a sampler's arguments are free-form: + adds to them as Hydra users expect."""
    cfg = compose(["+sweep.space.model={type:categorical,choices:[mlp,lenet]}",
                   "sweep.sampler={_target_:optuna.samplers.TPESampler}", "+sweep.sampler.n_startup_trials=5"])
    assert list(cfg.sweep.space.model.choices) == ["mlp", "lenet"] and cfg.sweep.sampler.n_startup_trials == 5


@pytest.mark.parametrize("override, message", [
    ("~data.subset", "data.subset is a key of the data schema and cannot be deleted (~data.subset); "
                     "to unset it: data.subset=null"),
    ("~train.epochs=12", "train.epochs is a key of the train schema and cannot be deleted (~train.epochs=12); "
                         "set it instead, e.g. train.epochs=12 (its default)"),
    ("~optimizer.lr", "set it instead: optimizer.lr=<value>"),
    ("~output_dir", "output_dir is a key of the top-level schema and cannot be deleted (~output_dir); "
                    "set it instead, e.g. output_dir=outputs (its default)"),
    ("~sweep.space", "set it instead, e.g. sweep.space={} (its default)"),
    ("~data.subsett", "data has no key 'subsett' (data.subsett); its keys are: augment,"),
    ("~foo", "the config has no key 'foo' (foo)"),
    ("~model", "model has no value (~model removed it)"),  # a group: removed, then named as missing
])
def test_deleting_a_key_of_a_schema_says_how_to_set_it_instead(override, message):
    """Hydra says a key whose value is null "does not exist", and a typed node refuses any deletion."""
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert message in str(err.value)


SHAPES = [  # (the sweep block's line, or an override; the message)
    ("space:\n    - optimizer.lr", "sweep.space must be a mapping like {optimizer.lr: {type: float, "),
    ("scheduler: asha", "sweep.scheduler must be a mapping like {kind: asha}, not asha"),
    ("scheduler: [asha]", "sweep.scheduler must be a mapping like {kind: asha}, not [asha]"),
    ("resources: 2", "sweep.resources must be a mapping like {cpu: 1.0}, not 2"),
    ("objectives: val/acc", "sweep.objectives must be a list of mappings like [{metric: val/acc, mode: max}, "),
    ("objectives: [val/acc]", "sweep.objectives must be a list of mappings like [{metric: val/acc, mode: max}, "),
    ("seeds: 3", "sweep.seeds must be a list like [0, 1, 2], not 3"),
    ("scheduler: {kind: [asha]}", "sweep.scheduler.kind must be one of asha, median, hyperband, pbt, none"),
    ("num_trials: [4]", "sweep.num_trials must be a whole number, not [4]"),
    ("num_trials: many", "sweep.num_trials must be a whole number, not many"),
]


@pytest.mark.parametrize("line, message", SHAPES, ids=[line for line, _ in SHAPES])
def test_a_key_of_the_wrong_shape_in_a_sweep_file_is_named_with_its_shape(line, message, tmp_path):
    """A mapping where the schema has a list or a value, or the other way round: the key, the shape it takes
    (from its schema type), and the file."""
    path = tmp_path / "shape.yaml"
    path.write_text("# @package _global_\nsweep:\n  " + line.replace("\n", "\n  ") + "\n")
    with pytest.raises(ConfigError) as err:
        compose([], path)
    assert message in str(err.value) and str(err.value).endswith(f"(in {path})"), str(err.value)


@pytest.mark.parametrize("model, override", [("mlp", "model.hidden_sizes.5=3"), ("vgg", "model.stages.0.3=64")])
def test_an_item_past_its_lists_end_says_the_list_to_set_and_that_list_composes(model, override):
    with pytest.raises(ConfigError) as err:
        compose([f"model={model}", override])
    message = str(err.value)
    assert re.fullmatch(rf"\S+ has \d items?, so no item \d \({re.escape(override)}\); to give it more, set the "
                        r"whole list, e\.g\. \S+=\[.+\]", message), message
    instead = message.rsplit("e.g. ", 1)[1]
    composed = OmegaConf.select(compose([f"model={model}", instead]), instead.split("=", 1)[0])
    assert OmegaConf.to_container(composed)[-1] == int(override.rsplit("=", 1)[1]), instead


def test_an_objective_set_past_the_end_gets_a_list_of_mappings_that_composes():
    """The suggested list in Hydra's grammar: a mapping's keys unquoted (JSON's quoted keys do not parse)."""
    with pytest.raises(ConfigError) as err:
        compose(["sweep.objectives.0={metric:val/loss,mode:min}"])
    instead = str(err.value).rsplit("e.g. ", 1)[1]
    assert instead == "sweep.objectives=[{metric:val/loss,mode:min}]"
    assert compose([instead]).sweep.objectives[0].metric == "val/loss"


@pytest.mark.parametrize("overrides, message", [
    # an item of a list in a list, set alone or in its list
    (["model=vgg", "model.stages.1.0=abc"],
     "model.stages[1][0] must be a whole number, not abc (model.stages.1.0=abc)"),
    (["model=vgg", "model.stages.1=[64,abc]"],
     "model.stages[1][1] must be a whole number, not abc (model.stages.1=[64,abc])"),
    # past its list's end and of the wrong type: the type first, rather than a whole list that holds it
    (["model=mlp", "model.hidden_sizes.5=abc"],
     "model.hidden_sizes[5] must be a whole number, not abc (model.hidden_sizes.5=abc)"),
    (["model=vgg", "model.stages.0.3=x"], "model.stages[0][3] must be a whole number, not x (model.stages.0.3=x)"),
    # two past their lists' ends: the first Hydra meets, with its list as the rest leave it
    (["model=mlp", "model.hidden_sizes.5=3", "optimizer.betas.7=1"],
     "model.hidden_sizes has 2 items, so no item 5 (model.hidden_sizes.5=3); to give it more, set the whole list, "
     "e.g. model.hidden_sizes=[100,100,3]"),
    # what OmegaConf fails on outside its own errors
    (["model=mlp", "~model.hidden_sizes.1"],
     "~model.hidden_sizes.1 would remove an item of a list, which an override cannot do; set the whole list without "
     "it, e.g. model.hidden_sizes=[100]"),
    (["optimizer.lr=1" + "0" * 400], "optimizer.lr=100000000000... (401 digits) is too large for a number"),
    # an interpolation within a string resolves to what the key takes: the item after it is the one named
    (["sweep.seeds=['1${train.seed}',abc]"], "sweep.seeds[1] must be a whole number, not abc"),
    # null where the schema takes none
    (["train.epochs=null"], "train.epochs cannot be null: it must be a whole number (train.epochs=null)"),
    (["sweep.seeds=[0,null]"], "sweep.seeds[1] cannot be null: it must be a whole number (sweep.seeds=[0,null])"),
    (["model=vgg", "model.stages.1.0=null"], "model.stages[1][0] cannot be null: it must be a whole number"),
    (["sweep.scheduler=null"], "sweep.scheduler cannot be null: it must be a mapping like {kind: asha}"),
])
def test_an_item_of_a_list_is_named_by_its_place_and_what_omegaconf_fails_on_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("line, message", [
    ("sweep:\n  num_trials: null", "sweep.num_trials cannot be null: it must be a whole number"),
    ("sweep:\n  seeds: [0, null]", "sweep.seeds[1] cannot be null: it must be a whole number"),
    ("optimizer:\n  lr: null", "optimizer.lr cannot be null: it must be a number"),
])
def test_a_null_in_a_sweep_file_where_the_schema_takes_none_is_named_with_the_file(line, message, tmp_path):
    path = tmp_path / "nulls.yaml"
    path.write_text(f"# @package _global_\n{line}\n")
    with pytest.raises(ConfigError) as err:
        compose([], path)
    assert str(err.value) == f"{message} (in {path})"


def test_numbers_omegaconf_reads_from_strings_are_not_taken_for_the_misfit(tmp_path):
    """YAML reads 1e-3 and 1_000 as strings, which OmegaConf converts: the key it refused is the one named."""
    path = tmp_path / "numbers.yaml"
    path.write_text("# @package _global_\noptimizer:\n  lr: 1e-3\ntrain:\n  epochs: 1_000\n"
                    "sweep:\n  num_trials: many\n")
    with pytest.raises(ConfigError) as err:
        compose([], path)
    assert str(err.value).startswith("sweep.num_trials must be a whole number, not many"), str(err.value)
    path.write_text("# @package _global_\noptimizer:\n  lr: 1e-3\ntrain:\n  epochs: 1_000\n")
    cfg = compose(["train.batch_size='32'"], path)
    assert (cfg.optimizer.lr, cfg.train.epochs, cfg.train.batch_size) == (0.001, 1000, 32)


@pytest.mark.parametrize("override, message", [
    ("sweep.scheduler=asha", "sweep.scheduler must be a mapping like {kind: asha}, not asha (sweep.scheduler=asha)"),
    ("sweep.seeds=3", "sweep.seeds must be a list like [0, 1, 2], not 3 (sweep.seeds=3)"),
    ("sweep.space=[optimizer.lr]", "sweep.space must be a mapping like {optimizer.lr: "),
    ("sweep.objectives=[val/acc]", "sweep.objectives must be a list of mappings like [{metric: val/acc, "),
    ("optimizer.betas=0.9", "optimizer.betas must be a list like [0.9, 0.999], not 0.9 (optimizer.betas=0.9)"),
    ("model.hidden_sizes=3", "model.hidden_sizes must be a list like [100, 100], not 3"),
    ("train.epochs=[1]", "train.epochs must be a whole number, not [1] (train.epochs=[1])"),
    # a single value its number type does not take (OmegaConf: "could not be converted to Integer")
    ("train.epochs=abc", "train.epochs must be a whole number, not abc (train.epochs=abc)"),
    ("train.epochs=1.5", "train.epochs must be a whole number, not 1.5 (train.epochs=1.5)"),
    ("optimizer.lr=fast", "optimizer.lr must be a number, not fast (optimizer.lr=fast)"),
    ("model.hidden_sizes=[1,x]", "model.hidden_sizes[1] must be a whole number, not x (model.hidden_sizes=[1,x])"),
    # a list in a typed list: OmegaConf merged it unchecked (and names no key where it does check)
    ("model.hidden_sizes=[[1]]", "model.hidden_sizes must be a list like [100, 100], not [[1]] "
                                 "(model.hidden_sizes=[[1]])"),
])
def test_an_override_of_the_wrong_shape_is_named_with_its_shape(override, message):
    with pytest.raises(ConfigError) as err:
        compose(["model=mlp", override])
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("override", ["model.stages=[1,2]", "model.stages=[[1],2]", "model.stages=3"])
def test_an_item_of_a_list_in_a_list_of_the_wrong_shape_names_its_key(override):
    with pytest.raises(ConfigError) as err:
        compose(["model=vgg", override])
    assert str(err.value).startswith("model.stages must be a list of lists like [[32], [64], [128, 128], "), err.value
    assert str(err.value).endswith(f"({override})") and "(key 0)" not in str(err.value)


@pytest.mark.parametrize("override", ["train=[1]", "train=1", "model=null", "model=[1,2]", "model=", "model=''"])
def test_a_config_group_given_no_option_name_lists_its_options(override):
    group = override.split("=")[0]
    with pytest.raises(ConfigError) as err:  # Hydra raised a TypeError or a ValueError from inside itself
        compose([override])
    assert str(err.value).startswith(f"{override}: {group} is a config group; give it the name of one of its "
                                     "options: "), err.value


@pytest.mark.parametrize("override", ["model=[lenet,mlp]", "model=lenet,mlp"])
def test_several_options_of_a_config_group_say_how_to_run_each(override):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert "picks several options of the config group model, which takes one: train each with 'sweeplab train " \
           "-m model=lenet,mlp', or search them in a sweep file's space (model: {type: categorical, choices: " \
           "[lenet, mlp]})" in str(err.value)
    cfg, choices = compose_with_choices(["model=[mlp]"])  # Hydra's list of one option is that option
    assert cfg.model.name == "mlp" and choices["model"] == "mlp"  # and recorded as the group's choice


def test_several_options_of_a_group_a_sweep_shares_say_to_pick_one():
    """tracking, cluster and sweep are one for all of a sweep's trials: neither -m nor a sweep space searches them."""
    with pytest.raises(ConfigError) as err:
        compose(["tracking=[local,none]"])
    assert str(err.value) == ("tracking=[local,none] picks several options of the config group tracking, which takes "
                              "one, shared by all of a sweep's trials: pick one of them, e.g. tracking=local")


def test_an_unknown_option_is_named_as_typed_with_the_group_s_options():
    with pytest.raises(ConfigError) as err:
        compose(["model=[MLP]"])
    assert str(err.value).startswith("unknown model 'MLP' (model=[MLP]). Available model options: alexnet, googlenet, "
                                     "lenet, mlp, rnn, simple_convnet, vgg, vgg16"), err.value


def test_a_group_s_mapping_of_the_wrong_shape_is_named_not_the_sweep_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        compose(["model=mlp", "model={hidden_sizes:[[1]]}"], resolve_sweep_file("smoke"))
    assert str(err.value) == ("model.hidden_sizes must be a list like [100, 100], not [[1]] "
                              "(model={hidden_sizes:[[1]]})")
    # a mapping that holds other keys is not where the value came from, nor the option a file names
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    bad = sweeps / "badfc.yaml"
    bad.write_text("# @package _global_\ndefaults:\n  - override /model: lenet\n  - _self_\nmodel: {fc_sizes: [[1]]}\n")
    with pytest.raises(ConfigError) as err:
        compose(["model={activation: tanh}"], bad)
    assert str(err.value).endswith(f"not [[1]] (in {bad})"), err.value
    bad.write_text("# @package _global_\ndefaults:\n  - override /model: lenet5\n  - _self_\n")
    with pytest.raises(ConfigError) as err:
        compose(["model={activation: tanh}"], bad)
    assert str(err.value).startswith(f"unknown model 'lenet5' (in {bad}). Available model options: "), err.value


def test_an_item_set_by_its_dotted_index_is_named_by_its_key():
    with pytest.raises(ConfigError) as err:
        compose(["model=vgg", "model.stages.0=3"])
    assert str(err.value).startswith("model.stages[0] must be a list like ") and \
        str(err.value).endswith(", not 3 (model.stages.0=3)"), err.value


@pytest.mark.parametrize("override", ["model=glob(*)", "model=range(1,3)", "model=interval(0,1)", "model=range(0)"])
def test_a_sweep_of_a_config_group_without_multirun_is_one_line(override):
    with pytest.raises(ConfigError, match="requires --multirun"):  # before: Hydra's own exceptions, a traceback
        compose([override])


def test_a_mapping_for_a_config_group_sets_keys_of_its_option():
    assert compose(["model={activation:tanh}"]).model.activation == "tanh"  # as Hydra merges it


@pytest.mark.parametrize("body, message", [
    ("defaults:\n  - override /model: lenet\nmodel: {fc_sizes: [[120], 84]}",
     "model.fc_sizes must be a list like [120, 84], not [[120], 84] (in "),
    # OmegaConf names no key for an item of a list in a list, and the model's keys are its defaults' model's
    ("defaults:\n  - override /model: vgg\nmodel: {stages: [1, 2]}",
     "model.stages must be a list of lists like [[32], [64], [128, 128], [128, 128]], not [1, 2] (in "),
])
def test_a_list_in_a_list_of_the_wrong_shape_in_a_sweep_file_names_the_key_and_the_file(tmp_path, body, message):
    path = tmp_path / "shape.yaml"
    path.write_text("# @package _global_\n" + body + "\n")
    with pytest.raises(ConfigError) as err:
        compose([], path)
    assert str(err.value) == f"{message}{path})", err.value


def test_a_misshapen_item_set_below_its_list_names_that_override():
    with pytest.raises(ConfigError) as err:
        compose(["model=vgg", "model.stages.0=[[1]]"])
    assert str(err.value).endswith("(model.stages.0=[[1]])"), err.value


def test_a_value_of_the_right_shape_but_wrong_type_keeps_the_key_and_the_value(tmp_path):
    path = tmp_path / "seeds.yaml"
    path.write_text("# @package _global_\nsweep:\n  seeds: [a]\n")
    with pytest.raises(ConfigError) as err:
        compose([], path)
    assert str(err.value) == f"sweep.seeds[0] must be a whole number, not a (in {path})", err.value


def test_nothing_close_is_suggested_as_a_guess():
    with pytest.raises(ConfigError) as err:
        compose(["optimizer.zzz=1"])
    assert "its keys are: betas, lr" in str(err.value) and "did you mean" not in str(err.value)


def test_an_unknown_sweep_name_gets_the_nearest_sweep():
    with pytest.raises(ConfigError, match=r"unknown sweep 'defualt'; did you mean 'default'\? Known sweeps in "):
        resolve_sweep_file("defualt")
    with pytest.raises(ConfigError, match=r"unknown sweep 'nosuch'\. Known sweeps in "):
        resolve_sweep_file("nosuch")


def test_key_of_another_model_is_rejected():
    with pytest.raises(ConfigError, match=r"model\.conv1_filters"):
        compose(["model=mlp", "model.conv1_filters=3"])


@pytest.mark.parametrize("override, key", [("optimizer.lr=abc", "optimizer.lr"), ("train.epochs=1.5", "train.epochs"),
                                           ("data.download=maybe", "data.download")])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert key in str(err.value)
    assert override.split("=")[1] in str(err.value)  # and the value that was wrong


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        compose(["model=nosuch"])
    message = str(err.value)
    assert "nosuch" in message
    for preset in sorted(p.stem for p in (CONF / "model").glob("*.yaml")):
        assert preset in message
    assert "_schema" not in message  # the ConfigStore schemas are not options to offer


def test_typo_in_a_yaml_file_names_the_file_and_the_key(home):
    sgd = home / "conf" / "optimizer" / "sgd.yaml"
    sgd.write_text(sgd.read_text() + "momentm: 0.5\n")
    with pytest.raises(ConfigError) as err:
        compose()
    assert str(sgd) in str(err.value) and "optimizer.momentm" in str(err.value)


def test_typo_in_a_model_file_names_the_file_and_the_key(home):
    lenet = home / "conf" / "model" / "lenet.yaml"
    lenet.write_text(lenet.read_text() + "conv1_filter: 3\n")
    with pytest.raises(ConfigError) as err:
        compose(["model=lenet"])
    assert str(lenet) in str(err.value) and "model.conv1_filter" in str(err.value)
    assert str(err.value).endswith("; did you mean 'conv1_filters'?")  # beside the file, the nearest key


def test_wrong_type_in_a_yaml_file_names_the_file_and_the_key(home):
    train = home / "conf" / "train" / "default.yaml"
    train.write_text(train.read_text() + "epochs: twelve\n")
    with pytest.raises(ConfigError) as err:
        compose()
    assert str(train) in str(err.value) and "train.epochs" in str(err.value)


def test_the_private_copy_is_what_composes(home):
    """Guards the tests above: SWEEPLAB_HOME really points composition at the copy."""
    sgd = home / "conf" / "optimizer" / "sgd.yaml"
    sgd.write_text(sgd.read_text().replace("lr: 0.03", "lr: 0.123"))
    assert compose().optimizer.lr == 0.123


@pytest.mark.parametrize("path", GROUP_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in GROUP_FILES])
def test_every_yaml_in_conf_composes(path):
    group, option = path.parent.name, path.stem
    cfg = compose([f"{group}={option}"])
    composed = OmegaConf.to_container(cfg[group], resolve=True)
    for key, value in _file_values(path).items():
        assert composed[key] == value, f"{group}.{key}"
    if group == "model":  # every model preset fits the default dataset
        from sweeplab.checks import validate

        assert cfg.model.name in MODELS
        validate(cfg)


# --- closed sets of names: Enum-typed fields, checked by composition itself ------------------
NAME_SETS = [
    (["train.loss=hinge"], "train.loss", Loss),
    (["train.lr_schedule=linear"], "train.lr_schedule", LrSchedule),
    (["model=rnn", "model.cell=transformer"], "model.cell", RnnCell),
    (["model=mlp", "model.weight_init=glorot"], "model.weight_init", WeightInit),
    (["sweep.scheduler.kind=bohb"], "sweep.scheduler.kind", SchedulerKind),
    (["sweep.mode=maximise"], "sweep.mode", Mode),
]


@pytest.mark.parametrize("overrides, key, enum", NAME_SETS, ids=[key for _, key, _ in NAME_SETS])
def test_a_name_outside_its_set_fails_composition_in_one_line_listing_the_set(overrides, key, enum):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    message = str(err.value)
    assert key in message and overrides[-1].split("=")[1] in message
    assert f"[{', '.join(enum)}]" in message  # every valid name, in order
    assert len(message.splitlines()) == 1


def test_names_stay_plain_strings_in_code_yaml_and_params():
    cfg = compose(["train.loss=mse", "model=rnn", "model.cell=gru", "sweep.sampler=random"])
    assert cfg.train.loss == "mse" and f"{cfg.train.loss}" == "mse" and str(cfg.model.cell) == "gru"
    text = to_yaml(cfg)
    assert "loss: mse" in text and "cell: gru" in text and "sampler: random" in text and "Loss." not in text
    params = flatten(cfg)
    assert type(params["train.loss"]) is str and params["train.loss"] == "mse"  # MLflow params
    assert type(params["sweep.scheduler.kind"]) is str and params["sweep.scheduler.kind"] == "asha"


def test_pooling_exists_only_on_models_that_pool():
    for name in MODELS.names():
        pools = MODELS.get(name).plan is not None
        assert ("pooling" in compose([f"model={_preset(name)}"]).model) == pools, name
    with pytest.raises(ConfigError, match=r"model\.pooling"):
        compose(["model=mlp", "model.pooling=max"])


# --- each default said once ------------------------------------------------------------------
def _schema_node(group: str, path: Path):
    """The schema a group file extends (the first entry of its defaults list), with its defaults."""
    from hydra.core.config_store import ConfigStore

    from sweeplab.compose import register_configs

    register_configs()
    schema_name = OmegaConf.load(path).defaults[0]
    return ConfigStore.instance().load(f"{group}/{schema_name}.yaml").node


@pytest.mark.parametrize("path", GROUP_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in GROUP_FILES])
def test_yaml_presets_set_only_what_differs_from_the_schema(path):
    defaults = flatten(_schema_node(path.parent.name, path))
    for key, value in flatten(_file_values(path)).items():
        assert key == "name" or defaults.get(key) != value, (
            f"{path.parent.name}/{path.name} repeats the schema default {key}={value!r}: say it once, in the schema")


def test_runs_use_the_schema_defaults_the_yaml_leaves_out():
    cfg = compose()
    assert cfg.train.epochs == TrainConfig.epochs and cfg.train.lr_schedule == TrainConfig.lr_schedule
    assert cfg.optimizer.lr == _file_values(CONF / "optimizer" / "sgd.yaml")["lr"]
    assert cfg.output_dir == "outputs"


def test_typing_the_same_config_again_gives_an_equal_instance_of_its_own():
    """sweeplab.structured.typed keeps what it typed (a trial types its groups several times): a caller that
    changes its instance changes no one else's, and other content or a bad key is typed or refused anew."""
    train = compose(["train.epochs=4"]).train
    for _ in range(2):  # the first time typed, then kept
        mine = typed(train, TrainConfig)
        mine.epochs = 99
    again = typed(train, TrainConfig)
    assert again is not mine and again.epochs == 4
    assert typed(compose(["train.epochs=5"]).train, TrainConfig).epochs == 5
    for _ in range(2):
        with pytest.raises(ConfigError, match="no key 'epoch'"):
            typed({**OmegaConf.to_container(train), "epoch": 1}, TrainConfig, "train")


def _preset(model: str) -> str:
    return next(p.stem for p in sorted((CONF / "model").glob("*.yaml")) if OmegaConf.load(p).name == model)


MODEL_PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.fixture(scope="module")
def models_listing() -> dict[str, dict]:
    """`sweeplab models` as a user reads it: preset -> {key: value}."""
    import contextlib
    import io

    import yaml

    from sweeplab.commands import cmd_models

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cmd_models(None) == 0
    listing = {}
    for line in out.getvalue().splitlines():
        if line.strip().startswith("model="):
            preset, keys = line.strip().removeprefix("model=").split(": ", 1)
            listing[preset] = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in keys.split())}
    return listing


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_models_command_prints_what_train_uses(preset, models_listing):
    composed = flatten(compose([f"model={preset}"]).model)
    composed.pop("name")
    assert models_listing[preset] == composed


# --- layering ---------------------------------------------------------------------------------
def test_no_import_cycles_and_config_schemas_are_a_leaf():
    import grimp

    graph = grimp.build_graph("sweeplab", exclude_type_checking_imports=True)
    for low, high in (("sweeplab.data", "sweeplab.config"), ("sweeplab.models", "sweeplab.config"),
                      ("sweeplab.config", "sweeplab.optim"), ("sweeplab.config", "sweeplab.data"),
                      ("sweeplab.config", "sweeplab.train")):
        chain = graph.find_shortest_chains(importer=low, imported=high)
        assert not chain, f"{low} imports {high}: {chain}"
    leaf = graph.find_upstream_modules("sweeplab.config.schema")
    assert leaf <= {"sweeplab.errors", "sweeplab.structured"}, leaf
