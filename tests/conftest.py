"""Shared test set-up: one torch thread, no display, CLI runs that stay out of the repo."""
from __future__ import annotations

import os

# Before torch or Ray is imported anywhere: no GUI backend, no oversubscribed cores
# (this machine has 2, shared with other jobs; 2 torch threads slow down 15x there).
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest
import torch
from sweep_helpers import CliResult, cli

torch.set_num_threads(1)

SLOW_TIER_TIMEOUT = 900  # seconds for a test marked slow, cluster or browser (real sweeps, servers, Chromium)


# Files whose tests share no module fixture: their tests spread over the workers (below).
SPREAD_FILES = {"test_benchmarks.py"}
# The files that take longest on one worker (1.5-3 minutes each, `--durations`), longest first: started after
# SPREAD_FILES and before the rest, so that the run ends on short files rather than one worker alone on a long one.
# A name missing here only starts later.
LONG_FILES = ("test_sweep.py", "test_packs.py", "test_cluster.py", "test_tracking_outage.py", "test_sweep_natives.py",
              "test_sweep_resilience.py", "test_resume.py", "test_remote_storage.py", "test_browser.py",
              "test_user_errors.py")


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest without xdist (the lent GPU machine) runs on
def pytest_xdist_make_scheduler(config, log):
    """Under `--dist loadfile` (`make test`): each file's tests on one worker, so its module fixtures (sweeps,
    servers) are set up once, except SPREAD_FILES, whose tests (the benchmarks' smoke runs, the longest) spread."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.rsplit("/", 1)[-1] in SPREAD_FILES else path

    return FileScheduling(config, log)


def pytest_collection_modifyitems(items):
    """The fast tier keeps pyproject's short timeout; the slow tiers get a longer one unless a test names its own.
    SPREAD_FILES' tests come first, then LONG_FILES': under `make test` (--no-loadscope-reorder) xdist hands files
    out in this order, so the longest start first, rather than last, where xdist's default order (most tests per
    file first) or the alphabet would leave one worker running them alone."""

    def start(item) -> tuple[bool, int]:
        name = item.path.name
        return name not in SPREAD_FILES, LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=start)  # stable: a file's tests, and the other files, keep their order
    for item in items:
        slow_tier = any(item.get_closest_marker(m) for m in ("slow", "cluster", "browser"))
        if slow_tier and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIER_TIMEOUT))


@pytest.fixture
def run_cli(tmp_path):
    """Run ``sweeplab ARGS`` in-process in a tmp folder; train runs write outputs there, not to MLflow."""

    def run(*args: str) -> CliResult:
        args = list(args)
        if args and args[0] == "train":
            args += ["tracking=none", f"output_dir={tmp_path / 'outputs'}", "train.num_threads=1"]
        return cli(*args, cwd=tmp_path)

    return run
