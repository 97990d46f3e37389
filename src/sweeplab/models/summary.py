"""A model summary: each leaf layer with its output shape and parameter count."""
from __future__ import annotations

import torch
from torch import nn


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            def hook(mod, _inp, out, name=name):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else tuple(out[0].shape)
                params = sum(p.numel() for p in mod.parameters())
                rows.append((name, type(mod).__name__, "x".join(map(str, shape[1:])), params))
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen: dict[str, tuple] = {}
    for row in rows:  # recurrent layers fire once per time step: keep the first
        seen.setdefault(row[0], row)
    width = max(len(r[0]) for r in seen.values())
    lines = [f"{'layer':<{width}}  {'type':<14} {'output':>12} {'params':>10}"]
    lines += [f"{n:<{width}}  {t:<14} {s:>12} {p:>10,}" for n, t, s, p in seen.values()]
    total = sum(p.numel() for p in model.parameters())
    lines.append(f"input {'x'.join(map(str, input_shape))}, total parameters {total:,}")
    return "\n".join(lines)
