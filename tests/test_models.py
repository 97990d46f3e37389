"""The model zoo, tested from its registries: a newly registered model, activation,
pooling kind or dataset shape is covered without touching this file."""
from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F

from sweeplab.data import DATASETS
from sweeplab.errors import ArchitectureError, ConfigError, UserError
from sweeplab.models import MODELS, PoolingModelConfig, build_model, check_architecture
from sweeplab.models.layers import ACTIVATIONS, POOLINGS
from sweeplab.models.shapes import Pool, conv_output

# Models are scaled for 28-32 px inputs: they must fit those; smaller inputs may be refused.
SMALLEST_SUPPORTED = 28
RESIZE = 32  # what a user sets (data.resize=32) to run a conv net on 8x8 digits


def _dataset_shapes() -> dict[tuple, list[str]]:
    """Distinct (input_shape, num_classes) of the registered datasets -> their names."""
    shapes: dict[tuple, list[str]] = {}
    for name in DATASETS.names():
        entry = DATASETS.get(name)
        shapes.setdefault((tuple(entry.input_shape), entry.num_classes), []).append(name)
    return shapes


SHAPES = _dataset_shapes()
SHAPE_IDS = ["x".join(map(str, s[0])) + "-" + "+".join(names) for s, names in SHAPES.items()]


def _config(model: str, **keys):
    """The model's own schema with its defaults, as a user's YAML-free config would be."""
    return MODELS.get(model).schema(name=model, **keys)


ACTIVATION_TYPES = {name: type(ACTIVATIONS.get(name)()) for name in ACTIVATIONS.names()}
POOLING_TYPES = {name: type(POOLINGS.get(name)(2, 2, 0)) for name in POOLINGS.names()}
POOLING_MODELS = [m for m in MODELS.names() if issubclass(MODELS.get(m).schema, PoolingModelConfig)]
ACTIVATION_MODEL = "lenet"  # convolutions and a fully connected head: every place an activation goes


def _trains(model: nn.Module, input_shape, num_classes: int) -> None:
    """A forward pass gives finite class scores and every parameter gets a finite, non-zero gradient."""
    torch.manual_seed(0)
    model.train()
    out = model(torch.randn(2, *input_shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, num_classes - 1])).backward()
    params = list(model.named_parameters())
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    assert sum(p.grad.abs().sum() for _, p in params) > 0


def test_registries_hold_what_the_issue_promises():
    assert {"mlp", "simple_convnet", "lenet", "alexnet", "vgg", "googlenet", "rnn"} <= set(MODELS.names())
    assert {"identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu"} <= set(ACTIVATIONS.names())
    assert {"max", "avg", "min"} <= set(POOLINGS.names())
    assert {(1, 28, 28), (1, 8, 8), (3, 32, 32)} <= {shape for shape, _ in SHAPES}



def test_exactly_the_models_with_pooling_layers_have_a_pooling_key():
    def pools(model: str) -> bool:
        plan = MODELS.get(model).plan
        return plan is not None and any(isinstance(s, Pool) for s in plan(_config(model), (1, 28, 28)))

    assert [m for m in MODELS.names() if pools(m)] == POOLING_MODELS


@pytest.mark.parametrize("shape", list(SHAPES), ids=SHAPE_IDS)
@pytest.mark.parametrize("model_name", MODELS.names())
def test_model_builds_runs_and_backpropagates(model_name, shape):
    input_shape, num_classes = shape
    cfg = _config(model_name)
    try:
        check_architecture(cfg, input_shape)
    except ArchitectureError as err:
        # Only inputs below the supported size may be refused, and then with a usable message;
        # building must refuse the same way (not with a PyTorch error), and data.resize=32 must fit.
        assert min(input_shape[1:]) < SMALLEST_SUPPORTED, f"{model_name} must fit {input_shape}: {err}"
        plan_layers = [s.name for s in MODELS.get(model_name).plan(cfg, input_shape)]
        named = re.search(r"layer '([^']+)'", str(err))
        assert named and named.group(1) in plan_layers, str(err)
        assert re.search(r"\d+x\d+ input", str(err)) and "data.resize" in str(err)
        with pytest.raises(ArchitectureError):
            build_model(cfg, input_shape, num_classes)
        input_shape = (input_shape[0], RESIZE, RESIZE)
        check_architecture(cfg, input_shape)
    _trains(build_model(cfg, input_shape, num_classes), input_shape, num_classes)


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_the_chosen_activation_is_the_only_one_in_the_model(activation):
    model = build_model(_config(ACTIVATION_MODEL, activation=activation), (1, 28, 28), 10)
    _trains(model, (1, 28, 28), 10)
    types = {type(m) for m in model.modules()}
    assert types & set(ACTIVATION_TYPES.values()) == {ACTIVATION_TYPES[activation]}


