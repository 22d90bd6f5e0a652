"""In-memory image data: batch loaders over uint8 tensors and batched augmentation on tensors."""
from __future__ import annotations

import math

import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class TensorBatchLoader:
    """Yields ``(images, labels)`` batches sliced from whole-set tensors (no per-sample work).

    ``shuffle`` draws a new permutation each epoch from ``seed`` and the epoch count, the same on
    every process, so ``rank``/``world_size`` take disjoint shards for data-parallel training.
    ``epoch`` (the next epoch's number) and ``skip_batches`` (batches of it already trained) let a
    resumed run continue with the same batches as an uninterrupted one.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        # batches of the next epoch to leave out: set when resuming from a checkpoint saved mid-epoch
        self.skip_batches = 0

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size if self.drop_last else math.ceil(n / self.world_size)
            if not self.drop_last:  # pad by wrapping so every rank sees the same number of samples
                idx = torch.cat([idx, idx[: per_rank * self.world_size - n]])
            idx = idx[self.rank: per_rank * self.world_size: self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self.labels)
        n = (n // self.world_size if self.drop_last else math.ceil(n / self.world_size)) if self.world_size > 1 else n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        idx = self._indices().to(self.images.device)
        self.epoch += 1
        skip, self.skip_batches = self.skip_batches, 0
        for b in range(skip, len(self)):
            i = idx[b * self.batch_size: (b + 1) * self.batch_size]
            yield self.images[i], self.labels[i]


def random_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip of an NCHW batch."""
    n, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (n,), device=dev, generator=generator)
        rows = (oy[:, None] + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (ox[:, None] + torch.arange(w, device=dev)).view(n, 1, 1, w)
        x = x[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1), rows, cols]
    if flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x


def normalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """uint8 NCHW -> float32, standardised per channel."""
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float().div_(255) - mean_t) / std_t
