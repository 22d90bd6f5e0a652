"""Deformable convolution (DCNv1 / DCNv2) and bilinear gather: custom ops, functionals, modules.

``deform_conv2d`` has exactly the signature and semantics of
``torchvision.ops.deform_conv2d``; ``DeformConv2d`` mirrors ``torchvision.ops.DeformConv2d``
(same constructor, parameters, init and state_dict). ``OffsetDeformConv2d`` predicts its own
offsets (and, modulated, its mask) with a zero-initialised regular convolution.

Shapes (torchvision's):
    input  (N, C_in, H, W)
    offset (N, 2 * offset_groups * KH * KW, OH, OW): (dy, dx) pairs, tap-major within an offset group
    weight (C_out, C_in / groups, KH, KW)
    mask   (N, offset_groups * KH * KW, OH, OW) or None (DCNv1)
    output (N, C_out, OH, OW), OH = (H + 2 * pad_h - dil_h * (KH - 1) - 1) // stride_h + 1

The ops run the Triton kernels (``torch.ops.convlab.*``) or a PyTorch reference, as
``layers.backend.resolve`` decides; the reference is torchvision's op (fp16 / bf16
computed in fp32 and cast back), or a plain-PyTorch gather when torchvision is absent.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import init
from torch.utils.flop_counter import register_flop_formula

from kernels import deform as _k
from kernels._common import SUPPORTED_DTYPES, accumulator_dtype

from . import backend as _backend
from ._checks import IntPair, pair, positive_int
from ._op import convlab_op


# --------------------------------------------------------------------------- custom ops
# triton_op on GPU (torch.compile sees the kernels); an opaque custom_op under the
# interpreter (see layers._op).
@convlab_op("convlab::deform_conv2d")
def _deform_conv2d_op(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                      stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    return _k.deform_conv2d_forward(input, offset, weight, bias, mask, stride, padding, dilation)


@convlab_op("convlab::deform_conv2d_data_grad")
def _deform_data_grad_op(grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor],
                         stride: List[int], padding: List[int], dilation: List[int]
                         ) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad offset, grad mask); grad mask is an empty tensor when mask is None."""
    return _k.deform_conv2d_data_grad(grad_output, input, offset, weight, mask, stride, padding, dilation)


@convlab_op("convlab::deform_conv2d_weight_grad")
def _deform_weight_grad_op(grad_output: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor],
                           weight_size: List[int], stride: List[int], padding: List[int],
                           dilation: List[int]) -> Tensor:
    return _k.deform_conv2d_weight_grad(grad_output, input, offset, mask, weight_size, stride, padding, dilation)