@pytest.mark.parametrize("pooling", POOLINGS.names())
@pytest.mark.parametrize("model_name", POOLING_MODELS)
def test_the_chosen_pooling_is_the_only_one_in_the_model(model_name, pooling):
    model = build_model(_config(model_name, pooling=pooling), (1, 28, 28), 10)
    _trains(model, (1, 28, 28), 10)
    types = {type(m) for m in model.modules()}
    assert types & set(POOLING_TYPES.values()) == {POOLING_TYPES[pooling]}


def test_models_without_pooling_have_no_pooling_key():
    for name in sorted(set(MODELS.names()) - set(POOLING_MODELS)):
        with pytest.raises(ConfigError, match="pooling"):
            check_architecture({"name": name, "pooling": "max"}, (1, 28, 28))


@pytest.mark.parametrize("shape", list(SHAPES), ids=SHAPE_IDS)
@pytest.mark.parametrize("model_name", [m for m in MODELS.names() if MODELS.get(m).plan is not None])
def test_shape_check_agrees_with_the_built_layers(model_name, shape):
    """Every layer the shape check traces produces exactly that output in the real model."""
    input_shape, num_classes = shape
    cfg = _config(model_name)
    if min(input_shape[1:]) < SMALLEST_SUPPORTED:
        input_shape = (input_shape[0], RESIZE, RESIZE)
    rows = check_architecture(cfg, input_shape)
    model = build_model(cfg, input_shape, num_classes)
    modules = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules() if name}
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(_module, _inputs, out):
            seen[name] = tuple(out.shape[1:])  # returns None: the output is left alone

        return hook

    hooks = [modules[row.layer].register_forward_hook(record(row.layer)) for row in rows]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in hooks:
        h.remove()
    assert seen == {row.layer: row.output for row in rows}


def test_lenet_on_8x8_names_conv2_and_fits_when_resized():
    with pytest.raises(ArchitectureError) as err:
        check_architecture({"name": "lenet"}, (1, 8, 8))
    # conv1 keeps 8x8 ('same' padding), pool1 halves it to 4x4, a 5x5 conv2 cannot fit 4x4
    assert "'conv2'" in str(err.value) and "4x4" in str(err.value) and "filter_size=5" in str(err.value)
    rows = check_architecture({"name": "lenet"}, (1, 32, 32))
    assert rows[-1].output == (16, 6, 6)


def test_vgg_on_8x8_names_the_fourth_pool():
    with pytest.raises(ArchitectureError) as err:
        check_architecture({"name": "vgg"}, (1, 8, 8))
    # 8 -> 4 -> 2 -> 1 after three stages: the fourth 2x2 pool has a 1x1 input
    assert "'pool4'" in str(err.value) and "1x1" in str(err.value)


def test_simple_convnet_filter_too_big_names_layer_size_and_parameters():
    cfg = {"name": "simple_convnet", "conv": {"filter_num": 30, "filter_size": 40, "stride": 1, "pad": 0}}
    with pytest.raises(ArchitectureError) as err:
        check_architecture(cfg, (1, 28, 28))
    message = str(err.value)
    for part in ("conv1", "28x28", "filter_size=40", "stride=1", "pad=0"):
        assert part in message
    with pytest.raises(ArchitectureError):
        build_model(cfg, (1, 28, 28), 10)


