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

from typing import Callable, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from kernels import conv2d as _gemm

from . import backend as _backend
from ._op import convlab_op
from .conv import Conv2d, ConvTranspose2d, _check_common

UPSAMPLE_VARIANTS = ("transposed", "subpixel", "resize_conv")


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------- custom ops
# padding is (top, bottom, left, right); the ops take the shuffled (N, C, OH * r, OW * r) tensors.
@convlab_op("convlab::subpixel_conv2d")
def _subpixel_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], upscale_factor: int,
                 padding: List[int]) -> Tensor:
    return _gemm.subpixel_conv2d_forward(input, weight, bias, upscale_factor, padding)


@convlab_op("convlab::subpixel_conv2d_input_grad")
def _subpixel_input_grad_op(grad_output: Tensor, weight: Tensor, input_size: List[int], upscale_factor: int,
                            padding: List[int]) -> Tensor:
    return _gemm.subpixel_conv2d_input_grad(grad_output, weight, input_size, upscale_factor, padding)


@convlab_op("convlab::subpixel_conv2d_weight_grad")
def _subpixel_weight_grad_op(input: Tensor, grad_output: Tensor, weight_size: List[int], upscale_factor: int,
                             padding: List[int]) -> Tensor:
    return _gemm.subpixel_conv2d_weight_grad(input, grad_output, weight_size, upscale_factor, padding)


def _subpixel_bias_grad(grad_output: Tensor, r: int) -> Tensor:
    """(N, C, OH * r, OW * r) -> (C * r^2,): the sum over each conv channel's pixels, fp32 (fp64) accumulated."""
    n, c, h, w = grad_output.shape
    acc = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
    return grad_output.reshape(n, c, h // r, r, w // r, r).sum((0, 2, 4), dtype=acc).reshape(c * r * r).to(
        grad_output.dtype)


def _subpixel_setup(ctx, inputs, output):
    input, weight, bias, r, padding = inputs
    ctx.save_for_backward(input, weight)
    ctx.conf = (r, padding)
    ctx.has_bias = bias is not None


def _subpixel_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    r, padding = ctx.conf
    gi = gw = gb = None
    if ctx.needs_input_grad[0]:
        gi = torch.ops.convlab.subpixel_conv2d_input_grad(grad, weight, list(input.shape), r, padding)
    if ctx.needs_input_grad[1]:
        gw = torch.ops.convlab.subpixel_conv2d_weight_grad(input, grad, list(weight.shape), r, padding)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _subpixel_bias_grad(grad, r)
    return gi, gw, gb, None, None


_subpixel_op.register_autograd(_subpixel_backward, setup_context=_subpixel_setup)


# Both gradients are bilinear in their two tensor arguments; their own gradients (double backward)
# are the forward and the other gradient, as for conv2d.
def _input_grad_setup(ctx, inputs, output):
    grad_output, weight, input_size, r, padding = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.conf = (r, padding)


def _input_grad_backward(ctx, grad):
    grad_output, weight = ctx.saved_tensors
    r, padding = ctx.conf
    ggy = gw = None
    if ctx.needs_input_grad[0]:
        ggy = torch.ops.convlab.subpixel_conv2d(grad, weight, None, r, padding)
    if ctx.needs_input_grad[1]:
        gw = torch.ops.convlab.subpixel_conv2d_weight_grad(grad, grad_output, list(weight.shape), r, padding)
    return ggy, gw, None, None, None


_subpixel_input_grad_op.register_autograd(_input_grad_backward, setup_context=_input_grad_setup)


def _weight_grad_setup(ctx, inputs, output):
    input, grad_output, weight_size, r, padding = inputs
    ctx.save_for_backward(input, grad_output)
    ctx.conf = (r, padding)


def _weight_grad_backward(ctx, grad):
    input, grad_output = ctx.saved_tensors
    r, padding = ctx.conf
    gx = ggy = None
    if ctx.needs_input_grad[0]:
        gx = torch.ops.convlab.subpixel_conv2d_input_grad(grad_output, grad, list(input.shape), r, padding)
    if ctx.needs_input_grad[1]:
        ggy = torch.ops.convlab.subpixel_conv2d(input, grad, None, r, padding)
    return gx, ggy, None, None, None


