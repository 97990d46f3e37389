"""What one `sweeplab` command costs the machine: its wall time and the CPU seconds of every process it starts, by
role (the driver, Ray's services, the trial workers, the driver's helpers; `harness.CpuAccount`).

    .venv/bin/python benchmarks/sweep_cpu.py [--runs 2] -- sweep smoke sweep.num_trials=1 train.epochs=1

Each run starts in a fresh temporary folder (a relative output_dir lands there) and prints one JSON line. On a
quiet machine: another job's processes are not counted, but they take the cores the command's processes wait for.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import SWEEPLAB, CpuAccount, check_ok, run_timed


def one_run(args: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-cpu-") as tmp, CpuAccount() as cpu:
        timed = check_ok(run_timed([SWEEPLAB, *args], Path(tmp)), f"sweeplab {' '.join(args[:2])}")
    by_role = cpu.by_role()
    return {"wall_s": round(timed.wall, 2), "cpu_s": by_role, "cpu_total_s": round(sum(by_role.values()), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the sweeplab arguments")
    options = parser.parse_args()
    args = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not args:
        parser.error("give the sweeplab arguments after --, e.g. -- sweep smoke sweep.num_trials=1")
    for _ in range(options.runs):
        print(json.dumps(one_run(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