def test_check_architecture_needs_no_model(monkeypatch):
    """The sweep rejects sampled configs with it: no torch module may be created."""

    def no_modules(*_args, **_kwargs):
        raise AssertionError("check_architecture built a torch module")

    monkeypatch.setattr(nn.Module, "__init__", no_modules)
    rows = check_architecture(OmegaConf.create({"name": "lenet", "conv1_filters": 6}), (1, 28, 28))
    assert [(r.layer, r.input, r.output) for r in rows] == [
        ("conv1", (1, 28, 28), (6, 28, 28)),
        ("pool1", (6, 28, 28), (6, 14, 14)),
        ("conv2", (6, 14, 14), (16, 10, 10)),
        ("pool2", (16, 10, 10), (16, 5, 5)),
    ]


@pytest.mark.parametrize(
    "size, kernel, stride, pad, expected",
    [
        (28, 5, 1, 2, 28),  # 'same' padding
        (32, 3, 2, 1, 16),
        (28, 5, 1, 0, 24),
        (7, 2, 2, 0, 3),  # floor(5 / 2) + 1
        (5, 3, 2, 0, 2),
        (1, 2, 2, 0, 0),  # does not fit
    ],
)
def test_conv_output_is_the_floor_formula(size, kernel, stride, pad, expected):
    assert conv_output(size, kernel, stride, pad) == expected


def test_weight_init_normal_uses_the_std():
    for std in (0.01, 0.5):
        cfg = {"name": "simple_convnet", "weight_init": "normal", "weight_init_std": std}
        model = build_model(cfg, (1, 28, 28), 10)
        big = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.numel() > 100_000]
        assert big, "expected the 4320x100 affine layer"
        assert big[0].weight.std().item() == pytest.approx(std, rel=0.02)
        assert big[0].weight.mean().item() == pytest.approx(0.0, abs=std * 0.02)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                assert m.weight.std().item() == pytest.approx(std, rel=0.25)
                assert torch.count_nonzero(m.bias) == 0


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_weight_init_reaches_every_recurrent_cell(cell):
    """torch's LSTM and GRU hold their weights themselves, not in Linear layers."""
    cfg = {"name": "rnn", "cell": cell, "hidden_size": 64, "weight_init": "normal", "weight_init_std": 0.5}
    model = build_model(cfg, (1, 28, 28), 10)
    weights = {n: p for n, p in model.named_parameters() if "weight" in n}
    assert len(weights) >= 3  # input-to-hidden, hidden-to-hidden, the head
    for name, weight in weights.items():
        assert weight.std().item() == pytest.approx(0.5, rel=0.1), name
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if "bias" in n)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_activation_for_a_gated_cell_is_refused(cell):
    with pytest.raises(ConfigError, match=f"model.activation=relu applies to model.cell=rnn only: an {cell} cell"):
        build_model({"name": "rnn", "cell": cell, "activation": "relu"}, (1, 28, 28), 10)


def test_weight_init_he_scales_by_fan_in():
    model = build_model({"name": "mlp", "hidden_sizes": [500], "weight_init": "he"}, (1, 28, 28), 10)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.weight.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.03)


def test_unknown_weight_init_lists_the_known_ones():
    with pytest.raises(ConfigError, match="normal.*xavier.*he"):
        build_model({"name": "mlp", "weight_init": "glorot"}, (1, 28, 28), 10)


def test_min_pooling_is_the_window_minimum():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    pooled = POOLINGS.get("min")(2, 2, 0)(x)
    assert torch.equal(pooled, -F.max_pool2d(-x, 2, 2))
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2)  # (2, 3, 3, 3, 2, 2)
    assert torch.equal(pooled, windows.amin(dim=(-1, -2)))


@pytest.mark.parametrize(
    "cfg, registry",
    [({"name": "nosuch"}, MODELS), ({"name": "mlp", "activation": "nosuch"}, ACTIVATIONS),
     ({"name": "lenet", "pooling": "nosuch"}, POOLINGS)],
    ids=["model", "activation", "pooling"],
)
def test_unknown_names_list_the_known_ones(cfg, registry):
    for call in (lambda: check_architecture(cfg, (1, 28, 28)), lambda: build_model(cfg, (1, 28, 28), 10)):
        with pytest.raises(UserError) as err:
            call()
        assert "'nosuch'" in str(err.value)
        for name in registry.names():
            assert name in str(err.value)


def test_unknown_model_key_is_named():
    with pytest.raises(ConfigError, match="hidden_size"):
        check_architecture({"name": "mlp", "hidden_size": [10]}, (1, 28, 28))
