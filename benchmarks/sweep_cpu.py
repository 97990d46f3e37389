"""What one `sweeplab` command costs the machine: its wall time and the CPU seconds of every process it starts, by
role (the driver, Ray's services, the trial workers, the driver's helpers; `harness.CpuAccount`).

    .venv/bin/python benchmarks/sweep_cpu.py [--runs 2] [--every 1] -- sweep smoke sweep.num_trials=1 train.epochs=1

Each run starts in a fresh temporary folder (a relative output_dir lands there) and prints one JSON line; with
``--every S``, first a table of the CPU seconds each role took in each S seconds of the run (which process holds
the cores during the start-up, say). On a quiet machine: another job's processes are not counted, but they take the
cores the command's processes wait for.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from harness import SWEEPLAB, CpuAccount, check_ok, run_timed


def one_run(args: list[str], every: float | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-cpu-") as tmp, CpuAccount() as cpu:
        timed = check_ok(run_timed([SWEEPLAB, *args], Path(tmp)), f"sweeplab {' '.join(args[:2])}")
    by_role = cpu.by_role()
    if every:
        print(timeline_table(cpu.timeline, every), flush=True)
    return {"wall_s": round(timed.wall, 2), "cpu_s": by_role, "cpu_total_s": round(sum(by_role.values()), 1)}


def timeline_table(timeline: list[tuple[float, dict[str, float]]], every: float) -> str:
    """The CPU seconds each role took in each ``every`` seconds (from the account's samples, the last of each
    interval), as a Markdown table."""
    roles = sorted({role for _, by_role in timeline for role in by_role})
    lines = ["| s | " + " | ".join(roles) + " |", "|---:|" + "---:|" * len(roles)]
    last_of: dict[int, tuple[float, dict[str, float]]] = {}
    for at, by_role in timeline:
        last_of[int(at // every)] = (at, by_role)
    before: dict[str, float] = {}
    for at, by_role in last_of.values():
        lines.append(f"| {at:.1f} | " + " | ".join(f"{by_role.get(r, 0) - before.get(r, 0):.1f}" for r in roles) + " |")
        before = by_role
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--every", type=float, default=None, help="also each role's CPU every this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the sweeplab arguments")
    options = parser.parse_args()
    args = options.command[1:] if options.command[:1] == ["--"] else options.command
    if options.every is not None and options.every <= 0:
        parser.error(f"--every {options.every:g}: give a number of seconds > 0, e.g. --every 1")
    if not args:
        parser.error("give the sweeplab arguments after --, e.g. -- sweep smoke sweep.num_trials=1")
    for _ in range(options.runs):
        print(json.dumps(one_run(args, options.every)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