_subpixel_weight_grad_op.register_autograd(_weight_grad_backward, setup_context=_weight_grad_setup)


def _conv_shape(shuffled, r: int) -> list:
    """(N, C, OH * r, OW * r) -> the convolution's output shape (N, C * r^2, OH, OW)."""
    n, c, h, w = shuffled
    return [n, c * r * r, h // r, w // r]


# FLOPs: those of the convolution (the shuffle is data movement).
@register_flop_formula(torch.ops.convlab.subpixel_conv2d)
def _subpixel_flops(x_shape, w_shape, bias_shape, r, padding, *, out_shape, **kwargs):
    return conv_flop_count(x_shape, w_shape, _conv_shape(out_shape, r), transposed=False)


@register_flop_formula(torch.ops.convlab.subpixel_conv2d_input_grad)
def _subpixel_input_grad_flops(gy_shape, w_shape, input_size, r, padding, *, out_shape, **kwargs):
    return conv_flop_count(list(input_size), w_shape, _conv_shape(gy_shape, r), transposed=False)


@register_flop_formula(torch.ops.convlab.subpixel_conv2d_weight_grad)
def _subpixel_weight_grad_flops(x_shape, gy_shape, weight_size, r, padding, *, out_shape, **kwargs):
    return conv_flop_count(x_shape, list(weight_size), _conv_shape(gy_shape, r), transposed=False)


# --------------------------------------------------------------------------- functional
def _subpixel_padding(padding, kh: int, kw: int) -> List[int]:
    """padding ('same', 'valid', int) -> [top, bottom, left, right]; 'same' puts the odd extra row /
    column last, as F.conv2d does for even kernels."""
    if padding == "same":
        return [(kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2]
    if padding == "valid":
        return [0, 0, 0, 0]
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be 'same', 'valid' or a non-negative int, got {padding!r}")
    return [padding] * 4


def subpixel_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], upscale_factor: int,
                    padding: Union[int, str] = "same") -> Tensor:
    """Sub-pixel convolution: ``F.pixel_shuffle(F.conv2d(input, weight, bias, 1, padding), r)``.

    Args:
        input (Tensor[N, C_in, H, W] or Tensor[C_in, H, W])
        weight (Tensor[C_out * r**2, C_in, KH, KW]): conv channel ``c * r**2 + i * r + j`` becomes
            pixel ``(h * r + i, w * r + j)`` of output channel ``c``
        bias (Tensor[C_out * r**2] or None)
        upscale_factor (int): r >= 1
        padding ('same' (default), 'valid' or int): of the stride-1 convolution; 'same' with an even
            kernel pads the extra row / column at the bottom / right, as F.conv2d

    Returns:
        Tensor[N, C_out, OH * r, OW * r] (OH = H for 'same'), channels_last if ``input`` is.

    The Triton backend writes the convolution's output straight into the shuffled layout (one
    kernel; no (N, C_out * r**2, OH, OW) tensor); the reference backend runs the composition.
    """
    r = _check_positive(upscale_factor, "upscale_factor")
    if isinstance(weight, Tensor) and (weight.dim() != 4 or weight.shape[0] % (r * r)):
        raise ValueError(f"weight must be 4-D (C_out * upscale_factor**2, C_in, KH, KW) with upscale_factor={r}, "
                         f"got shape {tuple(weight.shape)}")
    input, unbatched = _check_common(input, weight, bias, 1, transposed=False)
    pad = _subpixel_padding(padding, *weight.shape[-2:])
    H, W = input.shape[-2:]
    KH, KW = weight.shape[-2:]
    if H + pad[0] + pad[1] < KH or W + pad[2] + pad[3] < KW:
        raise ValueError(f"input size ({H}, {W}) padded by {padding!r} is smaller than the kernel ({KH}, {KW})")
    if _backend.resolve(input.device) == "reference":
        out = F.pixel_shuffle(F.conv2d(input, weight, bias, 1, padding), r)
    else:
        out = torch.ops.convlab.subpixel_conv2d(input, weight, bias, r, pad)
    return out.squeeze(0) if unbatched else out


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
    channels and a periodic shuffle to (N, out_channels, H * r, W * r); see :func:`subpixel_conv2d`.

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
