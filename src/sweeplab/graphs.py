"""A training step replayed from a CUDA graph: one launch per step instead of one per kernel.

A small network's step on a GPU is bound by the host launching its few dozen kernels (LeNet on the lent H200:
2.2 ms a step, the GPU idle most of it). ``StepGraph`` runs the first steps of an epoch as they are (on a side
stream, as PyTorch's whole-network capture asks: lazy state such as momentum buffers and cuDNN's choices is
made there), then captures one step and replays it for every batch of the warm-up's size after, copying each
batch into the captured inputs. A batch of another size (the epoch's last) runs as it is. Each epoch builds its
own graph, since a learning rate or a PBT value read as a Python number is fixed in a captured step.

Only steps whose optimizer can be captured qualify: torch.optim.SGD (it keeps no step count on the host) and
the fused packs' own SGD; Adam and AdamW count steps on the host unless built ``capturable``, and run eagerly.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

Step = Callable[[torch.Tensor, torch.Tensor], None]  # (images, labels): one training step, results kept on the device
WARM_UP_STEPS = 3  # the eager steps before a capture (PyTorch's whole-network example uses 3)


@dataclass
class Capture:
    """One training run's capturing, across its epochs' graphs: once one step was captured, the lazy state is made
    and a later epoch warms up with one step; once a capture failed, no later epoch tries again."""

    captured: bool = False
    failed: str | None = None  # why


def capturable(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer.step()`` may be captured: no param group holds ``capturable=False``."""
    return optimizer is None or all(group.get("capturable", True) for group in optimizer.param_groups)


class StepGraph:
    """Calls ``step`` for each batch, from a CUDA graph once ``warm_up`` eager steps of one batch size have run."""

    def __init__(self, step: Step, capture: Capture | None = None, warm_up: int | None = None) -> None:
        self.capture = capture or Capture()
        self.step = step
        self.warm_up = max(1, warm_up if warm_up is not None else 1 if self.capture.captured else WARM_UP_STEPS)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.shape: tuple[torch.Size, torch.Size] | None = None  # the batch size warmed up and captured

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        shape = (x.shape, y.shape)
        if self.capture.failed is not None or (self.shape is not None and shape != self.shape):
            self.step(x, y)  # another batch size: captured kernels would not fit it
        elif self.graph is not None and self.inputs is not None:
            static_x, static_y = self.inputs
            static_x.copy_(x)
            static_y.copy_(y)
            self.graph.replay()
        elif self.warm_up > 0:
            self.shape = shape
            self.warm_up -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(x, y)
            torch.cuda.current_stream().wait_stream(side)
        else:
            self._capture(x, y)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        inputs = (x.clone(), y.clone())
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph):
                self.step(*inputs)
        except RuntimeError as err:  # an op that syncs with the host, say: nothing ran, so run the step eagerly
            # a failed capture leaves the capture stream current (torch.cuda.graph ends the capture first)
            torch.cuda.set_stream(stream)
            cause = err.__context__ if isinstance(err.__context__, Exception) else err
            self.capture.failed = str(cause).strip().splitlines()[0]
            warnings.warn(f"train.cuda_graphs: this step cannot be captured in a CUDA graph ({self.capture.failed}); "
                          f"it runs eagerly for the rest of the run", RuntimeWarning, stacklevel=3)
            self.step(x, y)
            return
        self.graph, self.inputs = graph, inputs
        self.capture.captured = True
        graph.replay()  # capturing ran nothing: this batch trains now


def step_runner(step: Step, device: torch.device, enabled: bool, optimizer: torch.optim.Optimizer | None = None,
                capture: Capture | None = None) -> Step:
    """``step`` itself, or a StepGraph of it where the device is CUDA, ``enabled`` and the optimizer capturable;
    ``capture`` carries the run's capturing from one epoch's StepGraph to the next."""
    if enabled and device.type == "cuda" and capturable(optimizer) and (capture is None or capture.failed is None):
        return StepGraph(step, capture)
    return step


def finished(device: torch.device) -> None:
    """Return once ``device`` has run every step queued on it. A CUDA step (a graph's replay above all) returns as
    soon as it is queued, so an epoch's clock read without this counts the host's queueing, not the training."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
