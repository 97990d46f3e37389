"""Composition with Hydra: defaults, overrides as Hydra users write them, and errors
that name the key and the file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sweeplab.config.compose import compose
from sweeplab.errors import ConfigError
from sweeplab.models import MODELS

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
    cfg = compose(["model=vgg", "data=cifar10", "optimizer.lr=0.01", "model.activation=tanh"])
    assert cfg.model.name == "vgg"
    assert cfg.model.activation == "tanh"
    assert cfg.model.stages == _file_values(CONF / "model" / "vgg.yaml")["stages"]
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
    sgd.write_text(sgd.read_text().replace("momentum:", "momentm:"))
    with pytest.raises(ConfigError) as err:
        compose()
    assert str(sgd) in str(err.value) and "optimizer.momentm" in str(err.value)


def test_typo_in_a_model_file_names_the_file_and_the_key(home):
    lenet = home / "conf" / "model" / "lenet.yaml"
    lenet.write_text(lenet.read_text().replace("conv1_filters:", "conv1_filter:"))
    with pytest.raises(ConfigError) as err:
        compose(["model=lenet"])
    assert str(lenet) in str(err.value) and "model.conv1_filter" in str(err.value)


def test_wrong_type_in_a_yaml_file_names_the_file_and_the_key(home):
    train = home / "conf" / "train" / "default.yaml"
    train.write_text(train.read_text().replace("epochs: 12", "epochs: twelve"))
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
        from sweeplab.train import validate

        assert cfg.model.name in MODELS
        validate(cfg)
