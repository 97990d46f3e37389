"""The tracking journal on disk: what a killed driver or a down store left unsent is read back, in order;
`sweeplab sync` sends it."""
from __future__ import annotations

from sweeplab.tracking.journal import Journal, journal_path


def test_unsent_calls_survive_the_process_and_a_torn_last_line(tmp_path):
    path = journal_path(tmp_path, "smoke-20260101-000000")
    journal = Journal(path)
    for step in (1, 2, 3):
        journal.append("log_epoch", {"name": "trial_000_seed0", "metrics": [["val/acc", 0.5, 0, step]]})
    journal.mark_done(1)
    with open(path, "a") as f:  # a driver killed while writing its next line
        f.write('{"seq":4,"op":"log_ep')

    again = Journal(path)  # a later launch, or sweeplab sync
    pending = again.pending()
    assert [e.seq for e in pending] == [2, 3]
    assert [e.args["metrics"][0][3] for e in pending] == [2, 3]
    assert all(e.retry for e in pending)  # they may have reached the store: replay checks before writing
    assert again.append("conclude", {}).seq == 4  # numbering goes on after the last complete line

    again.mark_done(2)
    again.close()
    assert [e.seq for e in Journal(path).pending()] == [3, 4]  # still pending: the file stays

    last = Journal(path)
    last.mark_done(3)
    last.mark_done(4)
    last.close()
    assert not path.exists()  # nothing left to send


def test_sync_of_a_sweep_that_never_ran_here_says_so_in_one_line(tmp_path):
    from sweep_helpers import cli

    done = cli("sync", "smoke", f"output_dir={tmp_path / 'outputs'}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("sweeplab sync: error: no sweep has run here yet"), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()  # a mistyped output_dir gets no stores and no journal
