"""A procedurally generated, learnable 10-class image set (the fallback when CIFAR-10 is missing).

Each class is a pattern drawn at a random position and scale, with random colours around a
class hue, over a random background, plus pixel noise:

0 disc · 1 square · 2 ring · 3 horizontal stripes · 4 vertical stripes · 5 diagonal stripes ·
6 checkerboard · 7 cross · 8 triangle · 9 Gaussian blob

Deterministic for a given ``seed``; returns uint8 NCHW tensors like the CIFAR-10 loaders.
"""
from __future__ import annotations

import math

import torch

CLASSES = ("disc", "square", "ring", "h_stripes", "v_stripes", "d_stripes", "checker", "cross",
           "triangle", "blob")


def make_synthetic(n: int, seed: int = 0, size: int = 32, noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of shape (3, size, size), uint8, and int64 labels 0..9 (balanced, shuffled)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    coords = torch.linspace(-1.0, 1.0, size)
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    cy, cx = u(-0.35, 0.35, 1, 1), u(-0.35, 0.35, 1, 1)
    r = u(0.3, 0.6, 1, 1)
    dy, dx = yy - cy, xx - cx
    freq = u(2.5, 4.5, 1, 1) * math.pi / r.clamp(min=0.3) * 0.5
    phase = u(0, 2 * math.pi, 1, 1)

    shapes = (
        lambda dy, dx, r, f, p: dy ** 2 + dx ** 2 <= r ** 2,                                   # disc
        lambda dy, dx, r, f, p: (dy.abs() <= r * 0.85) & (dx.abs() <= r * 0.85),               # square
        lambda dy, dx, r, f, p: ((dy ** 2 + dx ** 2).sqrt() - r).abs() <= 0.12,                # ring
        lambda dy, dx, r, f, p: torch.sin(yy * f * 2 + p).expand_as(dy * dx) > 0,              # h stripes
        lambda dy, dx, r, f, p: torch.sin(xx * f * 2 + p).expand_as(dy * dx) > 0,              # v stripes
        lambda dy, dx, r, f, p: torch.sin((xx + yy) * f * 1.5 + p) > 0,                        # d stripes
        lambda dy, dx, r, f, p: torch.sin(xx * f * 1.5 + p) * torch.sin(yy * f * 1.5) > 0,     # checker
        lambda dy, dx, r, f, p: ((dy.abs() <= 0.12) & (dx.abs() <= r))
                                | ((dx.abs() <= 0.12) & (dy.abs() <= r)),                      # cross
        lambda dy, dx, r, f, p: (dy <= r * 0.7) & (dy >= -r) & (dx.abs() <= (dy + r) * 0.6),   # triangle
        lambda dy, dx, r, f, p: torch.exp(-(dy ** 2 + dx ** 2) / (2 * (r * 0.5) ** 2)),        # blob
    )
    mask = torch.empty(n, 1, size, size)
    for c, shape in enumerate(shapes):
        i = (labels == c).nonzero().squeeze(1)
        mask[i, 0] = shape(dy[i], dx[i], r[i], freq[i], phase[i]).float()

    # foreground: class hue with jitter; background: random dull colour
    hue = labels.float() / len(CLASSES) + u(-0.15, 0.15)
    angles = 2 * math.pi * (hue.view(n, 1) + torch.tensor([0.0, 1 / 3, 2 / 3]))
    fg = (0.5 + 0.4 * torch.cos(angles)) * u(0.7, 1.0, 1)
    bg = u(0.0, 0.5, 3) * u(0.3, 1.0, 1)
    img = mask * fg.view(n, 3, 1, 1) + (1 - mask) * bg.view(n, 3, 1, 1)
    img = img + noise * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels.long()
