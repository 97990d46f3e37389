"""sweeplab: deep-learning experiment sweeps with Hydra, Optuna, Ray Tune and MLflow."""

__version__ = "0.1.0"
