"""``sweeplab sync``: send the tracking calls a sweep journaled while its MLflow store did not answer."""
from __future__ import annotations

from collections.abc import Sequence

from sweeplab.errors import UserError


def sync_sweep(ref: str, overrides: Sequence[str] = ()) -> tuple[str, int, int]:
    """Replay the sweep's journal into its MLflow store, in order; a call that already went through is not
    repeated. Returns (sweep id, calls sent, calls still unsent)."""
    from sweeplab.redact import redact
    from sweeplab.sweep.launch import recorded_plan, sync_command, trial_spec
    from sweeplab.sweep.results import load_outcome
    from sweeplab.sweep.tracker import MlflowSweepTracker

    plan, sweep_id = recorded_plan(ref, overrides)
    load_outcome(plan.optuna_storage, sweep_id).refuse_while_running(
        "its driver sends what it journaled itself as soon as the store answers; sync what is left once it has ended")
    command = sync_command(sweep_id, overrides, plan.cfg)
    tracker = MlflowSweepTracker(plan.cfg, plan, sweep_id, trial_spec(plan), command)
    pending = len(tracker.outbox.journal.pending())
    if not pending:
        tracker.outbox.journal.close()
        return sweep_id, 0, 0
    if not tracker.attach():
        raise UserError(f"the MLflow store {redact(tracker.uri)} has no parent run of sweep {sweep_id} (experiment "
                        f"{tracker.experiment_name!r}): pass the tracking.uri=... the sweep used")
    left = tracker.outbox.flush()
    tracker.finish(command="sync")
    return sweep_id, pending - left, left
