"""CIFAR-10 pairs for super-resolution: the classification data module with its batches turned into
(low-resolution input, high-resolution target).

Loading (``root``, ImageFolder copies and their decoded cache, torchvision's format, the download, the
labelled synthetic fallback, resuming mid-epoch) is :class:`experiments.classification.data.CIFAR10DataModule`'s;
only the step after a batch reaches the device differs: the uint8 (N, 3, 32, 32) images become the
target ``hr`` (float in [0, 1]; when training with ``augment``, flipped horizontally at random; no
crop with zero padding, whose black borders a super-resolution network would learn) and the input
``lr = bicubic downsampling of hr by scale`` (``F.interpolate(..., mode="bicubic", antialias=True)``,
clamped to [0, 1]): (N, 3, 32 / scale, 32 / scale). The class labels are dropped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from experiments.classification.data import CIFAR10DataModule
from experiments.classification.data.tensors import random_crop_flip


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(N, C, H, W) float in [0, 1] -> (N, C, H / scale, W / scale): antialiased bicubic downsampling
    (PIL's ``Image.resize(..., BICUBIC)`` behaviour), clamped to [0, 1]. H and W must be multiples of
    ``scale``."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image size {h}x{w} is not a multiple of scale={scale}")
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp_(0.0, 1.0)


class SuperResDataModule(CIFAR10DataModule):
    """:class:`CIFAR10DataModule` whose batches are ``(lr (N, 3, H/scale, W/scale), hr (N, 3, H, W))``,
    both float32 in [0, 1]; see the module docstring. ``scale``: the downsampling factor (2); the other
    arguments are CIFAR10DataModule's."""

    def __init__(self, scale: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"data.scale must be a positive int, got {scale!r}")
        self.scale = scale

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, _ = batch
        if self.augment and self.trainer is not None and self.trainer.training:
            x = random_crop_flip(x, padding=0, flip=True)
        hr = x.float().div_(255)
        return bicubic_downsample(hr, self.scale), hr
