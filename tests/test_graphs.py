"""Training steps replayed from CUDA graphs (sweeplab.graphs): on a GPU they train as the eager steps do; on the
CPU, and with an optimizer that cannot be captured, the step runs as it is."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from sweeplab.compose import compose
from sweeplab.fused import train_pack
from sweeplab.graphs import Capture, StepGraph, capturable, step_runner
from sweeplab.train import train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_on_the_cpu_or_with_adam_the_step_runs_as_it_is():
    def step(x, y):
        pass

    weights = [torch.nn.Parameter(torch.zeros(2))]
    assert capturable(torch.optim.SGD(weights, lr=0.1, momentum=0.9))
    assert not capturable(torch.optim.Adam(weights))  # counts its steps on the host
    assert step_runner(step, torch.device("cpu"), True, torch.optim.SGD(weights, lr=0.1)) is step
    assert step_runner(step, torch.device("cuda"), False) is step
    assert step_runner(step, torch.device("cuda"), True, torch.optim.Adam(weights)) is step
    # by default a GPU replays SGD's steps from graphs (docs/performance.md, "B6 and B7 on a GPU": why)
    assert isinstance(step_runner(step, torch.device("cuda"), compose([]).train.cuda_graphs,
                                  torch.optim.SGD(weights, lr=0.1)), StepGraph)
    # three eager steps before a run's first capture (they make the lazy state), one before each later epoch's
    assert StepGraph(step).warm_up == 3 and StepGraph(step, Capture(captured=True)).warm_up == 1


@pytest.mark.gpu
@CUDA
def test_full_batches_replay_the_captured_step_and_others_run_as_they_are():
    total = torch.zeros((), device="cuda")
    traced = []  # the host runs the step's Python for warm-up steps, the capture and odd-sized batches only

    def step(x, y):
        traced.append(len(x))
        total.add_(x.sum() + y.sum())

    def batch(size, value):
        return torch.full((size,), float(value), device="cuda"), torch.ones(size, device="cuda")

    run = StepGraph(step, warm_up=2)
    batches = [batch(4, 0), batch(2, 1), *(batch(4, i) for i in range(2, 10)), batch(2, 10)]
    for x, y in batches:
        run(x, y)
    assert float(total) == sum(float(x.sum() + y.sum()) for x, y in batches)  # every batch counted once
    # two warm-up steps of size 4 (the size-2 batch between them runs as it is), the capture, the last batch
    assert traced == [4, 2, 4, 4, 2] and run.graph is not None and run.capture.failed is None


@pytest.mark.gpu
@CUDA
def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning():
    # in its own process: a capture that fails leaves nothing behind there for the other tests to meet
    script = textwrap.dedent("""
        import warnings, torch
        from sweeplab.graphs import Capture, StepGraph, step_runner
        total = torch.zeros((), device="cuda")
        def step(x, y):
            if float(x.sum()) >= 0:  # a host sync: not allowed while capturing
                total.add_(x.sum())
        capture = Capture()
        run = StepGraph(step, capture, warm_up=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(5):
                run(torch.full((3,), 1.0, device="cuda"), torch.zeros(3, device="cuda"))
        assert float(total) == 15.0, float(total)
        assert run.graph is None and capture.failed
        assert [str(w.message) for w in caught if "cannot be captured" in str(w.message)], caught
        assert torch.cuda.current_stream() == torch.cuda.default_stream()  # the capture's stream is left
        assert step_runner(step, torch.device("cuda"), True, capture=capture) is step  # the next epoch: eager
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


LOSSES = ("train/loss", "val/loss")


def largest_difference(a, b):
    """The largest relative difference of two runs' losses, over their epochs."""
    return max(abs(x[key] - y[key]) / abs(y[key]) for x, y in zip(a.history, b.history, strict=True) for key in LOSSES)


def assert_same_training(a, b, rtol=1e-3):
    assert len(a.history) == len(b.history)
    for x, y in zip(a.history, b.history, strict=True):
        for key in LOSSES:
            assert x[key] == pytest.approx(y[key], rel=rtol), key
        assert abs(x["val/acc"] - y["val/acc"]) <= 0.01


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("preset", ["lenet", "googlenet"])  # googlenet: batch norm's running statistics
def test_cuda_graphs_train_as_the_eager_step(preset):
    base = [f"model={preset}", "train.epochs=2", "data.subset=1000", "tracking=none", "train.device=cuda"]
    graphed = train(compose([*base, "train.cuda_graphs=true"]))
    eager, again = (train(compose([*base, "train.cuda_graphs=false"])) for _ in range(2))
    # two eager runs of one seed differ too where kernels add with atomics (max-pool and adaptive-pool backward):
    # graphed training may differ from eager by a few times that, and by 1e-3 where the eager runs agree
    noise, off = largest_difference(eager, again), largest_difference(graphed, eager)
    print(f"{preset}: graphed vs eager {off:.2e}, eager vs eager {noise:.2e}")
    assert_same_training(graphed, eager, rtol=max(1e-3, 3 * noise))


@pytest.mark.gpu
@CUDA
def test_a_fused_pack_trains_the_same_from_cuda_graphs():
    base = ["model=lenet", "train.epochs=2", "data.subset=1000", "tracking=none", "train.device=cuda",
            "train.lr_schedule=cosine"]
    members = [["optimizer.lr=0.05", "train.seed=0"], ["optimizer.lr=0.02", "train.seed=1"]]
    graphed = train_pack([compose([*base, *m, "train.cuda_graphs=true"]) for m in members])
    eager = train_pack([compose([*base, *m, "train.cuda_graphs=false"]) for m in members])
    for a, b in zip(graphed, eager, strict=True):
        assert_same_training(a, b)


CELLS = [["model=rnn", f"model.cell={cell}"] for cell in ("rnn", "lstm", "gru")]


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("model", [[f"model={p}"] for p in ("mlp", "simple_convnet", "lenet", "alexnet", "vgg",
                                                           "vgg16", "googlenet")] + CELLS, ids=" ".join)
def test_every_model_captures_its_step(model):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(compose([*model, "train.epochs=1", "data.subset=400", "tracking=none", "train.device=cuda",
                                "train.cuda_graphs=true"]))
    assert not [str(w.message) for w in caught if "cannot be captured" in str(w.message)]
    assert math.isfinite(result.metrics["train/loss"])
