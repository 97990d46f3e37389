"""Registers every schema in Hydra's ConfigStore; YAML files in conf/ extend them."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from sweeplab.config import schema

_done = False


def register_configs() -> None:
    global _done
    if _done:
        return
    from sweeplab.models import MODELS

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=schema.Config)
    for name in MODELS.names():
        cs.store(group="model", name=f"{name}_schema", node=MODELS.get(name).schema)
    cs.store(group="optimizer", name="optimizer_schema", node=schema.OptimizerConfig)
    cs.store(group="data", name="data_schema", node=schema.DataConfig)
    cs.store(group="train", name="train_schema", node=schema.TrainConfig)
    cs.store(group="sweep", name="sweep_schema", node=schema.SweepConfig)
    cs.store(group="tracking", name="tracking_schema", node=schema.TrackingConfig)
    cs.store(group="cluster", name="cluster_schema", node=schema.ClusterConfig)
    _done = True
