"""3-D convolution ops (standard, grouped, depthwise, dilated, transposed) and their modules.

The functional ops mirror ``F.conv3d`` / ``F.conv_transpose3d``: they check their arguments, then
run either the Triton custom ops (``torch.ops.convlab.conv3d*``) or the PyTorch reference, as the
backend switch (``layers.backend``) decides. Shapes: input (N, C_in, D, H, W) or unbatched
(C_in, D, H, W); weight (C_out, C_in / groups, KD, KH, KW) for conv3d and
(C_in, C_out / groups, KD, KH, KW) for conv_transpose3d. channels_last_3d input gives
channels_last_3d output.

Depthwise weights (C_in / groups == 1, groups == C_in) go to ``kernels.depthwise3d`` when that
module exists (``_use_depthwise3d`` is the one place that decides), else to the grouped GEMM.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from kernels import conv3d as _gemm3d
from kernels._common import SUPPORTED_DTYPES

from . import backend as _backend
from ._checks import triple
from ._op import convlab_op

IntTriple = Union[int, Sequence[int]]

#: the depthwise 3-D kernels (kernels/depthwise3d.py), or None while that module does not exist.
#: Looked up once at import (not inside the ops, which torch.compile traces); an error inside an
#: existing module is raised, not taken for its absence.
_DW3D = (importlib.import_module("kernels.depthwise3d") if importlib.util.find_spec("kernels.depthwise3d") is not None
         else None)


def _use_depthwise3d(weight_size: Sequence[int], in_channels: int, groups: int):
    """The module whose launchers (``depthwise3d_forward`` / ``_input_grad`` / ``_weight_grad``)
    run this convolution, or None for the grouped implicit GEMM: the depthwise kernels take
    weights (C_in * multiplier, 1, KD, KH, KW) with groups == C_in, when they are available."""
    if _DW3D is not None and weight_size[1] == 1 and in_channels == groups:
        return _DW3D
    return None


# --------------------------------------------------------------------------- argument checks
def _check_common(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int, transposed: bool):
    """Checks shared by conv3d and conv_transpose3d; returns (batched input, was_unbatched)."""
    op = "conv_transpose3d" if transposed else "conv3d"
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a Tensor, got {type(weight).__name__}")
    if input.dim() not in (4, 5):
        raise ValueError(f"input must be 5-D (N, C, D, H, W) or 4-D (C, D, H, W), got shape {tuple(input.shape)}")
    unbatched = input.dim() == 4
    if unbatched:
        input = input.unsqueeze(0)
    w_layout = "(C_in, C_out / groups, KD, KH, KW)" if transposed else "(C_out, C_in / groups, KD, KH, KW)"
    if weight.dim() != 5:
        raise ValueError(f"weight must be 5-D {w_layout}, got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"input dtype must be one of float16, bfloat16, float32, float64, got {input.dtype}")
    if weight.dtype != input.dtype:
        raise ValueError(f"weight dtype must match input dtype {input.dtype}, got {weight.dtype}")
    if weight.device != input.device:
        raise ValueError(f"weight must be on input's device {input.device}, got {weight.device}")
    c_in = input.shape[1]
    if c_in % groups:
        raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
    if transposed:
        if weight.shape[0] != c_in:
            raise ValueError(f"weight.shape[0] must equal input channels {c_in} for {op}, "
                             f"got weight shape {tuple(weight.shape)}")
        c_out = weight.shape[1] * groups
    else:
        if weight.shape[1] * groups != c_in:
            raise ValueError(f"weight.shape[1] must be C_in / groups = {c_in // groups} "
                             f"(input channels {c_in}, groups {groups}), got weight shape {tuple(weight.shape)}")
        if weight.shape[0] % groups:
            raise ValueError(f"weight.shape[0] (output channels {weight.shape[0]}) must be divisible by groups "
                             f"({groups})")
        c_out = weight.shape[0]
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (c_out,):
            shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape ({c_out},) (output channels), got {shape}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise ValueError(f"bias must have input's dtype {input.dtype} and device {input.device}, "
                             f"got {bias.dtype} on {bias.device}")
    return input, unbatched


def _same_padding(weight: Tensor, stride: List[int], dilation: List[int]):
    """(symmetric padding, extra padding at the end) that keeps D, H, W for padding='same'; an odd
    total goes one more at the end, as PyTorch pads."""
    if stride != [1, 1, 1]:
        raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[-3:])]
    return [t // 2 for t in total], [t % 2 for t in total]


# --------------------------------------------------------------------------- custom ops
@convlab_op("convlab::conv3d")
def _conv3d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
               dilation: List[int], groups: int) -> Tensor:
    dw = _use_depthwise3d(weight.shape, input.shape[1], groups)
    if dw is not None:
        return dw.depthwise3d_forward(input, weight, bias, stride, padding, dilation)
    return _gemm3d.conv3d_forward(input, weight, bias, stride, padding, dilation, groups)


@convlab_op("convlab::conv3d_input_grad")
def _conv3d_input_grad_op(grad_output: Tensor, weight: Tensor, bias: Optional[Tensor], input_size: List[int],
                          stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """dL/dinput of conv3d; with ``bias`` (C_in,) this is conv_transpose3d(grad_output, weight, bias)."""
    dw = _use_depthwise3d(weight.shape, input_size[1], groups)
    if dw is not None:
        return dw.depthwise3d_input_grad(grad_output, weight, input_size, stride, padding, dilation, bias)
    return _gemm3d.conv3d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups, bias)


@convlab_op("convlab::conv3d_weight_grad")
def _conv3d_weight_grad_op(input: Tensor, grad_output: Tensor, weight_size: List[int], stride: List[int],
                           padding: List[int], dilation: List[int], groups: int) -> Tensor:
    dw = _use_depthwise3d(weight_size, input.shape[1], groups)
    if dw is not None:
        return dw.depthwise3d_weight_grad(input, grad_output, weight_size, stride, padding, dilation)
    return _gemm3d.conv3d_weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups)


def _bias_grad(grad_output: Tensor) -> Tensor:
    acc = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
    return grad_output.sum((0, 2, 3, 4), dtype=acc).to(grad_output.dtype)


def _crop_to(out: Tensor, like: Tensor) -> Tensor:
    """``out`` cut to ``like``'s depth, height and width: the rows past the end that a
    conv_transpose3d with output_padding >= stride adds to the conv3d of its backward
    (see layers.conv._crop_to)."""
    d, h, w = like.shape[-3:]
    return out if out.shape[-3:] == (d, h, w) else out[..., :d, :h, :w]


def _conv3d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv3d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    gi = gw = gb = None
    if ctx.needs_input_grad[0]:
        gi = torch.ops.convlab.conv3d_input_grad(grad_output, weight, None, list(input.shape), stride, padding,
                                                 dilation, groups)
    if ctx.needs_input_grad[1]:
        gw = torch.ops.convlab.conv3d_weight_grad(input, grad_output, list(weight.shape), stride, padding,
                                                  dilation, groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad_output)
    return gi, gw, gb, None, None, None, None


_conv3d_op.register_autograd(_conv3d_backward, setup_context=_conv3d_setup)


def _input_grad_setup(ctx, inputs, output):
    grad_output, weight, bias, input_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _input_grad_backward(ctx, grad):
    # conv_transpose3d's backward: the roles of conv3d's forward and weight grad swap.
    grad_output, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    gg = gw = gb = None
    if ctx.needs_input_grad[0]:
        gg = _crop_to(torch.ops.convlab.conv3d(grad, weight, None, stride, padding, dilation, groups), grad_output)
    if ctx.needs_input_grad[1]:
        gw = torch.ops.convlab.conv3d_weight_grad(grad, grad_output, list(weight.shape), stride, padding,
                                                  dilation, groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad)
    return gg, gw, gb, None, None, None, None, None


_conv3d_input_grad_op.register_autograd(_input_grad_backward, setup_context=_input_grad_setup)


def _weight_grad_setup(ctx, inputs, output):
    input, grad_output, weight_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, grad_output)
    ctx.conf = (stride, padding, dilation, groups)


def _weight_grad_backward(ctx, grad):
    # <grad, weight_grad(x, gy)> = <conv3d(x, grad), gy>: bilinear in x and gy (double backward).
    input, grad_output = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    gx = ggy = None
    if ctx.needs_input_grad[0]:
        gx = torch.ops.convlab.conv3d_input_grad(grad_output, grad, None, list(input.shape), stride, padding,
                                                 dilation, groups)
    if ctx.needs_input_grad[1]:
        ggy = _crop_to(torch.ops.convlab.conv3d(input, grad, None, stride, padding, dilation, groups), grad_output)
    return gx, ggy, None, None, None, None, None


_conv3d_weight_grad_op.register_autograd(_weight_grad_backward, setup_context=_weight_grad_setup)


# FLOPs: 2 * N * OD * OH * OW * C_out * (C_in / groups) * KD * KH * KW for the forward and each gradient.
@register_flop_formula(torch.ops.convlab.conv3d)
def _conv3d_flops(x_shape, w_shape, bias_shape, stride, padding, dilation, groups, *, out_shape, **kwargs):
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


@register_flop_formula(torch.ops.convlab.conv3d_input_grad)
def _input_grad_flops(gy_shape, w_shape, bias_shape, input_size, *args, out_shape, **kwargs):
    return conv_flop_count(list(input_size), w_shape, gy_shape, transposed=False)


@register_flop_formula(torch.ops.convlab.conv3d_weight_grad)
def _weight_grad_flops(x_shape, gy_shape, weight_size, *args, out_shape, **kwargs):
    return conv_flop_count(x_shape, list(weight_size), gy_shape, transposed=False)


# --------------------------------------------------------------------------- functional
def conv3d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntTriple = 1,
           padding: Union[IntTriple, str] = 0, dilation: IntTriple = 1, groups: int = 1) -> Tensor:
    """3-D convolution, signature and semantics of ``torch.nn.functional.conv3d``.

    Args:
        input (Tensor[N, C_in, D, H, W] or Tensor[C_in, D, H, W]): NCDHW or channels_last_3d.
        weight (Tensor[C_out, C_in / groups, KD, KH, KW]).
        bias (Tensor[C_out] or None).
        stride, dilation: int or (d, h, w). padding: int, (d, h, w), "valid" or "same" (stride 1;
            an odd total padding puts the extra plane/row/column at the end, as PyTorch does).
        groups: C_in and C_out are split into this many groups.

    Returns:
        Tensor[N, C_out, OD, OH, OW] (unbatched in, unbatched out), in input's memory format, with
        OD = (D + 2 * pad_d - dil_d * (KD - 1) - 1) // stride_d + 1 and the same for OH, OW.
    """
    input, unbatched = _check_common(input, weight, bias, groups, transposed=False)
    stride_, dilation_ = triple(stride, "stride", 1), triple(dilation, "dilation", 1)
    extra = [0, 0, 0]
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0, 0]
        elif padding == "same":
            padding_, extra = _same_padding(weight, stride_, dilation_)
        else:
            raise ValueError(f"padding must be an int, a triple, 'valid' or 'same', got {padding!r}")
    else:
        padding_ = triple(padding, "padding", 0)
    if any(extra):  # the extra plane/row/column of an odd 'same' padding goes last
        input = F.pad(input, (0, extra[2], 0, extra[1], 0, extra[0]))
    for size, pad, dil, k, axis in zip(input.shape[-3:], padding_, dilation_, weight.shape[-3:],
                                       ("depth", "height", "width")):
        if size + 2 * pad < dil * (k - 1) + 1:
            raise ValueError(f"input {axis} {size} (padded {size + 2 * pad}) is smaller than the dilated kernel "
                             f"extent {dil * (k - 1) + 1}")
    if _backend.resolve(input.device) == "reference":
        out = F.conv3d(input, weight, bias, stride_, padding_, dilation_, groups)
    else:
        out = torch.ops.convlab.conv3d(input, weight, bias, stride_, padding_, dilation_, groups)
    return out.squeeze(0) if unbatched else out


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntTriple = 1,
                     padding: IntTriple = 0, output_padding: IntTriple = 0, groups: int = 1,
                     dilation: IntTriple = 1) -> Tensor:
    """Transposed 3-D convolution, signature of ``torch.nn.functional.conv_transpose3d``.

    Args:
        input (Tensor[N, C_in, D, H, W] or Tensor[C_in, D, H, W]): NCDHW or channels_last_3d.
        weight (Tensor[C_in, C_out / groups, KD, KH, KW]).
        bias (Tensor[C_out] or None).
        stride, padding, output_padding, dilation: int or (d, h, w); output_padding must be smaller
            than stride or dilation on each axis.

    Returns:
        Tensor[N, C_out, OD, OH, OW] with OD = (D - 1) * stride_d - 2 * pad_d + dil_d * (KD - 1)
        + out_pad_d + 1 (and the same for OH, OW), computed as the input gradient of the conv3d
        with the same weight.
    """
    input, unbatched = _check_common(input, weight, bias, groups, transposed=True)
    stride_, dilation_ = triple(stride, "stride", 1), triple(dilation, "dilation", 1)
    padding_, out_pad = triple(padding, "padding", 0), triple(output_padding, "output_padding", 0)
    for op_, s, d, axis in zip(out_pad, stride_, dilation_, ("depth", "height", "width")):
        if op_ >= max(s, d):
            raise ValueError(f"output_padding ({op_}) must be smaller than stride or dilation in {axis}, got "
                             f"stride {s}, dilation {d}")
    out_size = [(size - 1) * s - 2 * p + d * (k - 1) + op_ + 1 for size, s, p, d, k, op_ in
                zip(input.shape[-3:], stride_, padding_, dilation_, weight.shape[-3:], out_pad)]
    if min(out_size) <= 0:
        raise ValueError(f"conv_transpose3d output size would be {tuple(out_size)}; reduce padding {padding_}")
    if _backend.resolve(input.device) == "reference":
        out = F.conv_transpose3d(input, weight, bias, stride_, padding_, out_pad, groups, dilation_)
    else:
        c_out = weight.shape[1] * groups
        out = torch.ops.convlab.conv3d_input_grad(input, weight, bias, [input.shape[0], c_out, *out_size], stride_,
                                                  padding_, dilation_, groups)
    return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------- modules
class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same arguments, parameters and state_dict) running convlab's kernels; see
    :func:`conv3d`."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv3d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` (same arguments and state_dict) running convlab's kernels; see
    :func:`conv_transpose3d`."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """``output_size`` ((D, H, W), or with the leading batch/channel sizes) picks output_padding,
        as in ``nn.ConvTranspose3d.forward``."""
        if self.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for ConvTranspose3d, got {self.padding_mode!r}")
        num_spatial_dims = 3
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              num_spatial_dims, self.dilation)
        return conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation)


class DepthwiseSeparableConv3d(nn.Module):
    """Depthwise KxKxK convolution (``depth_multiplier`` filters per input channel) followed by a
    pointwise 1x1x1 convolution (no norm or activation between).

    (N, C_in, D, H, W) -> depthwise (N, C_in * depth_multiplier, OD, OH, OW) -> pointwise
    (N, C_out, OD, OH, OW).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple, stride: IntTriple = 1,
                 padding: Union[IntTriple, str] = 0, dilation: IntTriple = 1, bias: bool = True,
                 depth_multiplier: int = 1, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier < 1:
            raise ValueError(f"depth_multiplier must be a positive int, got {depth_multiplier!r}")
        mid = in_channels * depth_multiplier
        self.depthwise = Conv3d(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                                bias=False, padding_mode=padding_mode, device=device, dtype=dtype)
        self.pointwise = Conv3d(mid, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(input))


