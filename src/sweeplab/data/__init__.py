"""Datasets by name: ``load_dataset(cfg.data)`` and batch iteration on any device."""
from sweeplab.data.datasets import DATASETS, DatasetBundle, Split, load_dataset, stratified_split

__all__ = ["DATASETS", "DatasetBundle", "Split", "load_dataset", "stratified_split"]
