"""Image-quality measures of the upsampling study: the checkerboard-artifact energy and log spectra.

Checkerboard energy (definition)
--------------------------------
An upsampling layer with stride r whose r x r output phases are computed by different weights
(transposed convolution with uneven kernel overlap, sub-pixel convolution without ICNR) leaves a
pattern with period r in the output: energy at the r-periodic frequencies of its 2-D spectrum, the
DFT bins ``(k * H / r, l * W / r)`` for ``k, l in 0..r-1`` except ``(0, 0)``; for r = 2 those are
``(pi, 0)``, ``(0, pi)`` and ``(pi, pi)``. For one image ``y`` (C, H, W), H and W multiples of r:

1. remove each channel's mean and multiply by a 2-D Hann window ``w(i, j) = h_H(i) * h_W(j)``
   (periodic Hann, ``torch.hann_window(n, periodic=True)``), so that the jump at the image border
   (the DFT treats the image as periodic) does not leak energy along the axes, where (0, pi) and
   (pi, 0) lie;
2. ``P(u, v) = sum_c |DFT(w * (y_c - mean(y_c)))(u, v)|^2``;
3. ``checkerboard(y) = sum of P over the bins within Chebyshev distance radius (cyclically) of an
   r-periodic frequency / sum of P over all bins``.

It is a fraction in [0, 1]: about 1 for a pure period-r pattern, about (the mask's bins / H*W) for
white noise (27 / 1024 for r = 2, radius 1, 32x32), near 0 for a smooth image. The neighbourhood
(``radius``, default 1) catches the window's spread of a periodic component to the adjacent bins
and patterns whose amplitude varies slowly across the image. A constant image has no energy: 0 is
returned. The study reports its mean over the test images for the network's output, the target
and bicubic interpolation (``val/checkerboard``, ``val/checkerboard_target``, ``val/checkerboard_bicubic``);
the output's excess over the target's is the artifact.

Mean log spectrum: ``log10(P(u, v) / (H * W) + 1e-10)`` of the same windowed, mean-removed image,
averaged over images, with the zero frequency moved to the centre (``torch.fft.fftshift``).
"""
from __future__ import annotations

import torch


def _windowed_power(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): the power spectrum summed over channels, of each channel
    mean-removed and Hann-windowed (float64, not shifted)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.to(torch.float64)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    h, w = x.shape[-2:]
    win = (torch.hann_window(h, periodic=True, dtype=torch.float64, device=x.device)[:, None]
           * torch.hann_window(w, periodic=True, dtype=torch.float64, device=x.device)[None, :])
    return torch.fft.fft2(x * win).abs().square().sum(dim=1)


def periodic_mask(height: int, width: int, r: int, radius: int = 1, device=None) -> torch.Tensor:
    """bool (height, width): the DFT bins (unshifted, bin (0, 0) = zero frequency) within Chebyshev
    distance ``radius`` (cyclic) of an r-periodic frequency ``(k * height / r, l * width / r)``,
    ``(k, l) != (0, 0)``."""
    if r < 2:
        raise ValueError(f"r must be >= 2 (no r-periodic frequency otherwise), got {r}")
    if height % r or width % r:
        raise ValueError(f"image size {height}x{width} is not a multiple of r={r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    for k in range(r):
        for l in range(r):
            if k == 0 and l == 0:
                continue
            u0, v0 = k * height // r, l * width // r
            for du in range(-radius, radius + 1):
                for dv in range(-radius, radius + 1):
                    mask[(u0 + du) % height, (v0 + dv) % width] = True
    return mask


def checkerboard_energy(images: torch.Tensor, r: int = 2, radius: int = 1) -> torch.Tensor:
    """The fraction of each image's spectral energy at the r-periodic frequencies (module docstring).

    Args:
        images (Tensor[N, C, H, W]): float images (any range; the study passes them clamped to [0, 1]);
            H and W multiples of ``r``.
        r: the upsampling factor whose period is measured.
        radius: neighbourhood of each periodic bin, in bins (Chebyshev, cyclic).
    Returns:
        Tensor[N] (float64) in [0, 1]; 0 for an image without energy (constant).
    """
    power = _windowed_power(images)
    mask = periodic_mask(power.shape[-2], power.shape[-1], r, radius, device=power.device)
    total = power.sum(dim=(-2, -1))
    periodic = (power * mask).sum(dim=(-2, -1))
    return torch.where(total > 0, periodic / total.clamp_min(1e-300), torch.zeros_like(total))


def log_spectrum(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) float64: ``log10(P / (H * W) + 1e-10)`` of each mean-removed,
    Hann-windowed image (power summed over channels), zero frequency at the centre (fftshift)."""
    power = _windowed_power(images)
    h, w = power.shape[-2:]
    return torch.fft.fftshift(torch.log10(power / (h * w) + 1e-10), dim=(-2, -1))
