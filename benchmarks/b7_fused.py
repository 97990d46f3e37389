"""B7 fused trials: the hook for sweeplab.fused (built separately; issue 7, part 3).

When the module exists this runs the B2 workload through `sweeplab sweep` twice, unfused and with
FUSE_OVERRIDE, and compares the trial phase. Targets: >= 8x on a GPU for 16 fused LeNet trials;
on a CPU fusing must switch itself off or cost nothing (>= 0.95x)."""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch
from harness import Check, Result, study_times, sweeplab_sweep, write_sweep

FUSE_OVERRIDE = "sweep.fuse={n}"  # the sweep option issue 7 proposes; change here if fused.py names it otherwise


def fused_available() -> bool:
    return importlib.util.find_spec("sweeplab.fused") is not None


def run_fused_trials(size: str, **_) -> Result:
    if not fused_available():
        return Result("B7", "fused trials", size, status="skipped", reason="sweeplab.fused not available")
    from b2_sweep import SIZES, SWEEP_NAME, sweep_body

    p = SIZES[size]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    phases = {}
    for label, extra in (("unfused", []), ("fused", [FUSE_OVERRIDE.format(n=p["trials"])])):
        with tempfile.TemporaryDirectory(prefix=f"bench-b7-{label}-") as tmp:
            body = sweep_body(p["trials"], p["epochs"], p["subset"]).replace("device: cpu", f"device: {device}")
            if device == "cuda":
                body = body.replace("resources: {cpu: 1, gpu: 0}", "resources: {cpu: 1, gpu: 1}")
            sweep = write_sweep(Path(tmp), SWEEP_NAME, body)
            out = Path(tmp) / "outputs"
            timed = sweeplab_sweep(sweep, [f"output_dir={out}", "tracking=none", *extra], cwd=Path(tmp))
            times = study_times(out, timed.started_at)
            phases[label] = {"wall_s": timed.wall, "trial_phase_s": times.steady,
                             "completed": sum(t["status"] == "completed" for t in times.trials)}
    speedup = phases["unfused"]["trial_phase_s"] / phases["fused"]["trial_phase_s"]
    return Result("B7", "fused trials", size, checks=[
        Check(f"{p['trials']} trials fused vs unfused, trial phase speed-up ({device})", speedup,
              ">= 8" if device == "cuda" else ">= 0.95"),
    ], figures={"device": device, **phases})
