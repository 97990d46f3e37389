"""benchmarks/history.py: every run's figures, derived from the results files alone."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import history  # noqa: E402
from harness import Check, Result  # noqa: E402


def write_run(folder: Path, stem: str, date: str, machine: str, results: list[Result], gpu: str | None = None) -> None:
    env = {"date": date, "machine": machine, "gpu": gpu, "size": stem.rsplit("-", 1)[1], "versions": {}}
    (folder / f"{stem}.jsonl").write_text("".join(json.dumps(r.record(env)) + "\n" for r in results))


def b2(wall: float) -> Result:
    return Result("B2", "sweep overhead", "full", checks=[Check("sweep / bare", wall, "<= 1.20"),
                                                           Check("naive Ray Tune / bare", 3.5, "")])


def test_every_run_s_value_newest_first_with_its_date_and_machine(tmp_path):
    write_run(tmp_path, "20261129-100000-full", "2026-11-29 10:00:00 UTC", "x86_64, 2 CPUs, Intel(R) Xeon(R) Gold",
              [b2(1.1), Result("B6", "GPU", "full", status="skipped", reason="no CUDA device")])
    write_run(tmp_path, "20261130-120000-full", "2026-11-30 12:00:00 UTC", "x86_64, 2 CPUs, AMD EPYC",
              [Result("B1", "trainer", "full", checks=[Check("train / bare", 1.0, "<= 1.05")]), b2(1.55)])
    write_run(tmp_path, "20261130-130000-smoke", "2026-11-30 13:00:00 UTC", "x86_64, 2 CPUs, AMD EPYC", [b2(9.0)])
    write_run(tmp_path, "20261130-140000-full", "2026-11-30 14:00:00 UTC", "x86_64, 16 CPUs, AMD EPYC",
              [Result("B6", "GPU", "full", checks=[Check("LeNet epoch", 2.11, "<= 0.5", "s"),
                                                    Check("8 packed / 1", None, ">= 4")])], gpu="NVIDIA H200")

    amd, intel = "(2026-11-30 12:00, AMD EPYC)", "(2026-11-29 10:00, Intel Xeon Gold)"
    rows = history.table(tmp_path).splitlines()
    assert rows[:2] == history.HEADER.splitlines()
    assert rows[2:] == [
        f"| B1 | train / bare | ≤ 1.05 | 1 of 1 runs | 1 {amd} |",
        f"| B2 | sweep / bare | ≤ 1.20 | 1 of 2 runs | 1.55 {amd}; 1.1 {intel} |",
        f"| B2 | naive Ray Tune / bare |  |  | 3.5 {amd}; 3.5 {intel} |",
        "| B6 | LeNet epoch | ≤ 0.5 | 0 of 1 runs | 2.11 s (2026-11-30 14:00, NVIDIA H200) |",  # the skipped run: none
        "| B6 | 8 packed / 1 | ≥ 4 | not measured | n/a (2026-11-30 14:00, NVIDIA H200) |",  # no value: not a miss
    ]
    assert [row.split(" | ")[1] for row in history.table(tmp_path, "full", ["B6"]).splitlines()[2:]] == [
        "LeNet epoch", "8 packed / 1"]
    assert "9 (2026-11-30 13:00" in history.table(tmp_path, "smoke")


def test_the_committed_history_is_what_the_committed_results_give():
    """Kept in step by run.py after each full run; a run cut short, or a results file added by hand, needs
    `benchmarks/history.py --write`."""
    assert (history.RESULTS / history.HISTORY_FILE).read_text() == history.document(history.RESULTS), \
        "benchmarks/results/history.md is behind its results files: run `benchmarks/history.py --write`"


def test_write_puts_the_document_beside_the_results(tmp_path):
    write_run(tmp_path, "20261130-120000-full", "2026-11-30 12:00:00 UTC", "x86_64, 2 CPUs, AMD EPYC", [b2(1.5)])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "history.py"), "--results", str(tmp_path),
                           "--write"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path / history.HISTORY_FILE)
    assert (tmp_path / history.HISTORY_FILE).read_text() == history.document(tmp_path)


def test_a_folder_without_results_is_named_with_what_fills_it(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "history.py"), "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"no full-size results in {tmp_path}: run `make bench`" in proc.stderr


def test_the_table_of_targets_holds_each_current_figure_s_newest_value_and_how_often_it_was_met(tmp_path):
    old_b2 = Result("B2", "sweep overhead", "full", checks=[Check("sweep / bare", 1.6, "<= 1.20"),
                                                            Check("overhead per trial (old count)", 0.9, "<= 0.25")])
    write_run(tmp_path, "20261129-100000-full", "2026-11-29 10:00:00 UTC", "x86_64, 2 CPUs, AMD EPYC", [old_b2])
    write_run(tmp_path, "20261130-120000-full", "2026-11-30 12:00:00 UTC", "x86_64, 2 CPUs, AMD EPYC", [b2(1.1)])
    write_run(tmp_path, "20261130-140000-full", "2026-11-30 14:00:00 UTC", "x86_64, 16 CPUs, AMD EPYC",
              [Result("B6", "GPU", "full", checks=[Check("LeNet epoch", 0.3, "<= 0.5", "s")])], gpu="NVIDIA H200")
    write_run(tmp_path, "20261130-150000-full", "2026-11-30 15:00:00 UTC", "x86_64, 16 CPUs, AMD EPYC",
              [Result("B6", "GPU", "full", status="error", reason="CUDA out of memory")], gpu="NVIDIA H200")

    rows = history.standing(tmp_path).splitlines()
    assert rows[:2] == history.STANDING_HEADER.splitlines()
    assert rows[2:] == [  # the old count left to history.md; B6's last measuring GPU run counts after a failed one
        "| B2 | sweep / bare | ≤ 1.20 | 1.1 (2026-11-30 12:00, AMD EPYC) | 1 of 2 runs | 1.1 – 1.6 |",
        "| B6 | LeNet epoch | ≤ 0.5 | 0.3 s (2026-11-30 14:00, NVIDIA H200) | 1 of 1 runs |  |",
    ]

    doc = tmp_path / "performance.md"
    begin, end = history.STANDING_BEGIN, history.STANDING_END
    doc.write_text(f"# Performance\n\nprose\n\n{begin}\n| stale |\n{end}\n\nmore prose\n")
    history.write(tmp_path, doc=doc)
    assert doc.read_text() == (f"# Performance\n\nprose\n\n{history.STANDING_BEGIN}\n{history.standing(tmp_path)}"
                               f"{history.STANDING_END}\n\nmore prose\n")

    for text in ("# Performance\n", f"{end}\n{begin}\n"):  # no place for the table, or its lines the wrong way round
        doc.write_text(text)
        with pytest.raises(ValueError, match=f"{doc} has no place for the table of targets"):
            history.write(tmp_path, doc=doc)
        assert doc.read_text() == text


def test_docs_performance_table_of_targets_is_what_the_committed_results_give():
    """docs/performance.md quotes no figure of a target by hand: run.py writes its table after each full run."""
    history.check_markers(history.DOC)
    assert history.with_standing(history.DOC.read_text(), history.RESULTS) == history.DOC.read_text(), \
        "docs/performance.md's table of targets is behind the results files: run `benchmarks/history.py --write`"
