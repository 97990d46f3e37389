"""Shared test set-up: one torch thread, no display, CLI runs that stay out of the repo."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Before torch or Ray is imported anywhere: no GUI backend, no oversubscribed cores
# (this machine has 2, shared with other jobs; 2 torch threads slow down 15x there).
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

SWEEPLAB = Path(sys.executable).with_name("sweeplab")  # the console script a user runs


@pytest.fixture
def run_cli(tmp_path):
    """Run ``sweeplab ARGS`` in a tmp folder; train runs write outputs there, not to MLflow."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        args = list(args)
        if args and args[0] == "train":
            args += ["tracking=none", f"output_dir={tmp_path / 'outputs'}", "train.num_threads=1"]
        return subprocess.run(
            [str(SWEEPLAB), *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    return run