def _deform_setup(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.conf = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _deform_backward(ctx, grad_output):
    input, offset, weight, mask = ctx.saved_tensors
    stride, padding, dilation = ctx.conf
    need = ctx.needs_input_grad
    gi = go = gw = gb = gm = None
    if need[0] or need[1] or need[4]:
        gi, go, gm = torch.ops.convlab.deform_conv2d_data_grad(grad_output, input, offset, weight, mask, stride,
                                                               padding, dilation)
        gi, go = (gi if need[0] else None), (go if need[1] else None)
        gm = gm if (mask is not None and need[4]) else None
    if need[2]:
        gw = torch.ops.convlab.deform_conv2d_weight_grad(grad_output, input, offset, mask, list(weight.shape),
                                                         stride, padding, dilation)
    if ctx.has_bias and need[3]:
        gb = grad_output.sum((0, 2, 3), dtype=accumulator_dtype(grad_output.dtype)).to(grad_output.dtype)
    return gi, go, gw, gb, gm, None, None, None


_deform_conv2d_op.register_autograd(_deform_backward, setup_context=_deform_setup)


# FLOPs: the GEMM (2 * N * OH * OW * C_out * C_in / groups * KH * KW) plus the bilinear
# interpolation, counted as 7 FLOPs per sampled value (+1 with a mask) forward; the data
# gradient counts 20 per sampled value (scatter weights, coordinate weights, mask dot).
def _deform_counts(x_shape, w_shape, out_shape):
    n, c_in = x_shape[0], x_shape[1]
    c_out, cin_g, kh, kw = w_shape
    pixels = n * out_shape[-2] * out_shape[-1]
    return 2 * pixels * c_out * cin_g * kh * kw, pixels * c_in * kh * kw


@register_flop_formula(torch.ops.convlab.deform_conv2d)
def _deform_flops(x_shape, off_shape, w_shape, bias_shape, mask_shape, *args, out_shape, **kwargs):
    gemm, samples = _deform_counts(x_shape, w_shape, out_shape)
    return gemm + samples * (8 if mask_shape is not None else 7)


@register_flop_formula(torch.ops.convlab.deform_conv2d_data_grad)
def _deform_data_grad_flops(gy_shape, x_shape, off_shape, w_shape, mask_shape, *args, out_shape, **kwargs):
    gemm, samples = _deform_counts(x_shape, w_shape, gy_shape)
    return gemm + 20 * samples


@register_flop_formula(torch.ops.convlab.deform_conv2d_weight_grad)
def _deform_weight_grad_flops(gy_shape, x_shape, off_shape, mask_shape, weight_size, *args, out_shape, **kwargs):
    gemm, samples = _deform_counts(x_shape, list(weight_size), gy_shape)
    return gemm + samples * (8 if mask_shape is not None else 7)


# --------------------------------------------------------------------------- references
def _bilinear_reference(input: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Plain-PyTorch bilinear sampling: input (N, C, H, W); py, px (N, C or 1, L) pixel
    coordinates -> (N, C, L), corners outside the image contributing 0. A NaN coordinate reads
    nothing (index -2: every corner outside) and keeps a NaN weight, so the sample is NaN."""
    N, C, H, W = input.shape
    py = py.clamp(-2, H + 1)
    px = px.clamp(-2, W + 1)
    # NaN -> -2 before the float -> int conversion (NaN has no defined integer)
    y0, x0 = py.detach().floor().nan_to_num(-2.0), px.detach().floor().nan_to_num(-2.0)
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    flat = input.reshape(N, C, H * W)
    out = 0
    for yy, xx, wt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                       (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).expand(N, C, -1)
        out = out + torch.where(ok, torch.gather(flat, 2, idx), 0) * wt
    return out


def _deform_conv2d_plain(input, offset, weight, bias, mask, stride, padding, dilation):
    """Deformable convolution by explicit gather + matmul (used when torchvision is absent)."""
    N, C_in, H, W = input.shape
    C_out, cin_g, KH, KW = weight.shape
    OH, OW = offset.shape[-2:]
    groups, og = C_in // cin_g, offset.shape[1] // (2 * KH * KW)
    taps = KH * KW
    dev, dt = input.device, input.dtype
    kh = torch.arange(KH, device=dev).repeat_interleave(KW) * dilation[0]
    kw = torch.arange(KW, device=dev).repeat(KH) * dilation[1]
    oh = torch.arange(OH, device=dev) * stride[0] - padding[0]
    ow = torch.arange(OW, device=dev) * stride[1] - padding[1]
    base_y = (kh[:, None, None] + oh[None, :, None]).expand(taps, OH, OW).to(dt)
    base_x = (kw[:, None, None] + ow[None, None, :]).expand(taps, OH, OW).to(dt)
    off = offset.reshape(N, og, taps, 2, OH, OW)
    py = (base_y + off[:, :, :, 0]).reshape(N, og, 1, -1)
    px = (base_x + off[:, :, :, 1]).reshape(N, og, 1, -1)
    cpog = C_in // og
    x = input.reshape(N * og, cpog, H, W)
    cols = _bilinear_reference(x, py.reshape(N * og, 1, -1), px.reshape(N * og, 1, -1))
    cols = cols.reshape(N, og, cpog, taps, OH, OW)
    if mask is not None:
        cols = cols * mask.reshape(N, og, 1, taps, OH, OW)
    cols = cols.reshape(N, groups, cin_g * taps, OH * OW)
    w = weight.reshape(groups, C_out // groups, cin_g * taps)
    out = torch.einsum("gok,ngkp->ngop", w, cols).reshape(N, C_out, OH, OW)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _deform_conv2d_reference(input, offset, weight, bias, mask, stride, padding, dilation):
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
    except ImportError:  # pragma: no cover - torchvision is a test dependency
        return _deform_conv2d_plain(input, offset, weight, bias, mask, stride, padding, dilation)
    dtype = input.dtype
    if offset.device.type == "cpu" and not torch.compiler.is_compiling() and bool(offset.isnan().any()):
        # torchvision's CPU kernel converts a NaN position to an index (undefined; it crashes):
        # the plain gather defines it (the sample is NaN), in fp32 for fp16 / bf16 like the path below
        acc = accumulator_dtype(dtype)
        cast = lambda t: None if t is None else t.to(acc)
        return _deform_conv2d_plain(cast(input), cast(offset), cast(weight), cast(bias), cast(mask), stride,
                                    padding, dilation).to(dtype)
    if dtype in (torch.float16, torch.bfloat16):  # torchvision has no bf16, and fp16 would compute in fp16
        cast = lambda t: None if t is None else t.float()
        out = tv_deform_conv2d(input.float(), offset.float(), weight.float(), cast(bias), stride, padding, dilation,
                               cast(mask))
        return out.to(dtype)
    return tv_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


# --------------------------------------------------------------------------- argument checks
def _check_tensor(t, name: str, ref: Tensor, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a Tensor of shape {layout}, got {type(t).__name__}")
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} dtype must match input dtype {ref.dtype}, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on input's device {ref.device}, got {t.device}")


def _check_deform_args(input, offset, weight, bias, mask, stride, padding, dilation):
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a Tensor (N, C_in, H, W), got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C_in, H, W), got shape {tuple(input.shape)}")
    if input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"input dtype must be one of float16, bfloat16, float32, float64, got {input.dtype}")
    _check_tensor(weight, "weight", input, "(C_out, C_in / groups, KH, KW)")
    if weight.dim() != 4 or min(weight.shape) < 1:
        raise ValueError(f"weight must be 4-D (C_out, C_in / groups, KH, KW) with positive sizes, "
                         f"got shape {tuple(weight.shape)}")
    N, C_in, H, W = input.shape
    C_out, cin_g, KH, KW = weight.shape
    if C_in == 0 or C_in % cin_g:
        raise ValueError(f"input channels ({C_in}) must be a positive multiple of weight.shape[1] "
                         f"(C_in / groups = {cin_g}); got input {tuple(input.shape)}, weight {tuple(weight.shape)}")
    groups = C_in // cin_g
    if C_out % groups:
        raise ValueError(f"weight.shape[0] (output channels {C_out}) must be divisible by groups ({groups} = "
                         f"C_in {C_in} / weight.shape[1] {cin_g})")
    stride_, padding_, dilation_ = pair(stride, "stride", 1), pair(padding, "padding", 0), \
        pair(dilation, "dilation", 1)
    OH = (H + 2 * padding_[0] - dilation_[0] * (KH - 1) - 1) // stride_[0] + 1
    OW = (W + 2 * padding_[1] - dilation_[1] * (KW - 1) - 1) // stride_[1] + 1
    if OH <= 0 or OW <= 0:
        raise ValueError(f"input spatial size ({H}, {W}) with padding {padding_} is smaller than the dilated kernel "
                         f"({dilation_[0] * (KH - 1) + 1}, {dilation_[1] * (KW - 1) + 1})")
    _check_tensor(offset, "offset", input, "(N, 2 * offset_groups * KH * KW, OH, OW)")
    taps = KH * KW
    if offset.dim() != 4 or offset.shape[1] == 0 or offset.shape[1] % (2 * taps):
        raise ValueError(f"offset must have shape (N, 2 * offset_groups * KH * KW, OH, OW) = "
                         f"({N}, 2 * offset_groups * {taps}, {OH}, {OW}), got {tuple(offset.shape)}")
    og = offset.shape[1] // (2 * taps)
    if tuple(offset.shape) != (N, 2 * og * taps, OH, OW):
        raise ValueError(f"offset must have shape (N, 2 * offset_groups * KH * KW, OH, OW) = "
                         f"{(N, 2 * og * taps, OH, OW)}, got {tuple(offset.shape)}")
    if C_in % og:
        raise ValueError(f"input channels ({C_in}) must be divisible by offset_groups ({og} = offset.shape[1] "
                         f"{offset.shape[1]} / (2 * KH * KW))")
    if mask is not None:
        _check_tensor(mask, "mask", input, "(N, offset_groups * KH * KW, OH, OW)")
        if tuple(mask.shape) != (N, og * taps, OH, OW):
            raise ValueError(f"mask must have shape (N, offset_groups * KH * KW, OH, OW) = {(N, og * taps, OH, OW)}, "
                             f"got {tuple(mask.shape)}")
    if bias is not None:
        _check_tensor(bias, "bias", input, f"({C_out},)")
        if tuple(bias.shape) != (C_out,):
            raise ValueError(f"bias must have shape ({C_out},) (output channels), got {tuple(bias.shape)}")
    return stride_, padding_, dilation_


# --------------------------------------------------------------------------- functional
def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  mask: Optional[Tensor] = None) -> Tensor:
    """Deformable convolution v1 (``mask=None``) / v2, as ``torchvision.ops.deform_conv2d``.

    input (N, C_in, H, W); offset (N, 2 * offset_groups * KH * KW, OH, OW) holding (dy, dx) per
    kernel tap; weight (C_out, C_in / groups, KH, KW); bias (C_out,); mask
    (N, offset_groups * KH * KW, OH, OW). groups = C_in / weight.shape[1], offset_groups =
    offset.shape[1] / (2 * KH * KW). Returns (N, C_out, OH, OW). fp16 / bf16 / fp32 / fp64.
    """
    stride_, padding_, dilation_ = _check_deform_args(input, offset, weight, bias, mask, stride, padding, dilation)
    if _backend.resolve(input.device) == "reference":
        return _deform_conv2d_reference(input, offset, weight, bias, mask, stride_, padding_, dilation_)
    return torch.ops.convlab.deform_conv2d(input, offset, weight, bias, mask, stride_, padding_, dilation_)


# --------------------------------------------------------------------------- modules
class DeformConv2d(nn.Module):
    """``torchvision.ops.DeformConv2d`` (same arguments, parameters, init and state_dict) on
    convlab's kernels: ``forward(input, offset, mask=None)``, shapes as ``deform_conv2d``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(pair(kernel_size, "kernel_size", 1))
        self.stride = tuple(pair(stride, "stride", 1))
        self.padding = tuple(pair(padding, "padding", 0))
        self.dilation = tuple(pair(dilation, "dilation", 1))
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class OffsetDeformConv2d(nn.Module):
    """A deformable convolution that predicts its own offsets (DCNv1) or offsets and mask
    (``modulated=True``, DCNv2) from its input with a regular convolution ``conv_offset``
    of the same kernel size / stride / padding / dilation.

    ``conv_offset`` has 2 * offset_groups * KH * KW output channels (the offsets, as
    torchvision orders them), plus offset_groups * KH * KW when modulated (the mask logits,
    passed through a sigmoid). It is zero-initialised, so at init the offsets are 0: the
    v1 module equals a plain convolution with ``weight`` / ``bias``, and (DCNv2's
    convention) the mask is sigmoid(0) = 0.5 everywhere, i.e. the v2 module equals
    0.5 * (plain convolution without bias) + bias. ``weight`` / ``bias`` are initialised as
    ``nn.Conv2d``'s. The offset convolution runs on convlab's conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, offset_groups: int = 1,
                 bias: bool = True, modulated: bool = False):
        super().__init__()
        positive_int(offset_groups, "offset_groups")
        if in_channels % offset_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})")
        from .conv import Conv2d

        self.deform = DeformConv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.offset_groups = offset_groups
        self.modulated = modulated
        kh, kw = self.deform.kernel_size
        self._n_offset = 2 * offset_groups * kh * kw
        n_out = self._n_offset + (offset_groups * kh * kw if modulated else 0)
        self.conv_offset = Conv2d(in_channels, n_out, (kh, kw), self.deform.stride, self.deform.padding,
                                  self.deform.dilation, bias=True)
        self.reset_offset_parameters()

    @property
    def weight(self) -> nn.Parameter:
        return self.deform.weight

    @property
    def bias(self) -> Optional[nn.Parameter]:
        return self.deform.bias

    def reset_offset_parameters(self) -> None:
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: Tensor) -> Tensor:
        out = self.conv_offset(input)
        offset = out[:, :self._n_offset]
        mask = torch.sigmoid(out[:, self._n_offset:]) if self.modulated else None
        return self.deform(input, offset, mask)


__all__ = ["deform_conv2d", "DeformConv2d", "OffsetDeformConv2d"]
