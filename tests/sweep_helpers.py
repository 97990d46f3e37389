"""Helpers shared by the sweep and tracking tests: sweep files in tmp, the CLI as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SWEEPLAB = Path(sys.executable).with_name("sweeplab")  # the console script a user runs

# The smallest real training the sweeps run: an MLP on 500 MNIST digits, one torch thread per trial.
TINY = ["data=mnist5k", "data.subset=500", "train.num_threads=1", "train.batch_size=50"]


def write_sweep(folder: Path, name: str, body: str, model: str = "mlp") -> Path:
    """A sweep file as a user writes one: Hydra's global package, a defaults list, then the blocks."""
    folder = Path(folder) / "sweeps"  # its folder is the config group Hydra composes it as
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    header = f"# @package _global_\ndefaults:\n  - override /model: {model}\n  - _self_\n\n"
    path.write_text(header + body.strip() + "\n")
    return path


def sweeplab(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``sweeplab`` command in ``cwd`` with one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([str(SWEEPLAB), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
