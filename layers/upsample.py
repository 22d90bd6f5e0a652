"""Learned upsampling layers: sub-pixel convolution (ESPCN), transposed convolution, resize-conv.

:func:`make_upsample` builds any of them by name, as :func:`layers.factory.make_conv` does for the
3x3 convolution variants. Every variant maps (N, in_channels, H, W) to
(N, out_channels, H * r, W * r), r = ``scale_factor``.

Sub-pixel convolution (Shi et al., 2016) is a convolution to ``out_channels * r**2`` channels
followed by a periodic shuffle (``F.pixel_shuffle``): output channel ``c * r**2 + i * r + j`` of the
convolution lands at pixel ``(h * r + i, w * r + j)`` of channel ``c``. ICNR initialisation (Aitken
et al., 2017) gives the ``r**2`` convolution channels that feed one output channel the same kernel,
so at initialisation the layer equals a nearest-neighbour upsampling of a plain convolution and
shows no checkerboard.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import Conv2d, ConvTranspose2d, conv2d

UPSAMPLE_VARIANTS = ("transposed", "subpixel", "resize_conv")


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def subpixel_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], upscale_factor: int,
                    padding: Union[int, str] = "same") -> Tensor:
    """Convolution followed by a pixel shuffle: ``F.pixel_shuffle(conv2d(input, weight, bias, 1, padding), r)``.

    input: (N, C_in, H, W); weight: (C_out * r**2, C_in, KH, KW); bias: (C_out * r**2,) or None.
    Returns (N, C_out, OH * r, OW * r), OH/OW the convolution's output size (H/W for 'same').
    """
    r = _check_positive(upscale_factor, "upscale_factor")
    if weight.dim() != 4 or weight.shape[0] % (r * r):
        raise ValueError(f"weight must be 4-D (C_out * upscale_factor**2, C_in, KH, KW) with upscale_factor={r}, "
                         f"got shape {tuple(weight.shape)}")
    return F.pixel_shuffle(conv2d(input, weight, bias, 1, padding), r)


def icnr_(weight: Tensor, upscale_factor: int,
          init: Callable[[Tensor], object] = nn.init.kaiming_normal_) -> Tensor:
    """ICNR initialisation, in place: ``init`` a (C_out, C_in, KH, KW) kernel, then give it to each of
    the ``r**2`` sub-pixel channels ``c * r**2 + k`` of every output channel c.

    weight: (C_out * r**2, C_in, KH, KW). Returns ``weight``.
    """
    r = _check_positive(upscale_factor, "upscale_factor")
    if weight.dim() != 4 or weight.shape[0] % (r * r):
        raise ValueError(f"weight must be 4-D (C_out * upscale_factor**2, C_in, KH, KW) with upscale_factor={r}, "
                         f"got shape {tuple(weight.shape)}")
    sub = torch.empty((weight.shape[0] // (r * r),) + tuple(weight.shape[1:]), dtype=weight.dtype,
                      device=weight.device)
    init(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(r * r, dim=0))
    return weight


class SubPixelConv2d(nn.Module):
    """Sub-pixel convolution: a ``kernel_size`` convolution to ``out_channels * upscale_factor**2``
    channels and a periodic shuffle to (N, out_channels, H * r, W * r).

    ``out_channels`` counts channels after the shuffle. ``padding="same"`` (default) keeps H, W before
    the shuffle; an int pads symmetrically. ``icnr=True`` initialises the weight with ICNR and the bias
    to zero. Parameters: ``weight`` (out_channels * r**2, in_channels, k, k), ``bias`` (out_channels * r**2,).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, upscale_factor: int,
                 padding: Union[int, str] = "same", bias: bool = True, icnr: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.in_channels = _check_positive(in_channels, "in_channels")
        self.out_channels = _check_positive(out_channels, "out_channels")
        self.kernel_size = _check_positive(kernel_size, "kernel_size")
        self.upscale_factor = _check_positive(upscale_factor, "upscale_factor")
        if not (padding in ("same", "valid") or (isinstance(padding, int) and not isinstance(padding, bool)
                                                 and padding >= 0)):
            raise ValueError(f"padding must be 'same', 'valid' or a non-negative int, got {padding!r}")
        self.padding = padding
        self.icnr = bool(icnr)
        r2 = self.upscale_factor ** 2
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_channels * r2, in_channels, kernel_size, kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels * r2, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default initialisation, or ICNR (zero bias: a constant per sub-pixel keeps the
        # r x r blocks uniform too, but zero is what the paper's networks use)
        tmp = nn.Conv2d(self.in_channels, self.out_channels * self.upscale_factor ** 2, self.kernel_size,
                        bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            if self.icnr:
                icnr_(self.weight, self.upscale_factor)
                if self.bias is not None:
                    self.bias.zero_()
            else:
                self.weight.copy_(tmp.weight)
                if self.bias is not None:
                    self.bias.copy_(tmp.bias)

    def forward(self, input: Tensor) -> Tensor:
        return subpixel_conv2d(input, self.weight, self.bias, self.upscale_factor, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"upscale_factor={self.upscale_factor}, padding={self.padding!r}, bias={self.bias is not None}, "
                f"icnr={self.icnr}")


def _transposed_padding(kernel_size: int, r: int) -> tuple[int, int]:
    """(padding, output_padding) that make a stride-r transposed convolution exactly r times larger:
    (H - 1) * r - 2 * p + k + op = H * r, i.e. 2 * p - op = k - r."""
    if kernel_size < r:
        raise ValueError(f"transposed upsampling needs kernel_size >= scale_factor, got {kernel_size} < {r}")
    p = (kernel_size - r + 1) // 2
    op = 2 * p - (kernel_size - r)
    if op >= r:  # only when r == 1 and kernel_size is even: no symmetric padding gives H
        raise ValueError(f"transposed upsampling with scale_factor={r} needs an odd kernel_size, got {kernel_size}")
    return p, op


def make_upsample(variant: str, in_channels: int, out_channels: int, scale_factor: int = 2,
                  kernel_size: Optional[int] = None, bias: bool = True, icnr: bool = False,
                  mode: str = "nearest") -> nn.Module:
    """Build the learned upsampling layer ``variant`` mapping (N, in_channels, H, W) to
    (N, out_channels, H * r, W * r), r = ``scale_factor``.

    - ``"subpixel"``: :class:`SubPixelConv2d` (``kernel_size`` default 3, 'same' padding; ``icnr``).
    - ``"transposed"``: ``ConvTranspose2d`` with stride r (``kernel_size`` default 2 * r, 3 for r = 1, padding and
      output_padding chosen for an exact r-times output).
    - ``"resize_conv"``: ``nn.Upsample(scale_factor=r, mode=mode)`` then a 'same' ``kernel_size``
      convolution (default 3), as in Odena et al. (2016).

    ``icnr`` applies to ``"subpixel"`` only; ``mode`` to ``"resize_conv"`` only.
    """
    r = _check_positive(scale_factor, "scale_factor")
    _check_positive(in_channels, "in_channels")
    _check_positive(out_channels, "out_channels")
    if variant not in UPSAMPLE_VARIANTS:
        raise ValueError(f"unknown upsampling variant {variant!r}; valid variants: {', '.join(UPSAMPLE_VARIANTS)}")
    if icnr and variant != "subpixel":
        raise ValueError(f"icnr=True applies to the 'subpixel' variant only, got variant {variant!r}")
    if mode != "nearest" and variant != "resize_conv":
        raise ValueError(f"mode={mode!r} applies to the 'resize_conv' variant only, got variant {variant!r}")
    if variant == "subpixel":
        return SubPixelConv2d(in_channels, out_channels, kernel_size or 3, r, padding="same", bias=bias, icnr=icnr)
    if variant == "transposed":
        k = kernel_size or (2 * r if r > 1 else 3)
        p, op = _transposed_padding(k, r)
        return ConvTranspose2d(in_channels, out_channels, k, stride=r, padding=p, output_padding=op, bias=bias)
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"mode must be 'nearest', 'bilinear' or 'bicubic', got {mode!r}")
    k = kernel_size or 3
    align = None if mode == "nearest" else False
    return nn.Sequential(nn.Upsample(scale_factor=r, mode=mode, align_corners=align),
                         Conv2d(in_channels, out_channels, k, padding="same", bias=bias))
