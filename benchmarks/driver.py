"""`sweeplab ...` in this process, recording what the driver process itself spends.

    python benchmarks/driver.py STATS.json sweep NAME OVERRIDES...   (BENCH_PROFILE=1: also profile)

Writes STATS.json: the driver's user and system CPU (all its threads, from getrusage; Ray's own
processes are not the driver) and, with BENCH_PROFILE=1, the main thread's CPU by component from
cProfile (timer: thread CPU time, so waiting costs nothing)."""
from __future__ import annotations

import json
import os
import resource
import sys
import time

# Entry points whose cumulative time is the cost of one component. Matched on the path's tail and the
# function's name, so renamed helpers inside them still count.
COMPONENTS = {
    "mlflow tracking (sweeplab callback)": ("sweeplab/sweep/tracker.py", ("on_", "setup")),
    "optuna ask/tell (sweeplab searcher)": ("sweeplab/sweep/searcher.py", ("suggest", "on_trial_")),
    "live view": ("sweeplab/sweep/view.py", ("on_",)),
    "planning (compose, checks)": ("sweeplab/sweep/plan.py", ("plan_sweep",)),
    "ray start-up": ("sweeplab/sweep/launch.py", ("start_ray",)),
}


def component_times(stats) -> dict[str, float]:
    out = {name: 0.0 for name in COMPONENTS}
    for (path, _, func), (_, _, _, cumtime, _) in stats.stats.items():
        path = path.replace(os.sep, "/")
        for name, (tail, prefixes) in COMPONENTS.items():
            if tail in path and func.startswith(prefixes):
                out[name] += cumtime
    return out


def package_times(stats, top: int = 8) -> dict[str, float]:
    """Main-thread CPU spent in each package's own code (tottime), largest first."""
    out: dict[str, float] = {}
    for (path, _, _), (_, _, tottime, _, _) in stats.stats.items():
        path = path.replace(os.sep, "/")
        if "site-packages/" in path:
            pkg = path.split("site-packages/", 1)[1].split("/", 1)[0]
        elif "/sweeplab/" in path:
            pkg = "sweeplab"
        elif path.startswith("~") or "/lib/python" in path:
            pkg = "python (stdlib, builtins)"
        else:
            pkg = "other"
        out[pkg] = out.get(pkg, 0.0) + tottime
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:top])


def main() -> int:
    stats_path, argv = sys.argv[1], sys.argv[2:]
    profile = os.environ.get("BENCH_PROFILE") == "1"
    started = time.perf_counter()
    from sweeplab.cli import main as sweeplab_main

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
    try:
        code = sweeplab_main(argv)
    finally:
        if profiler is not None:
            profiler.disable()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record = {"wall_s": time.perf_counter() - started, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                  "max_rss_mb": usage.ru_maxrss / 1024}
        if profiler is not None:
            import pstats

            stats = pstats.Stats(profiler)
            record["main_thread_cpu_s"] = stats.total_tt
            record["components_s"] = component_times(stats)
            record["packages_s"] = package_times(stats)
        with open(stats_path, "w") as f:
            json.dump(record, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
