"""Helpers shared by the CLI, sweep and tracking tests: sweep files in tmp, the ``sweeplab`` command run
in-process (the default) or as the installed console script (where the process boundary is the point)."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sweeplab.cli import main

SWEEPLAB = Path(sys.executable).with_name("sweeplab")  # the console script a user runs

# The smallest real training the sweeps run: an MLP on 500 MNIST digits, one torch thread per trial.
TINY = ["data=mnist5k", "data.subset=500", "train.num_threads=1", "train.batch_size=50"]


def journal_in(out: Path):
    """The Optuna storage a sweep writes in output_dir ``out``, opened as Optuna documents opening a journal file
    (and as ``optuna-dashboard out/optuna.journal`` does), not through sweeplab."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(out) / "optuna.journal"
    assert path.is_file(), f"no Optuna journal at {path}"
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def write_sweep(folder: Path, name: str, body: str, model: str = "mlp") -> Path:
    """A sweep file as a user writes one: Hydra's global package, a defaults list, then the blocks."""
    folder = Path(folder) / "sweeps"  # its folder is the config group Hydra composes it as
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    header = f"# @package _global_\ndefaults:\n  - override /model: {model}\n  - _self_\n\n"
    path.write_text(header + body.strip() + "\n")
    return path


@dataclass
class CliResult:
    """What a user sees of one command: its exit status and its two output streams."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path) -> CliResult:
    """``sweeplab ARGS`` run in this process from ``cwd``: ``main``'s exit status (or SystemExit's, for
    argparse errors), and what it printed. An exception that escapes ``main`` fails the calling test,
    as a traceback would fail the user. The environment is restored afterwards."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliResult(code, out.getvalue(), err.getvalue())


def sweeplab(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed ``sweeplab`` command in ``cwd`` with one torch thread, in a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([str(SWEEPLAB), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def sweep_env() -> dict[str, str]:
    """The environment a `sweeplab` subprocess runs in: this one (read now, so a fixture's variables reach it),
    one torch thread, a loopback-only Ray."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def interrupt_sweep(overrides: list[str], at_line: str, sig: signal.Signals = signal.SIGINT,
                    timeout: float = 300, cwd: Path | None = None) -> tuple[str, int]:
    """A real `sweeplab sweep smoke` process (in ``cwd``) sent ``sig`` by PID once it prints ``at_line``: its
    output and exit status."""
    env = sweep_env()
    sweep = subprocess.Popen([sys.executable, "-m", "sweeplab.cli", "sweep", "smoke", *overrides],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    seen = []
    assert sweep.stdout is not None
    for line in sweep.stdout:
        seen.append(line)
        if at_line in line:
            os.kill(sweep.pid, sig)
            break
    return "".join(seen) + sweep.communicate(timeout=timeout)[0], sweep.returncode
