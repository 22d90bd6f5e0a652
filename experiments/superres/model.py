"""A small x2 (any integer r) super-resolution network whose learned upsampling layer is chosen by name.

ESPCN-like (Shi et al., 2016), at the scale of CIFAR-10's 32x32 images::

    x (N, 3, H, W) in [0, 1]
      -> conv 5x5 (3 -> width) + ReLU                         (head, plain nn.Conv2d)
      -> depth x [conv 3x3 (width -> width) + ReLU]           (body, layers.factory.make_conv(conv.variant))
      -> upsample (width -> width, x r) + ReLU                 (layers.upsample.make_upsample(upsample.variant))
      -> conv 3x3 (width -> 3)                                 (tail, at the high resolution)
      (+ bicubic(x, x r) when residual)
    -> (N, 3, H * r, W * r)

``residual=True`` (the default) adds bicubic interpolation of the input, so the network learns only
the detail bicubic misses (VDSR's global residual): the learned branch starts near zero, a short CPU
run already beats bicubic, and any periodic pattern in the output comes from the learned branch,
i.e. from the upsampling layer under study (bicubic interpolation itself has no r-periodic component
beyond the image's own). The input is centred (x - 0.5) before the head. The output is not clamped
(the loss sees it as is; metrics clamp to [0, 1]).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn


def upsample_label(upsample: Mapping[str, Any] | None) -> str:
    """The name a run of the upsampling study is reported under: the variant, ``subpixel_icnr`` for
    sub-pixel convolution with ICNR (the name of conf/upsample/subpixel_icnr.yaml)."""
    upsample = dict(upsample or {})
    variant = str(upsample.get("variant") or "subpixel")
    return f"{variant}_icnr" if variant == "subpixel" and upsample.get("icnr") else variant


def split_upsample_config(upsample: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(variant, options)`` for :func:`layers.upsample.make_upsample` from an ``upsample`` config
    (conf/upsample/*.yaml: ``variant`` plus options); ``None`` options are dropped (the factory's
    default applies)."""
    upsample = dict(upsample or {})
    variant = upsample.pop("variant", None) or "subpixel"
    if not isinstance(variant, str):
        raise TypeError(f"upsample.variant must be a variant name (str), got {type(variant).__name__}")
    return variant, {k: v for k, v in upsample.items() if v is not None}


class SRNet(nn.Module):
    """See the module docstring.

    Args:
        conv: the ``conv`` config of the body's 3x3 convolutions (``variant`` + options; None: standard).
        upsample: the ``upsample`` config (``variant`` in transposed / subpixel / resize_conv + options
            of :func:`layers.upsample.make_upsample`: ``kernel_size``, ``icnr``, ``mode``).
        scale: the upscaling factor r.
        width: channels of the feature maps.
        depth: 3x3 body convolutions between the head and the upsampling layer.
        residual: add bicubic interpolation of the input to the output.

    Shapes: input (N, 3, H, W), output (N, 3, H * scale, W * scale).
    """

    def __init__(self, conv: Mapping[str, Any] | None = None, upsample: Mapping[str, Any] | None = None,
                 scale: int = 2, width: int = 32, depth: int = 2, residual: bool = True, in_channels: int = 3):
        super().__init__()
        from layers.factory import make_conv, split_conv_config
        from layers.upsample import make_upsample

        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth!r}")
        conv_variant, conv_options = split_conv_config(conv)
        up_variant, up_options = split_upsample_config(upsample)
        self.scale, self.residual, self.in_channels = scale, bool(residual), in_channels
        self.conv_variant, self.upsample_variant = conv_variant, up_variant
        self.upsample_label = upsample_label(upsample)
        self.head = nn.Conv2d(in_channels, width, 5, padding=2)
        self.body = nn.ModuleList(make_conv(conv_variant, width, width, 3, bias=True, **conv_options)
                                  for _ in range(depth))
        self.upsample = make_upsample(up_variant, width, width, scale_factor=scale, **up_options)
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must be (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        y = F.relu(self.head(x - 0.5))
        for conv in self.body:
            y = F.relu(conv(y))
        y = self.tail(F.relu(self.upsample(y)))
        if self.residual:
            y = y + bicubic_upsample(x, self.scale)
        return y


def bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic interpolation (align_corners=False) of (N, C, H, W) to (N, C, H * scale, W * scale),
    not clamped."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
