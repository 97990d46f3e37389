-- The Optuna studies live beside MLflow's tables, in their own database.
CREATE DATABASE optuna OWNER sweeplab;
