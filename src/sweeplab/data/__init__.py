"""Datasets by name: ``load_dataset(cfg.data)`` and batch iteration on any device."""
from sweeplab.data.datasets import (
    DATASETS,
    DatasetBundle,
    Split,
    dataset_entry,
    dataset_record,
    load_dataset,
    stratified_split,
)

__all__ = ["DATASETS", "DatasetBundle", "Split", "dataset_entry", "dataset_record", "load_dataset", "stratified_split"]
