"""`sweeplab train` with the default local tracking: one MLflow run with everything a trial run has."""
from __future__ import annotations

import subprocess
import sys

import torch


def test_a_train_run_is_logged_to_the_local_mlflow_store(tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "sweeplab.cli", "train", "model=mlp", "data.subset=300",
                             "train.epochs=2", "train.num_threads=1", f"output_dir={out}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "INFO mlflow" not in result.stderr  # no store chatter in the user's terminal

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.name"] == "mlp" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "confusion_matrix.png", "weights.pt", "model_summary.txt"} <= artifacts
    weights = torch.load(client.download_artifacts(run.info.run_id, "weights.pt", str(tmp_path)), weights_only=True)
    assert "0.weight" in weights or any(k.endswith("weight") for k in weights)
