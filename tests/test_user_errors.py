"""A user's mistake stops sweeplab at once with one line naming what was wrong and what would be
right: no traceback, nothing started, nothing created where it should not be."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from servers import free_port
from sweep_helpers import SWEEPLAB, cli, sweeplab, write_sweep

from sweeplab.program import program
from sweeplab.sweep.plan import plan_sweep


def _sweep_file(folder: Path, body: str, name: str = "mine.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("# @package _global_\ndefaults:\n  - override /model: mlp\n  - _self_\n" + body)
    return path


SPACE = "  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1, log: true}}\n"
TRAIN = ["train", "model=mlp", "data=digits", "train.epochs=1", "train.num_threads=1"]


def _closed_port() -> int:
    """A loopback port nothing listens on (the connection is refused at once)."""
    return free_port()


def _silent_server() -> socket.socket:
    """A loopback port that accepts connections and never answers (a hung database)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


def _sweep_body(body: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["sweep", str(_sweep_file(tmp, body))]


def _latin1_sweep(tmp: Path) -> list[str]:
    path = tmp / "latin1.yaml"
    path.write_bytes(("# @package _global_\n# café\nsweep:\n" + SPACE).encode("latin-1"))
    return ["sweep", str(path)]


def _empty_sweep(tmp: Path) -> list[str]:
    (tmp / "empty.yaml").write_text("")
    return ["sweep", str(tmp / "empty.yaml")]


def _a_file_in_the_way(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a folder")
    return tmp / "a-file" / "out"


def _a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a folder")
    return tmp / "a-file"


def _not_a_database(tmp: Path) -> Path:
    (tmp / "broken").mkdir()
    (tmp / "broken" / "mlflow.db").write_text("this is not SQLite")
    return tmp / "broken"


def _bad_cifar_files(tmp: Path) -> list[str]:
    from sweeplab.data.datasets import _EXPECTED

    for name in _EXPECTED["cifar10"]:
        (tmp / "cifar" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "cifar" / name).write_bytes(b"not a pickle")
    return ["train", "data=cifar10", "model=mlp", f"data.root={tmp / 'cifar'}", "train.num_threads=1"]


def _sqlite_as_journal(tmp: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(tmp / "old.db") as db:
        db.execute("CREATE TABLE t (x)")
    return ["sweep", "smoke", f"cluster.optuna_storage={tmp / 'old.db'}"]


def _busy_port(tmp: Path, held: list) -> list[str]:
    server = _silent_server()
    held.append(server)
    return ["ui", "--port", str(server.getsockname()[1])]


def _busy_dashboard_port(tmp: Path, held: list) -> list[str]:
    server = _silent_server()
    held.append(server)
    return ["sweep", "smoke", "cluster.dashboard=true", f"cluster.dashboard_port={server.getsockname()[1]}"]


HOLDING_A_PORT = (_busy_port, _busy_dashboard_port)  # their args take the list of sockets to close after the case


@dataclass
class Case:
    """A user's mistake: the command (a function of the tmp folder), the text its one error line must hold."""

    id: str
    args: Callable[..., list[str]]
    named: str
    code: int = 2
    output_dir: Callable[[Path], Path] = lambda tmp: tmp / "out"
    marks: tuple = ()


def _train(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [*TRAIN, *extra]


CASES = [
    # values out of range or of the wrong kind, before any data loads
    Case("momentum", _train("optimizer.momentum=-0.5"), "optimizer.momentum"),
    Case("betas", _train("optimizer=adam", "optimizer.betas=[1.5,0.9]"), "optimizer.betas"),
    Case("device-name", _train("train.device=gpu"), "train.device"),
    Case("eval-batch", _train("train.eval_batch_size=0"), "train.eval_batch_size"),
    Case("hidden-sizes", _train("model.hidden_sizes=[-5]"), "model.hidden_sizes"),
    Case("vgg-stages", _train("model=vgg", "model.stages=[]"), "model.stages"),
    Case("dropout", _train("model=alexnet", "model.dropout=1.5"), "model.dropout"),
    Case("split-seed", _train("data.split_seed=-1"), "data.split_seed"),
    Case("rnn-cell", _train("model=rnn", "model.cell=transformer"), "model.cell"),
    Case("unknown-model", _train("model=nosuch"), "nosuch"),
    Case("plus-unknown-key", _train("+optimizer.lrr=0.1"), "optimizer.lrr"),
    Case("plus-unknown-top-level-key", _train("+outptu_dir=/data/runs"),
         "the config has no key 'outptu_dir' (outptu_dir); its keys are: "),
    Case("cfg-plus-unknown-key", lambda tmp: ["train", "--cfg", "job", "+train.epoch=3"],
         "train has no key 'epoch' (train.epoch); its keys are: "),
    Case("cfg-delete-schema-key", lambda tmp: ["train", "--cfg", "job", "~data.subset"],
         "data.subset is a key of the data schema and cannot be deleted (~data.subset); to unset it: data.subset=null"),
    Case("misspelled-key", _train("optimizer.lrr=0.1"), "its keys are: betas, lr, momentum, name, nesterov, "
                                                      "weight_decay; did you mean 'lr'?"),
    Case("misspelled-model", _train("model=lenett"), "did you mean 'lenet'?"),
    Case("removed-group", _train("~model"), "~model"),
    Case("unquoted-accents", _train("data.root=/tmp/données"), "quote a value"),
    # stores and folders
    Case("server-down", _train("tracking=server", "tracking.uri=http://127.0.0.1:9"), "http://127.0.0.1:9"),
    Case("postgres-refused", lambda tmp: [*TRAIN, f"tracking.uri=postgresql+psycopg://u:pw@127.0.0.1:{_closed_port()}/x"],
         "does not answer"),
    Case("output-dir-unwritable", _train(), "is a file, not a folder", output_dir=_a_file_in_the_way),
    Case("run-dir-unwritable", lambda tmp: [*TRAIN, f"hydra.run.dir={_a_file_in_the_way(tmp)}"], "hydra.run.dir"),
    Case("mlflow-db-not-a-database", _train(), "not an MLflow SQLite store", output_dir=_not_a_database),
    # train -m: the grid's folder, before anything is made
    Case("multirun-output-dir-a-file", lambda tmp: ["train", "-m", "optimizer.lr=0.1,0.2"],
         "is a file, not a folder", output_dir=_a_file),
    Case("multirun-output-dir-under-a-file", lambda tmp: ["train", "-m", "optimizer.lr=0.1,0.2"],
         "is a file, not a folder", output_dir=_a_file_in_the_way),
    Case("multirun-output-dir-uncreatable", lambda tmp: ["train", "-m", "optimizer.lr=0.1,0.2"],
         "cannot write output_dir at /proc/sweeplab", output_dir=lambda tmp: Path("/proc/sweeplab")),
    Case("multirun-hydra-sweep-dir", lambda tmp: ["train", "-m", "hydra.sweep.dir=/tmp/x", "optimizer.lr=0.1,0.2"],
         "hydra.sweep.dir=/tmp/x: -m does not use Hydra's folders; it writes its grid under output_dir=<folder> "
         "(the grid file in <output_dir>/multirun/<time>/"),
    Case("multirun-hydra-run-dir", lambda tmp: ["train", "-m", "hydra.run.dir=/tmp/x", "optimizer.lr=0.1,0.2"],
         "set output_dir=<folder> instead of hydra.run.dir"),
    Case("mlflow-sqlite-folder-uncreatable", _train("tracking.uri=sqlite:////proc/sweeplab/mlflow.db"),
         "at /proc/sweeplab: no folder can be created in /proc"),
    # data and devices that only training finds out about: nothing is left behind
    Case("cifar-files-invalid", _bad_cifar_files, "cannot be read"),
    Case("download-root-uncreatable",
         lambda tmp: ["train", "model=mlp", "data=cifar10", "data.root=/proc/sweeplab", "data.download=true"],
         "data.root=/proc/sweeplab cannot be created"),
    Case("cuda-without-cuda", _train("train.device=cuda"), "no CUDA device",
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    Case("sweep-cuda-without-cuda",
         lambda tmp: ["sweep", "smoke", "train.device=cuda", "sweep.resources.gpu=1", "cluster.num_gpus=1"],
         "train.device=cuda but no CUDA device is visible; use train.device=auto or cpu",
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    # Ray 2.60 hides no GPU from a trial granted none: it would train on one that Ray does not count
    Case("sweep-cuda-without-a-gpu-granted", lambda tmp: ["sweep", "smoke", "train.device=cuda:0"],
         "train.device=cuda:0 but sweep.resources.gpu=0: Ray would grant the trials no GPU"),
    # the grant that message asks for, on a machine without a GPU: the way out leaves cuda too, not back to it
    Case("sweep-cuda-granted-a-gpu-this-machine-lacks",
         lambda tmp: ["sweep", "smoke", "train.device=cuda", "sweep.resources.gpu=1"],
         "set sweep.resources.gpu=0 with train.device=auto (or cpu) to run on CPUs",
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    Case("sweep-space-drawing-cuda-granted-a-gpu-this-machine-lacks",
         _sweep_body("sweep:\n  resources: {gpu: 1}\n  space:\n    train.device: {type: categorical, "
                     "choices: [cpu, cuda]}\n"),
         "set sweep.resources.gpu=0 with cuda left out of sweep.space's train.device choices to run on CPUs",
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    # a word that is no override: a second sweep, or a space where = goes (before: Hydra's "cannot parse", quote it)
    Case("a-second-sweep", lambda tmp: ["status", "smoke", "default", f"output_dir={tmp / 'out'}"],
         "'default' is not key=value: sweeplab status takes one sweep, then overrides like key=value"),
    Case("a-space-for-an-equals-sign", lambda tmp: ["train", "model=mlp", "output_dir", str(tmp / "out")],
         "'output_dir' is not key=value: sweeplab train takes overrides like key=value (output_dir=/tmp/x, not "),
    Case("ui-for-a-server-that-does-not-answer", lambda tmp: ["ui", f"tracking.uri=http://127.0.0.1:{_closed_port()}"],
         "does not answer"),  # before: "a server already: open" it, exit 0
    # sweep files
    Case("sweep-metric", _sweep_body("sweep:\n  metric: val/accuracy\n" + SPACE), "val/accuracy"),
    Case("sweep-seeds", _sweep_body("sweep:\n  seeds: [0, 0]\n" + SPACE), "sweep.seeds"),
    Case("sweep-scheduler-a-name", _sweep_body("sweep:\n  scheduler: asha\n" + SPACE),
         "sweep.scheduler must be a mapping like {kind: asha}, not asha (in "),
    Case("sweep-space-a-list", _sweep_body("sweep:\n  space:\n    - optimizer.lr\n"),
         "sweep.space must be a mapping like {optimizer.lr: {type: float, "),
    Case("sweep-seeds-a-number", _sweep_body("sweep:\n  seeds: 3\n" + SPACE),
         "sweep.seeds must be a list like [0, 1, 2], not 3 (in "),
    Case("sweep-objectives-a-name", _sweep_body("sweep:\n  objectives: val/acc\n" + SPACE),
         "sweep.objectives must be a list of mappings like [{metric: val/acc, mode: max}, "),
    Case("sweep-name-quote", _sweep_body("sweep:\n  name: \"it's\"\n" + SPACE), """sweep.name="it's" must hold"""),
    Case("grace-period",
         _sweep_body("train: {epochs: 2}\nsweep:\n  scheduler: {kind: asha, grace_period: 5}\n" + SPACE),
         "grace_period"),
    Case("unknown-choice",
         _sweep_body("sweep:\n  space: {model.activation: {type: categorical, choices: [relu, nosuch]}}\n"), "nosuch"),
    Case("list-key-as-int", _sweep_body("sweep:\n  space: {model.hidden_sizes: {type: int, low: 8, high: 64}}\n"),
         "model.hidden_sizes"),
    Case("searched-epochs", _sweep_body("sweep:\n  space: {train.epochs: {type: categorical, choices: [1, 2]}}\n"),
         "a sweep trains every trial for the same train.epochs"),
    Case("searched-seed", _sweep_body("sweep:\n  space: {train.seed: {type: int, low: 0, high: 3}}\n"),
         "set sweep.seeds"),
    Case("int-step-not-whole",
         _sweep_body("sweep:\n  space: {train.batch_size: {type: int, low: 16, high: 64, step: 0.5}}\n"),
         "an int dimension's step must be a whole number, got 0.5"),
    Case("bruteforce-float-range", lambda tmp: ["sweep", "smoke", "sweep.sampler=bruteforce"],
         "sweep.sampler=bruteforce cannot sample this space"),
    Case("zero-lr", _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: 0.0, high: 0.1}}\n"),
         "optimizer.lr"),
    Case("low-not-a-number", _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: a, high: 0.1}}\n"),
         "low must be a number"),
    Case("choices-not-a-list", _sweep_body("sweep:\n  space: {model: {type: categorical, choices: lenet}}\n"),
         "choices must be a list, e.g. choices: [lenet]"),
    Case("infinite-bound", _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: 0.01, high: .inf}}\n"),
         "low and high must be finite numbers"),
    Case("hyperband-reduction-factor",
         _sweep_body("sweep:\n  scheduler: {kind: hyperband, reduction_factor: 1}\n" + SPACE),
         "sweep.scheduler.reduction_factor"),
    Case("yaml-syntax", _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: 0.1, high: 0.01}\n"),
         "invalid YAML"),
    Case("not-utf8", _latin1_sweep, "not UTF-8"),
    Case("etc-passwd", lambda tmp: ["sweep", os.path.relpath("/etc/passwd", tmp)], "/etc/passwd is a YAML str"),
    Case("empty-file", _empty_sweep, "empty.yaml is empty"),
    Case("missing-dataset",
         _sweep_body("data: {name: cifar10, root: /nonexistent}\nmodel: {name: mlp}\nsweep:\n" + SPACE),
         "cifar-10-batches-py"),
    Case("unknown-sweep", lambda tmp: ["sweep", "nosuch"], "unknown sweep 'nosuch'"),
    Case("misspelled-sweep", lambda tmp: ["sweep", "defualt"], "unknown sweep 'defualt'; did you mean 'default'?"),
    Case("max-failures", lambda tmp: ["sweep", "smoke", "sweep.max_failures=-5"], "sweep.max_failures"),
    Case("no-trials", lambda tmp: ["sweep", "smoke", "sweep.num_trials=0"],
         "sweep.num_trials=0 is out of range: it must be >= 1"),
    Case("none-at-a-time", lambda tmp: ["sweep", "smoke", "sweep.max_concurrent=0"],
         "sweep.max_concurrent=0 is out of range: it must be >= 1"),
    Case("no-cpu", lambda tmp: ["sweep", "smoke", "sweep.resources.cpu=0"], "sweep.resources.cpu=0.0 is out of range"),
    Case("a-gpu-and-a-half", lambda tmp: ["sweep", "smoke", "sweep.resources.gpu=1.5"],
         "sweep.resources.gpu=1.5 is out of range: it must be 0 (none), a share of one GPU up to 1"),
    Case("gpus-without-end", lambda tmp: ["sweep", "smoke", "sweep.resources.gpu=inf"],
         "sweep.resources.gpu=inf is out of range"),
    Case("gpus-not-a-number", lambda tmp: ["sweep", "smoke", "sweep.resources.gpu=nan"],
         "sweep.resources.gpu=nan is out of range"),
    Case("gpus-negative", lambda tmp: ["sweep", "smoke", "sweep.resources.gpu=-2"],
         "sweep.resources.gpu=-2.0 is out of range"),
    Case("cpus-without-end", lambda tmp: ["sweep", "smoke", "sweep.resources.cpu=inf"],
         "sweep.resources.cpu=inf is out of range"),
    Case("sweep-plus-unknown-key", lambda tmp: ["sweep", "smoke", "+optimizer.lrr=0.1"], "optimizer.lrr"),
    Case("sweep-plus-unknown-top-level-key", lambda tmp: ["sweep", "smoke", "+foo=1"], "the config has no key 'foo'"),
    Case("sweep-mlflow-sqlite-folder-uncreatable",
         lambda tmp: ["sweep", "smoke", "tracking.uri=sqlite:////proc/sweeplab/mlflow.db"],
         "at /proc/sweeplab: no folder can be created in /proc"),
    Case("sweep-tracking-postgres-refused",
         lambda tmp: ["sweep", "smoke", f"tracking.uri=postgresql+psycopg://u:pw@127.0.0.1:{_closed_port()}/x"],
         "does not answer"),
    Case("sweep-dashboard-port-busy", _busy_dashboard_port, "is already in use"),
    Case("storage-path-scheme", lambda tmp: ["sweep", "smoke", "cluster.storage_path=foo://x/y"],
         "cluster.storage_path=foo://x/y cannot be opened"),
    Case("cpus-beyond-the-local-ray", lambda tmp: ["sweep", "smoke", "sweep.resources.cpu=64", "cluster.num_cpus=2"],
         "but a local Ray here has 2 CPUs in all: no trial could start; ask for at most 2"),
    Case("gpus-beyond-the-local-ray", lambda tmp: ["sweep", "smoke", "sweep.resources.gpu=1"],
         "but a local Ray here has 0 GPUs in all: no trial could start; set sweep.resources.gpu=0",
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    Case("sweep-output-dir-unwritable", lambda tmp: ["sweep", "smoke"], "is a file, not a folder",
         output_dir=_a_file_in_the_way),
    Case("optuna-postgres-refused",
         lambda tmp: ["sweep", "smoke", f"cluster.optuna_storage=postgresql+psycopg://u:pw@127.0.0.1:{_closed_port()}/x"],
         "postgresql+psycopg://u:***@127.0.0.1"),
    Case("optuna-storage-mistyped-url",
         lambda tmp: ["sweep", "smoke", "cluster.optuna_storage=postgres:/127.0.0.1/x"], "cluster.optuna_storage="),
    Case("optuna-journal-unwritable",
         lambda tmp: ["sweep", "smoke", f"cluster.optuna_storage={_a_file_in_the_way(tmp)}/optuna.journal"],
         "is a file, not a folder"),
    Case("optuna-journal-is-a-folder", lambda tmp: ["sweep", "smoke", f"cluster.optuna_storage={tmp}"],
         "is a folder: name the journal file in it"),
    Case("optuna-journal-is-sqlite", _sqlite_as_journal, "is a SQLite database, not a journal file: write sqlite:///"),
    Case("optuna-url-unknown-scheme",
         lambda tmp: ["sweep", "smoke", "cluster.optuna_storage=postgres://u:pw@127.0.0.1:9/x"],
         "cluster.optuna_storage=postgres://u:***@127.0.0.1:9/x is no database URL SQLAlchemy opens"),
    Case("optuna-url-driver-missing", lambda tmp: ["sweep", "smoke", "cluster.optuna_storage=mysql://u:pw@127.0.0.1/x"],
         "the driver of mysql:// is not installed"),
    Case("optuna-sqlite-two-slashes", lambda tmp: ["sweep", "smoke", "cluster.optuna_storage=sqlite://study.db"],
         "names no SQLite file (a file's URL has three slashes"),
    Case("searched-data-missing",
         _sweep_body("sweep:\n  sampler: grid\n  space: {data: {type: categorical, choices: [mnist5k, cifar10]}}\n"),
         "mine.yaml: the choice 'cifar10' needs dataset 'cifar10' under data.root="),
    Case("searched-tracking",
         _sweep_body("sweep:\n  space: {tracking: {type: categorical, choices: [none, local]}}\n"),
         "tracking is shared by all of a sweep's trials, so it cannot be searched; a space searches keys under model, "
         "optimizer, data, train"),
    Case("searched-output-dir",
         _sweep_body("sweep:\n  space: {output_dir: {type: categorical, choices: [a, b]}}\n"),
         "output_dir is shared by all of a sweep's trials, so it cannot be searched"),
    Case("log-as-text",
         _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1, log: 'false'}}\n"),
         "log must be true or false, got 'false'"),
    Case("float-step-beyond-range",
         _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1, step: 1}}\n"),
         "step=1 is larger than the range high - low = 0.09"),
    Case("float-step-not-dividing",
         _sweep_body("sweep:\n  space: {optimizer.lr: {type: float, low: 0.01, high: 0.1, step: 0.04}}\n"),
         "step=0.04 does not divide the range 0.01..0.1 (Optuna would search only up to 0.09); set high to 0.09 or "
         "0.13"),
    Case("int-step-not-dividing",
         _sweep_body("sweep:\n  space: {train.batch_size: {type: int, low: 16, high: 64, step: 20}}\n"),
         "set high to 56 or 76"),
    Case("loss-maximised", lambda tmp: ["sweep", "smoke", "sweep.metric=val/loss"],
         "with mode 'max' would seek the worst val/loss (lower is better): set sweep.mode=min"),
    Case("objective-loss-maximised",
         _sweep_body("sweep:\n  sampler: nsga2\n  objectives: [{metric: val/acc, mode: max}, "
                     "{metric: train/loss, mode: max}]\n" + SPACE),
         "would seek the worst train/loss (lower is better): set sweep.objectives[1].mode=min"),
    # a command line whose sweep is missing: its overrides only (the runner adds output_dir=...)
    Case("sweep-without-a-name", lambda tmp: ["sweep"],
         "no sweep given: its name or file comes first, then the overrides (sweeplab sweep NAME [key=value ...])"),
    *(Case(f"{command}-without-a-name", lambda tmp, command=command: [command, "train.epochs=1"],
           f"no sweep given: its name or id comes first, then the overrides (sweeplab {command} NAME [key=value ...])")
      for command in ("best", "report", "sync")),
    # sweeplab ui
    Case("ui-port-range", lambda tmp: ["ui", "--port", "99999"], "between 1 and 65535"),
    Case("ui-port-busy", _busy_port, "already in use"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_a_mistake_ends_in_one_line_naming_it_and_leaves_nothing_behind(case, tmp_path):
    held: list[socket.socket] = []
    args = case.args(tmp_path, held) if case.args in HOLDING_A_PORT else case.args(tmp_path)
    output_dir = case.output_dir(tmp_path)
    before = sorted(output_dir.rglob("*")) if output_dir.is_dir() else None
    try:
        done = cli(*args, f"output_dir={output_dir}", cwd=tmp_path)
    finally:
        for server in held:
            server.close()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == case.code, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"sweeplab {args[0]}: error:"), done.stderr
    assert case.named in lines[0] and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "pw@" not in done.stdout + done.stderr  # no password on the console
    after = sorted(output_dir.rglob("*")) if output_dir.is_dir() else None
    assert after == before  # no run folder, no mlflow.db, no Ray folder


