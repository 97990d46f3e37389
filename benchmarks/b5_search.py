"""B5 search efficiency: TPE + ASHA (sweeps/default.yaml as shipped) vs random search without early
stopping on the same space, equal trial budget, per sampler seed: best val/acc vs cumulative epochs.

The curve is read back from each sweep's Optuna study: trials in order of completion, each adding the
epochs it trained and its reported val/acc (a trial ASHA stopped counts the epochs it ran)."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from harness import ROOT, Check, Result, study_times, sweeplab_sweep

SIZES = {  # trials and epochs None: as sweeps/default.yaml says (16 x 12)
    "full": {"seeds": [0, 1, 2], "overrides": []},
    "smoke": {"seeds": [0], "overrides": ["sweep.num_trials=4", "train.epochs=3", "data.subset=500",
                                          "sweep.scheduler.grace_period=1"]},
}
VARIANTS = {
    "tpe_asha": [],  # the file's own sampler and scheduler
    "random": ["sweep.sampler=random", "sweep.scheduler.kind=none"],
}


def curve(output_dir: Path, started_at: float) -> list[tuple[int, float]]:
    """(cumulative epochs, best val/acc so far) after each trial ended."""
    times = study_times(output_dir, started_at)
    points, epochs, best = [], 0, float("-inf")
    for t in sorted((t for t in times.trials if t["complete"] is not None), key=lambda t: t["complete"]):
        reported = t["value"] if t["value"] is not None else (list(t["intermediate"].values()) or [None])[-1]
        epochs += t["epochs"] or len(t["intermediate"])
        if reported is not None:
            best = max(best, reported)
        points.append((epochs, best))
    return points


def epochs_to_reach(points: list[tuple[int, float]], target: float):
    return next((e for e, best in points if best >= target), None)


def run(size: str, **_) -> Result:
    p = SIZES[size]
    per_seed = {}
    for seed in p["seeds"]:
        curves = {}
        for variant, overrides in VARIANTS.items():
            with tempfile.TemporaryDirectory(prefix=f"bench-b5-{variant}-") as tmp:
                out = Path(tmp) / "outputs"
                args = [f"output_dir={out}", "tracking=none", f"sweep.sampler_seed={seed}", "train.num_threads=1",
                        *p["overrides"], *overrides]
                timed = sweeplab_sweep(ROOT / "sweeps" / "default.yaml", args, cwd=Path(tmp))
                curves[variant] = curve(out, timed.started_at)
        random_epochs, random_best = curves["random"][-1]
        reach = epochs_to_reach(curves["tpe_asha"], random_best)
        per_seed[seed] = {"random_best": random_best, "random_epochs": random_epochs,
                          "tpe_asha_best": curves["tpe_asha"][-1][1], "tpe_asha_epochs": curves["tpe_asha"][-1][0],
                          "tpe_asha_epochs_to_random_best": reach,
                          "fraction": reach / random_epochs if reach is not None else None, "curves": curves}
    fractions = [s["fraction"] for s in per_seed.values()]
    # a seed where TPE + ASHA never reached random's best counts as needing more than all of random's epochs
    mean_fraction = statistics.fmean(f if f is not None else float("inf") for f in fractions)
    return Result("B5", "search efficiency: TPE + ASHA vs random", size, checks=[
        Check("TPE+ASHA epochs to reach random's best / random's epochs (mean over seeds)",
              mean_fraction if mean_fraction != float("inf") else None, "<= 0.5", missing_is_unmet=True),
        Check("seeds where TPE+ASHA reached random's best", sum(f is not None for f in fractions), ""),
        Check("best val/acc, TPE+ASHA minus random (mean over seeds, points)",
              100 * statistics.fmean(s["tpe_asha_best"] - s["random_best"] for s in per_seed.values()), ""),
    ], figures={"per_seed": per_seed, "sweep": "sweeps/default.yaml", "overrides": p["overrides"]})