def r2plus1d_mid_channels(in_channels: int, out_channels: int, kernel_size: IntTriple) -> int:
    """Tran et al. (2018)'s width of the (2+1)-D block's intermediate space: the M for which a
    1 x k x k convolution to M channels and a t x 1 x 1 one to ``out_channels`` have the
    parameters of the full t x k x k convolution (rounded down):
    M = t * k_h * k_w * C_in * C_out // (k_h * k_w * C_in + t * C_out)."""
    t, kh, kw = triple(kernel_size, "kernel_size", 1)
    return max(1, (t * kh * kw * in_channels * out_channels) // (kh * kw * in_channels + t * out_channels))


class Conv2Plus1d(nn.Module):
    """(2+1)-D factorised 3-D convolution (R(2+1)D, Tran et al., 2018): a spatial 1 x KH x KW
    convolution to ``mid_channels`` followed by a temporal KD x 1 x 1 convolution; the
    spatio-temporal analogue of :class:`layers.SpatiallySeparableConv2d`.

    (N, C_in, D, H, W) -> (N, mid_channels, D, OH, OW) -> (N, C_out, OD, OH, OW). Stride, padding
    and dilation apply per axis: (1, s_h, s_w) in the spatial, (s_d, 1, 1) in the temporal one.
    ``mid_channels`` defaults to :func:`r2plus1d_mid_channels` (same parameter count as the full
    convolution). No norm or activation between (R(2+1)D puts BN + ReLU there: add them around);
    the bias sits on the temporal convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple, stride: IntTriple = 1,
                 padding: IntTriple = 0, dilation: IntTriple = 1, bias: bool = True,
                 mid_channels: Optional[int] = None, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        (kd, kh, kw) = triple(kernel_size, "kernel_size", 1)
        (sd, sh, sw), (pd, ph, pw) = triple(stride, "stride", 1), triple(padding, "padding", 0)
        (dd, dh, dw) = triple(dilation, "dilation", 1)
        mid = r2plus1d_mid_channels(in_channels, out_channels, (kd, kh, kw)) if mid_channels is None else mid_channels
        self.spatial = Conv3d(in_channels, mid, (1, kh, kw), (1, sh, sw), (0, ph, pw), (1, dh, dw), bias=False,
                              padding_mode=padding_mode, device=device, dtype=dtype)
        self.temporal = Conv3d(mid, out_channels, (kd, 1, 1), (sd, 1, 1), (pd, 0, 0), (dd, 1, 1), bias=bias,
                               padding_mode=padding_mode, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.temporal(self.spatial(input))


__all__ = ["conv3d", "conv_transpose3d", "Conv3d", "ConvTranspose3d", "DepthwiseSeparableConv3d", "Conv2Plus1d",
           "r2plus1d_mid_channels"]
