"""What each CLI subcommand does; cli.py only parses arguments."""
from __future__ import annotations

import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf


def format_metrics(m: dict, epochs: int | None = None) -> str:
    parts = [f"epoch {int(m['epoch']):>3}" + (f"/{epochs}" if epochs else "")]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc"):
        if key in m:
            value = f"{m[key] * 100:6.2f}%" if key.endswith("acc") else f"{m[key]:.4f}"
            parts.append(f"{key} {value}")
    if "epoch_seconds" in m:
        parts.append(f"{m['epoch_seconds']:.1f}s ({m['samples_per_second']:.0f} samples/s)")
    return "  ".join(parts)


def run_folder(output_dir: str, kind: str, label: str) -> Path:
    path = Path(output_dir) / kind / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_run(folder: Path, cfg, result) -> None:
    """config.yaml, metrics.csv, weights.pt and model_summary.txt of a finished run."""
    import torch

    from sweeplab.models.summary import summarize

    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result.history[0]))
        writer.writeheader()
        writer.writerows(result.history)
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, folder / "weights.pt")
    (folder / "model_summary.txt").write_text(summarize(result.model, result.input_shape) + "\n")
    (folder / "final_metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")


def cmd_train(args) -> int:
    from sweeplab.config.compose import compose
    from sweeplab.train import train, validate

    cfg = compose(args.overrides)
    validate(cfg)  # shapes and names, before any data is loaded
    folder = run_folder(cfg.output_dir, "train", f"{cfg.model.name}-{cfg.data.name}")
    print(f"sweeplab train: {cfg.model.name} on {cfg.data.name}, {cfg.optimizer.name} lr={cfg.optimizer.lr}, "
          f"{cfg.train.epochs} epochs, seed {cfg.train.seed} -> {folder}", flush=True)

    def report(metrics, _checkpoint):
        print(format_metrics(metrics, cfg.train.epochs), flush=True)

    result = train(cfg, reporter=report)
    save_run(folder, cfg, result)
    if cfg.tracking.enabled:
        from sweeplab.tracking.runs import log_single_run

        log_single_run(cfg, result, folder)
    final = result.metrics
    print(f"final: val/acc {final['val/acc'] * 100:.2f}%  val/loss {final['val/loss']:.4f}"
          + (f"  test/acc {final['test/acc'] * 100:.2f}%" if "test/acc" in final else "")
          + f"  params {result.num_params:,}  run folder {folder}")
    return 0


def _schema_defaults(schema) -> str:
    parts = []
    for f in dataclasses.fields(schema):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            default = {k.name: getattr(default, k.name) for k in dataclasses.fields(default)}
        parts.append(f"{f.name}={default}")
    return ", ".join(parts)


def cmd_models(args) -> int:
    from sweeplab.config.compose import conf_dir
    from sweeplab.models import MODELS
    from sweeplab.models.layers import ACTIVATIONS, POOLINGS, WEIGHT_INITS

    presets = {}
    for path in sorted((conf_dir() / "model").glob("*.yaml")):
        presets.setdefault(OmegaConf.load(path).get("name"), []).append(path.stem)
    for name in MODELS.names():
        entry = MODELS.get(name)
        print(f"{name:<15} {entry.description}")
        print(f"{'':<15} presets: model={', model='.join(presets.get(name, []))}")
        print(f"{'':<15} keys: {_schema_defaults(entry.schema)}")
    print(f"\nmodel.activation: {', '.join(ACTIVATIONS.names())}")
    print(f"model.pooling:    {', '.join(POOLINGS.names())}")
    print(f"model.weight_init: {', '.join(WEIGHT_INITS)}")
    return 0


def cmd_datasets(args) -> int:
    from sweeplab.data import DATASETS

    for name in DATASETS.names():
        e = DATASETS.get(name)
        where = "offline" if e.offline else "needs files under data.root (or data.download=true)"
        shape = "x".join(map(str, e.input_shape))
        print(f"{name:<14} {shape:<8} {e.num_classes} classes  {e.description}; {where}")
    return 0
