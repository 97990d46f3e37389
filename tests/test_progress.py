"""Progress you can watch: the batch bar of `sweeplab train` on a terminal only, and the sweep's ETA."""
from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

import sweeplab
from sweeplab.sweep.progress import SweepProgress

TRAIN = ["train", "model=mlp", "data=digits", "train.epochs=1", "tracking=none", "train.num_threads=1"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(sweeplab.__file__).parents[1]), "TERM": "xterm", "COLUMNS": "160"}


def _on_a_terminal(args: list[str], cwd: Path) -> str:
    """What `python -m sweeplab ARGS` writes to a pseudo-terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sweeplab", *args], stdout=follower, stderr=follower,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=_env())
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_train_shows_a_batch_bar_with_rate_and_eta_on_a_terminal_only(tmp_path):
    shown = _on_a_terminal([*TRAIN, f"output_dir={tmp_path / 'tty'}"], tmp_path)
    assert "batches/s" in shown and "eta" in shown and "epoch 1/1" in shown, shown
    assert "val/acc" in shown  # the per-epoch line is still there

    piped = subprocess.run([sys.executable, "-m", "sweeplab", *TRAIN, f"output_dir={tmp_path / 'pipe'}"],
                           capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "batches/s" not in piped.stdout and "\x1b[" not in piped.stdout
    assert [line.split()[:2] for line in piped.stdout.splitlines() if "val/acc" in line][0] == ["epoch", "1/1"]


def test_sweep_progress_counts_ended_trials_as_their_whole_budget():
    progress = SweepProgress(total_trials=4, max_epochs=10, started=0.0)
    progress.epoch("a", 1)
    progress.epoch("a", 2)
    progress.epoch("b", 2)
    assert progress.spent() == 4 and progress.budget == 40
    progress.end("b")  # stopped early at epoch 2: its other 8 epochs will never run
    assert progress.spent() == 12
    assert progress.rate(now=8.0) == pytest.approx(0.5)  # 4 epochs trained in 8 s
    assert progress.eta(now=8.0) == pytest.approx((40 - 12) / 0.5)
    assert progress.line(now=8.0).startswith("1/4 trials, 12/40 epochs of the budget, 30.0 epochs/min, eta 00:56")


def test_the_rate_clock_starts_with_the_first_trial_not_with_ray():
    progress = SweepProgress(total_trials=2, max_epochs=1, started=0.0)
    progress.begin(now=60.0)  # Ray took a minute to start
    progress.begin(now=90.0)  # a later trial start changes nothing
    progress.epoch("a", 1)
    assert progress.rate(now=70.0) == pytest.approx(0.1)


def test_a_retried_epoch_is_not_counted_twice():
    progress = SweepProgress(total_trials=1, max_epochs=3, started=0.0)
    progress.epoch("a", 2)
    progress.epoch("a", 2)  # a retry from the checkpoint reports epoch 2 again
    assert progress.trained == 2 and progress.spent() == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_the_live_view_shows_sweep_progress(terminal):
    """A rich bar with the ETA on a terminal; plain progress lines (no escape codes) elsewhere."""
    from ray.tune.experiment import Trial

    from sweeplab.sweep.view import LiveView

    stream = _Terminal() if terminal else io.StringIO()
    view = LiveView(["optimizer.lr"], "val/acc", "max", max_epochs=2, max_failures=0, stream=stream,
                    total_trials=2)
    trials = [Trial("t", config={"optimizer.lr": lr, "seed": 0}, stub=True) for lr in (0.01, 0.1)]
    for epoch in (1, 2):
        result = {"epoch": epoch, "val/acc": 0.5 + epoch / 10, "train/loss": 1.0, "epoch_seconds": 0.1}
        view.on_trial_result(0, trials, trials[0], result)
    trials[0].update_last_result({**result, "done": True})
    view.on_trial_complete(0, trials, trials[0])
    view.finish()
    text = stream.getvalue()
    assert "1/2 trials, 2/4 epochs of the budget" in text
    assert ("━" in text and "\x1b[" in text) is terminal


def test_a_resumed_sweep_counts_what_earlier_launches_did_as_spent_not_as_its_rate():
    """Trial 0 ended and trial 1 reached epoch 1 before the interruption: resumed, trial 1's epoch 2 is the only
    epoch this launch trained, and trial 0 counts as ended."""
    from ray.tune.experiment import Trial

    from sweeplab.sweep.view import LiveView

    view = LiveView(["optimizer.lr"], "val/acc", "max", max_epochs=2, max_failures=0, stream=io.StringIO(),
                    total_trials=3)
    trials = [Trial("t", config={"optimizer.lr": lr, "seed": 0}, stub=True) for lr in (0.01, 0.02, 0.03)]
    trials[0].update_last_result({"epoch": 2, "val/acc": 0.9, "done": True})
    trials[0].set_status(Trial.TERMINATED)
    trials[1].update_last_result({"epoch": 1, "val/acc": 0.7})
    view.on_trial_start(0, trials, trials[1])
    view.on_trial_result(0, trials, trials[1], {"epoch": 2, "val/acc": 0.8, "train/loss": 1.0, "epoch_seconds": 0.1})
    progress = view.progress
    assert progress.ended == {trials[0].trial_id} and progress.trained == 1
    assert progress.spent() == 2 + 2 and progress.line().startswith("1/3 trials, 4/6 epochs of the budget")