TINY_SWEEP = ("data: {subset: 200}\ntrain: {epochs: 1}\nsweep:\n  sampler: random\n  num_trials: 2\n"
              "  max_concurrent: 2\n  space: {optimizer.lr: {type: float, low: LOW, high: HIGH, log: true}}\n")


@pytest.mark.slow
def test_a_sweep_runs_from_a_folder_whose_name_has_accents_and_spaces(tmp_path):
    """Paths travel to the trials as Hydra overrides: quoted, they are data, not syntax."""
    folder = tmp_path / "mes données, été"
    path = write_sweep(folder, "accents", TINY_SWEEP.replace("LOW", "0.01").replace("HIGH", "0.1"))
    done = cli("sweep", str(path), "data=mnist5k", "--quiet", cwd=folder)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 completed" in done.stdout, done.stdout[-2000:]
    assert (folder / "outputs" / "mlflow.db").exists()


@pytest.mark.slow
def test_a_sweep_whose_trials_all_end_invalid_exits_non_zero_and_says_so(tmp_path):
    path = write_sweep(tmp_path, "diverges", TINY_SWEEP.replace("LOW", "1.0e8").replace("HIGH", "1.0e9"))
    done = cli("sweep", str(path), "data=mnist5k", f"output_dir={tmp_path / 'out'}", "tracking=none", "--quiet",
               cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("sweeplab sweep: error: no trial of diverges-") and "2 invalid" in error, done.stderr
    # the status command it names runs as printed, from any folder; best says why there is nothing to rerun
    status = shlex.split(error.split("the reasons are above and in '")[1].split("'. Fix")[0])
    sweep_id = status[len(shlex.split(program())) + 1]
    shown = cli(*status[len(shlex.split(program())):], cwd=tmp_path / "out")
    assert shown.returncode == 0 and "invalid: the loss became" in shown.stdout, shown.stderr
    best = cli("best", sweep_id, f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert best.returncode == 2 and f"sweep {sweep_id} has no trial that ran every epoch (2 invalid); why: " \
        in best.stderr, best.stderr


@pytest.mark.slow
def test_a_database_that_never_answers_is_named_within_seconds(tmp_path):
    """MLflow retries a database for over a minute and psycopg waits forever on a server that accepts and
    stays silent: sweeplab gives up after a few seconds, naming it."""
    server = _silent_server()
    uri = f"postgresql+psycopg://u:pw@127.0.0.1:{server.getsockname()[1]}/x"
    started = time.monotonic()
    try:
        done = cli(*TRAIN, f"tracking.uri={uri}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    finally:
        server.close()
    assert time.monotonic() - started < 15
    assert done.returncode == 2 and "does not answer" in done.stderr and "timeout" in done.stderr, done.stderr
    assert "pw@" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("written", ["file-url", "path"])
def test_mlflows_file_store_is_refused_before_anything_starts_naming_the_sqlite_store_to_use(command, written,
                                                                                            tmp_path, monkeypatch):
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is true, in a message sweeplab cut short, and a
    sweep found out after Ray had started: one line now, before anything starts, with the store to use instead."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "mlruns"
    uri = folder.as_uri() if written == "file-url" else str(folder)
    args = TRAIN if command == "train" else ["sweep", "smoke"]
    done = cli(*args, f"tracking.uri={uri}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sweeplab {command}: error: tracking.uri={uri} is an MLflow file store"), lines[0]
    assert f"tracking.uri=sqlite:///{folder.resolve()}/mlflow.db" in lines[0]
    assert "MLFLOW_ALLOW_FILE_STORE=true" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no store, no output folder, no Ray


def test_mlflows_file_store_is_let_through_where_mlflow_is_told_to_allow_it(tmp_path, monkeypatch):
    """What MLflow requires, checked against MLflow itself: it refuses the file store unless MLFLOW_ALLOW_FILE_STORE
    is true (or 1), and takes nothing but true, false, 1 or 0."""
    from mlflow import MlflowClient

    from sweeplab.errors import UserError
    from sweeplab.tracking.store import check_reachable, client_for

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(Exception, match="MLFLOW_ALLOW_FILE_STORE=true"):
        MlflowClient(tracking_uri=(tmp_path / "refused").as_uri()).search_experiments()
    with pytest.raises(UserError, match="is an MLflow file store"):
        check_reachable((tmp_path / "refused").as_uri())
    for allowed in ("true", "1", "TRUE"):
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", allowed)
        check_reachable((tmp_path / "allowed").as_uri())
    client_for((tmp_path / "allowed").as_uri()).search_experiments()  # MLflow agrees
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "yes")
    with pytest.raises(UserError, match="MLFLOW_ALLOW_FILE_STORE='yes': MLflow takes true, false, 1 or 0"):
        check_reachable(str(tmp_path / "allowed"))


def test_a_writable_folder_is_checked_without_leaving_anything_behind(tmp_path):
    from sweeplab.tracking.store import check_writable

    check_writable(tmp_path / "not" / "yet", "output_dir")
    check_writable(tmp_path, "output_dir")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_file_may_live_in_a_folder_named_like_a_config_group(tmp_path):
    path = _sweep_file(tmp_path / "train", "train: {epochs: 1}\nsweep:\n" + SPACE)
    plan = plan_sweep(str(path), [f"output_dir={tmp_path}"])
    assert plan.cfg.model.name == "mlp" and plan.cfg.train.epochs == 1


def test_read_only_commands_do_not_create_stores(tmp_path):
    for command in ("report", "best", "status", "dashboard"):
        args = [command, "smoke"] if command != "status" else [command]
        done = cli(*args, f"output_dir={tmp_path / 'typo'}", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
    assert not (tmp_path / "typo").exists()


def test_an_unreachable_storage_is_named_without_its_password(tmp_path):
    storage = "postgresql://sweeplab:s3cret@127.0.0.1:9/optuna"  # nothing listens on port 9
    done = cli("best", "smoke", "cluster=compose", f"cluster.optuna_storage={storage}", f"output_dir={tmp_path}",
               cwd=tmp_path)
    assert done.returncode == 2
    assert "postgresql://sweeplab:***@127.0.0.1:9/optuna" in done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_the_installed_command_reports_a_mistake_in_one_line_without_a_traceback(tmp_path):
    """Across the process boundary, as a shell sees it: exit status 2, one line on stderr, nothing on stdout."""
    done = sweeplab("train", "model=nosuch", f"output_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("sweeplab train: error:") and "nosuch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["each-print-writes", "written-at-the-exit"])
@pytest.mark.parametrize("command", ["models", "datasets"])
def test_a_listing_whose_reader_goes_away_stops_quietly_as_a_pipes_writer_does(command, unbuffered, tmp_path):
    """``sweeplab models | head -1``: a write meets a pipe whose reader has gone, in a print (unbuffered) or in the
    flush at the exit: no traceback, the status SIGPIPE gives."""
    reader, writer = os.pipe()
    with subprocess.Popen([str(SWEEPLAB), command], cwd=tmp_path, stdout=writer, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": unbuffered}) as proc:
        os.close(writer)
        os.close(reader)  # the reader gone before the command writes anything
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err
    assert err == ""


@pytest.mark.parametrize("args, usage, named", [
    (["sweep"], "sweeplab sweep", "sweep"),
    (["train", "--epochs", "3"], "sweeplab train", "sweeplab train: error: unrecognized arguments: --epochs"),
    (["nosuch"], "sweeplab", "nosuch"),
    # Hydra's habit of -m to sweep: the sweep command sweeps without it
    (["sweep", "smoke", "-m"], "sweeplab sweep", "-m is train's, to run a grid of comma lists; a sweep file's trials "
                                                 "run as a sweep without it: sweeplab sweep smoke [key=value ...]"),
    (["models", "lenet"], "sweeplab models", "sweeplab models takes none: it lists every one"),
])
def test_a_malformed_command_line_gets_its_commands_usage_and_exit_2(args, usage, named, tmp_path):
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert f"usage: {usage} " in done.stderr and named in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


@pytest.mark.parametrize("url, masked", [
    ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
    ("postgresql://:secret@h/db", "postgresql://:***@h/db"),  # no user
    ("postgresql://u:it's@h/db", "postgresql://u:***@h/db"),  # a quote in it
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # an @ typed unencoded: masked whole
    ("postgresql://u@h/db?password=secret", "postgresql://u@h/db?password=***"),  # SQLAlchemy takes it so too
    ("postgresql:///db?host=/run/postgresql&user=u&password=secret&sslmode=require",
     "postgresql:///db?host=/run/postgresql&user=u&password=***&sslmode=require"),
    ("cluster.optuna_storage='postgresql://u:pw@h:5432/x' tracking.uri=http://a:b@c/",
     "cluster.optuna_storage='postgresql://u:***@h:5432/x' tracking.uri=http://a:***@c/"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("s3://bucket/a:b@c", "s3://bucket/a:b@c"),  # a path, not a login
])
def test_every_form_of_a_password_in_a_url_is_masked(url, masked):
    from sweeplab.redact import redact

    assert redact(url) == masked


def test_a_tracking_server_url_with_a_login_is_checked_without_it_and_named_masked(tmp_path):
    """urllib cannot open http://user:password@host (a ValueError, a traceback before); the health check needs no
    login, and the message masks the password."""
    from sweeplab.errors import UserError
    from sweeplab.tracking.store import check_reachable

    with pytest.raises(UserError) as err:  # no port: urllib took "s3cret@127.0.0.1" for one (nothing listens on 80)
        check_reachable("http://admin:s3cret@127.0.0.1/")
    assert "admin:***@127.0.0.1" in str(err.value) and "s3cret" not in str(err.value)


def test_a_store_error_that_quotes_its_url_reaches_the_console_masked(tmp_path):
    """MLflow's own message repeats the URL it was given: the one line sweeplab prints masks it too."""
    done = cli(*TRAIN, "tracking.uri=postgres://u:s3cret@127.0.0.1:9/db", f"output_dir={tmp_path / 'out'}",
               cwd=tmp_path)
    assert done.returncode == 2 and "s3cret" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.startswith("sweeplab train: error:") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["cluster.address", "RAY_ADDRESS"])
def test_local_as_the_cluster_address_is_a_loopback_ray_of_the_sweeps_own(where, monkeypatch):
    """Ray's word for a new local Ray: sweeplab's own, bound to 127.0.0.1 and shut down at the end (before, it was
    taken for a cluster: a Ray on the machine's routable address, left running)."""
    from sweeplab.compose import compose
    from sweeplab.sweep.launch import cluster_address, ray_environment

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", "local")
    cfg = compose(["cluster.address=local"] if where == "cluster.address" else [])
    assert cluster_address(cfg) is None and ray_environment(cfg) is None
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert cluster_address(compose(["cluster.address=10.0.0.5:6379"])) == ("10.0.0.5:6379", "cluster.address")
