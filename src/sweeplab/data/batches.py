"""Mini-batches straight from in-memory tensors: no DataLoader workers to fork in
every trial, and the whole split can live on the GPU."""
from __future__ import annotations

from collections.abc import Iterator

import torch

from sweeplab.data.datasets import DatasetBundle, Split


def training_starts(n: int, batch_size: int) -> range:
    """Where each training batch of an epoch over ``n`` images starts: every ``batch_size`` images, but never a last
    batch of one image, which batch norm cannot normalise in training (one value per channel): that image waits for
    the next epoch's shuffle, as with DataLoader's drop_last, which drops the whole last batch."""
    return range(0, n - 1 if n > 1 and n % batch_size == 1 else n, batch_size)


# A run's splits are scaled and normalised once, as float32, where their float copies together take at most this:
# prepared batch by batch, the same elementwise passes ran again every epoch (B1's own overhead; docs/performance.md,
# "What keeps orchestration cheap"). Larger splits (CIFAR-10's, 0.74 GB as float32) stay uint8, a quarter of that.
PREPARED_ONCE_BYTES = 256 * 2**20


class BatchSource:
    """Batches of prepared images (scaled to [0, 1], normalised), prepared once where they fit
    (``PREPARED_ONCE_BYTES``), batch by batch otherwise; optional random crop + flip for training. Batches come in
    ``memory_format`` (the images held in it once; a crop and flip's output is laid out again)."""

    def __init__(self, bundle: DatasetBundle, device: torch.device, normalize: bool = True,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.device = device
        self.memory_format = memory_format
        self.scale = bundle.scale
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(bundle.mean if normalize else [0.0] * len(bundle.mean), device=device).view(shape)
        self.std = torch.tensor(bundle.std if normalize else [1.0] * len(bundle.std), device=device).view(shape)
        self.black = (0 - self.mean) / self.std  # a black pixel, prepared: what a crop pads with
        splits = [(name, s) for name, s in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
                  if s is not None]
        self.prepared_once = sum(s.images.numel() for _, s in splits) * 4 <= PREPARED_ONCE_BYTES
        self.splits = {name: Split(self._held(s.images), s.labels.to(device)) for name, s in splits}

    def _held(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, memory_format=self.memory_format)
        return self._prepare(images) if self.prepared_once else images

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled and normalised, elementwise (the same values whole or batch by batch), in a float copy changed in
        place: a whole split's preparation holds one float copy at a time."""
        prepared = images.to(torch.float32, copy=True)
        return prepared.mul_(self.scale).sub_(self.mean).div_(self.std)

    def take(self, split: str, idx: torch.Tensor | slice) -> torch.Tensor:
        """The prepared images of ``split`` at ``idx`` (positions, or a tensor of them of any shape)."""
        images = self.splits[split].images[idx]
        return images if self.prepared_once else self._prepare(images)

    def batches(
        self, split: str, batch_size: int, generator: torch.Generator | None = None, augment: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled when a generator is given (training: ``training_starts``), in order otherwise."""
        data = self.splits[split]
        n = len(data)
        order = torch.randperm(n, generator=generator).to(self.device) if generator is not None else None
        for start in training_starts(n, batch_size) if order is not None else range(0, n, batch_size):
            idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            x = self.take(split, idx)
            if augment:
                x = random_crop_flip(x, generator, self.black).contiguous(memory_format=self.memory_format)
            yield x, data.labels[idx]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, fill: torch.Tensor,
                     pad: int = 4) -> torch.Tensor:
    """CIFAR augmentation of prepared images: padded by 4 pixels of ``fill`` (a black pixel prepared, one value per
    channel: torchvision pads the image with black before it normalises), cropped back at a random offset, half the
    images flipped."""
    b, c, h, w = x.shape
    padded = fill.to(x.dtype).expand(b, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).tolist()
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return torch.where(flip.to(x.device).view(b, 1, 1, 1), out.flip(-1), out)
