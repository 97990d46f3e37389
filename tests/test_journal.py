"""The tracking journal on disk: what a killed driver or a down store left unsent is read back, in order;
`sweeplab sync` sends it."""
from __future__ import annotations

import pytest

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


def test_a_trial_end_cut_short_by_the_store_leaves_its_run_running_until_sent_again(tmp_path):
    """The store going down between a trial's files leaves the run as it was, not completed without its files
    (`sweeplab best --register` makes the best run's model from them); the call sent again ends it whole."""
    from mlflow import MlflowClient

    from sweeplab.sweep.tracker_calls import end_trial_run
    from sweeplab.tracking.store import client_for

    class GoesDown(MlflowClient):
        def log_artifact(self, run_id, local_path, artifact_path=None):
            raise ConnectionError("the MLflow store went down")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("outage"), tags={"sweeplab.status": "running"}).info.run_id
    files = tmp_path / "checkpoint"
    files.mkdir()
    for name in ("config.yaml", "model_summary.txt", "weights.pt", "confusion_matrix.json"):
        (files / name).write_text(name)
    checkpoint = {"path": str(files), "fs": "local"}

    with pytest.raises(ConnectionError):
        end_trial_run(GoesDown(uri), run_id, "completed", "", 0, checkpoint)
    cut = client.get_run(run_id)
    assert (cut.data.tags["sweeplab.status"], cut.info.status) == ("running", "RUNNING")

    end_trial_run(client, run_id, "completed", "", 0, checkpoint)
    ended = client.get_run(run_id)
    assert (ended.data.tags["sweeplab.status"], ended.info.status) == ("completed", "FINISHED")
    assert {f.path for f in client.list_artifacts(run_id)} == {"config.yaml", "model_summary.txt", "weights.pt",
                                                              "confusion_matrix.json"}


def test_a_trial_whose_config_cannot_compose_gets_its_sampled_values_as_params_each_once(tmp_path):
    """The trial itself ends invalid; its run still shows what was sampled. The searched model group was in that
    list and was added again: MLflow refused the repeated key, and the run kept no params at all."""
    from sweep_helpers import write_sweep

    from sweeplab.sweep.launch import trial_spec
    from sweeplab.sweep.plan import plan_sweep
    from sweeplab.sweep.tracker_calls import trial_run
    from sweeplab.tracking.store import client_for

    path = write_sweep(tmp_path, "groups", """
sweep:
  space:
    model: {type: categorical, choices: [mlp, lenet]}
    optimizer.lr: {type: float, low: 0.01, high: 0.1}
""")
    spec = trial_spec(plan_sweep(str(path), [f"output_dir={tmp_path / 'out'}"]))
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = {"model": "mlp", "optimizer.lr": "fast", "seed": 0, "optuna_trial": 3}  # a value that cannot fit
    run_id = trial_run(client, client.create_experiment("groups"), None, "trial_003_seed0", {}, spec, config)
    assert client.get_run(run_id).data.params == {"model": "mlp", "optimizer.lr": "fast", "seed": "0",
                                                  "optuna_trial": "3"}
