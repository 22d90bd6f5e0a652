"""2-D convolution ops (standard, grouped, depthwise, dilated, transposed) and their modules.

The functional ops mirror ``F.conv2d`` / ``F.conv_transpose2d``; they check their arguments,
then run either the Triton custom ops (``torch.ops.convlab.*``) or the PyTorch reference,
as the backend switch (``layers.backend``) decides. Shapes: input (N, C_in, H, W) or
unbatched (C_in, H, W); weight (C_out, C_in / groups, KH, KW) for conv2d and
(C_in, C_out / groups, KH, KW) for conv_transpose2d. channels_last input gives
channels_last output.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from kernels import conv2d as _gemm
from kernels import depthwise as _dw
from kernels._common import SUPPORTED_DTYPES

from . import backend as _backend
from ._checks import IntPair, pair, positive_int
from ._op import convlab_op


# --------------------------------------------------------------------------- argument checks
def _check_common(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int, transposed: bool):
    """Checks shared by conv2d and conv_transpose2d; returns (batched input, was_unbatched)."""
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a Tensor, got {type(weight).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(input.shape)}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    w_layout = "(C_in, C_out / groups, KH, KW)" if transposed else "(C_out, C_in / groups, KH, KW)"
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D {w_layout}, got shape {tuple(weight.shape)}")
    positive_int(groups, "groups")
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
            raise ValueError(f"weight.shape[0] must equal input channels {c_in} for conv_transpose2d, "
                             f"got weight shape {tuple(weight.shape)}")
        c_out = weight.shape[1] * groups
    else:
        if weight.shape[1] * groups != c_in:
            raise ValueError(f"weight.shape[1] must be C_in / groups = {c_in // groups} "
                             f"(input channels {c_in}, groups {groups}), got weight shape {tuple(weight.shape)}")
        if weight.shape[0] % groups:
            raise ValueError(f"weight.shape[0] (output channels {weight.shape[0]}) must be divisible by groups ({groups})")
        c_out = weight.shape[0]
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.shape != (c_out,):
            shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must have shape ({c_out},) (output channels), got {shape}")
        if bias.dtype != input.dtype or bias.device != input.device:
            raise ValueError(f"bias must have input's dtype {input.dtype} and device {input.device}, "
                             f"got {bias.dtype} on {bias.device}")
    return input, unbatched


def _same_padding(weight: Tensor, stride, dilation):
    """(symmetric padding, extra right/bottom padding) that keeps H, W for padding='same'."""
    if stride != [1, 1]:
        raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[-2:])]
    return [t // 2 for t in total], [t % 2 for t in total]


# --------------------------------------------------------------------------- custom ops
@convlab_op("convlab::conv2d")
def _conv2d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
               dilation: List[int], groups: int) -> Tensor:
    if _backend.conv2d_kernel(input.shape[1], weight.shape, groups) == "depthwise":
        return _dw.depthwise_forward(input, weight, bias, stride, padding, dilation)
    return _gemm.conv2d_forward(input, weight, bias, stride, padding, dilation, groups)


@convlab_op("convlab::conv2d_input_grad")
def _conv2d_input_grad_op(grad_output: Tensor, weight: Tensor, bias: Optional[Tensor], input_size: List[int],
                          stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Tensor:
    """dL/dinput of conv2d; with ``bias`` (C_in,) this is conv_transpose2d(grad_output, weight, bias)."""
    if _backend.conv2d_kernel(input_size[1], weight.shape, groups) == "depthwise":
        return _dw.depthwise_input_grad(grad_output, weight, input_size, stride, padding, dilation, bias)
    return _gemm.conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups, bias)


@convlab_op("convlab::conv2d_weight_grad")
def _conv2d_weight_grad_op(input: Tensor, grad_output: Tensor, weight_size: List[int], stride: List[int],
                           padding: List[int], dilation: List[int], groups: int) -> Tensor:
    if _backend.conv2d_kernel(input.shape[1], weight_size, groups) == "depthwise":
        return _dw.depthwise_weight_grad(input, grad_output, weight_size, stride, padding, dilation)
    return _gemm.conv2d_weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups)


def _bias_grad(grad_output: Tensor) -> Tensor:
    return grad_output.sum((0, 2, 3), dtype=torch.float64 if grad_output.dtype == torch.float64 else torch.float32
                           ).to(grad_output.dtype)


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv2d_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    gi = gw = gb = None
    if ctx.needs_input_grad[0]:
        gi = torch.ops.convlab.conv2d_input_grad(grad_output, weight, None, list(input.shape), stride, padding,
                                                 dilation, groups)
    if ctx.needs_input_grad[1]:
        gw = torch.ops.convlab.conv2d_weight_grad(input, grad_output, list(weight.shape), stride, padding,
                                                  dilation, groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad_output)
    return gi, gw, gb, None, None, None, None


_conv2d_op.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)


def _crop_to(out: Tensor, like: Tensor) -> Tensor:
    """``out`` cut to ``like``'s height and width.

    conv2d over an input of size (H - 1) * stride - 2 * pad + dil * (K - 1) + 1 + output_padding
    gives floor(output_padding / stride) rows more than H. conv_transpose2d allows output_padding
    up to max(stride, dilation) - 1, so with output_padding >= stride the conv2d that is its
    input gradient (and the grad_output gradient of its weight gradient) has extra rows/columns
    past the end of the transposed conv's input; they belong to no input element and are dropped.
    """
    h, w = like.shape[-2:]
    return out if out.shape[-2:] == (h, w) else out[..., :h, :w]


def _input_grad_setup(ctx, inputs, output):
    grad_output, weight, bias, input_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.conf = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _input_grad_backward(ctx, grad):
    # conv_transpose2d's backward: the roles of conv2d's forward and weight grad swap.
    grad_output, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    gg = gw = gb = None
    if ctx.needs_input_grad[0]:
        gg = _crop_to(torch.ops.convlab.conv2d(grad, weight, None, stride, padding, dilation, groups), grad_output)
    if ctx.needs_input_grad[1]:
        gw = torch.ops.convlab.conv2d_weight_grad(grad, grad_output, list(weight.shape), stride, padding,
                                                  dilation, groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(grad)
    return gg, gw, gb, None, None, None, None, None


_conv2d_input_grad_op.register_autograd(_input_grad_backward, setup_context=_input_grad_setup)


def _weight_grad_setup(ctx, inputs, output):
    input, grad_output, weight_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, grad_output)
    ctx.conf = (stride, padding, dilation, groups)


def _weight_grad_backward(ctx, grad):
    # <grad, weight_grad(x, gy)> = <conv2d(x, grad), gy>: bilinear in x and gy (double backward).
    input, grad_output = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    gx = ggy = None
    if ctx.needs_input_grad[0]:
        gx = torch.ops.convlab.conv2d_input_grad(grad_output, grad, None, list(input.shape), stride, padding,
                                                 dilation, groups)
    if ctx.needs_input_grad[1]:
        ggy = _crop_to(torch.ops.convlab.conv2d(input, grad, None, stride, padding, dilation, groups), grad_output)
    return gx, ggy, None, None, None, None, None


_conv2d_weight_grad_op.register_autograd(_weight_grad_backward, setup_context=_weight_grad_setup)


# FLOPs: 2 * N * OH * OW * C_out * (C_in / groups) * KH * KW for the forward and for each gradient.
@register_flop_formula(torch.ops.convlab.conv2d)
def _conv2d_flops(x_shape, w_shape, bias_shape, stride, padding, dilation, groups, *, out_shape, **kwargs):
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


@register_flop_formula(torch.ops.convlab.conv2d_input_grad)
def _input_grad_flops(gy_shape, w_shape, bias_shape, input_size, *args, out_shape, **kwargs):
    return conv_flop_count(list(input_size), w_shape, gy_shape, transposed=False)


@register_flop_formula(torch.ops.convlab.conv2d_weight_grad)
def _weight_grad_flops(x_shape, gy_shape, weight_size, *args, out_shape, **kwargs):
    return conv_flop_count(x_shape, list(weight_size), gy_shape, transposed=False)


# --------------------------------------------------------------------------- functional
def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D convolution, signature and semantics of ``torch.nn.functional.conv2d``.

    input: (N, C_in, H, W) or (C_in, H, W); weight: (C_out, C_in / groups, KH, KW); bias: (C_out,).
    padding: int, pair, "valid" or "same" (stride 1). Returns (N, C_out, OH, OW) with
    OH = (H + 2 * pad_h - dil_h * (KH - 1) - 1) // stride_h + 1.
    Depthwise weights (C_in / groups == 1, any channel multiplier) use the depthwise kernels.
    """
    input, unbatched = _check_common(input, weight, bias, groups, transposed=False)
    stride_, dilation_ = pair(stride, "stride", 1), pair(dilation, "dilation", 1)
    extra = [0, 0]
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0]
        elif padding == "same":
            padding_, extra = _same_padding(weight, stride_, dilation_)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    else:
        padding_ = pair(padding, "padding", 0)
    if any(extra):  # PyTorch pads 'same' asymmetrically: the extra row/column goes last
        input = F.pad(input, (0, extra[1], 0, extra[0]))
    H, W = input.shape[-2:]
    KH, KW = weight.shape[-2:]
    for size, pad, dil, k, axis in ((H, padding_[0], dilation_[0], KH, "height"), (W, padding_[1], dilation_[1], KW, "width")):
        if size + 2 * pad < dil * (k - 1) + 1:
            raise ValueError(f"input {axis} {size} (padded {size + 2 * pad}) is smaller than the dilated kernel "
                             f"extent {dil * (k - 1) + 1}")
    if _backend.resolve(input.device) == "reference":
        out = F.conv2d(input, weight, bias, stride_, padding_, dilation_, groups)
    else:
        out = torch.ops.convlab.conv2d(input, weight, bias, stride_, padding_, dilation_, groups)
    return out.squeeze(0) if unbatched else out


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                     padding: IntPair = 0, output_padding: IntPair = 0, groups: int = 1,
                     dilation: IntPair = 1) -> Tensor:
    """Transposed 2-D convolution, signature of ``torch.nn.functional.conv_transpose2d``.

    input: (N, C_in, H, W) or (C_in, H, W); weight: (C_in, C_out / groups, KH, KW); bias: (C_out,).
    Returns (N, C_out, OH, OW), OH = (H - 1) * stride_h - 2 * pad_h + dil_h * (KH - 1) + out_pad_h + 1.
    Computed as the input gradient of the conv2d with the same weight.
    """
    input, unbatched = _check_common(input, weight, bias, groups, transposed=True)
    stride_, dilation_ = pair(stride, "stride", 1), pair(dilation, "dilation", 1)
    padding_, out_pad = pair(padding, "padding", 0), pair(output_padding, "output_padding", 0)
    for op_, s, d, axis in zip(out_pad, stride_, dilation_, ("height", "width")):
        if op_ >= max(s, d):
            raise ValueError(f"output_padding ({op_}) must be smaller than stride or dilation in {axis}, got "
                             f"stride {s}, dilation {d}")
    N, _, H, W = input.shape
    KH, KW = weight.shape[-2:]
    OH = (H - 1) * stride_[0] - 2 * padding_[0] + dilation_[0] * (KH - 1) + out_pad[0] + 1
    OW = (W - 1) * stride_[1] - 2 * padding_[1] + dilation_[1] * (KW - 1) + out_pad[1] + 1
    if OH <= 0 or OW <= 0:
        raise ValueError(f"conv_transpose2d output size would be ({OH}, {OW}); reduce padding {padding_}")
    if _backend.resolve(input.device) == "reference":
        out = F.conv_transpose2d(input, weight, bias, stride_, padding_, out_pad, groups, dilation_)
    else:
        c_out = weight.shape[1] * groups
        out = torch.ops.convlab.conv2d_input_grad(input, weight, bias, [N, c_out, OH, OW], stride_, padding_,
                                                  dilation_, groups)
    return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------- modules
class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and state_dict) running convlab's kernels."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same arguments and state_dict) running convlab's kernels."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """``output_size`` ((H, W), or with the leading batch/channel sizes) picks output_padding, as in
        ``nn.ConvTranspose2d.forward``; sizes up to stride - 1 past the smallest are reachable."""
        if self.padding_mode != "zeros":  # settable after construction; nn.ConvTranspose2d refuses it here too
            raise ValueError(f"Only 'zeros' padding mode is supported for ConvTranspose2d, got {self.padding_mode!r}")
        num_spatial_dims = 2
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              num_spatial_dims, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation)


class DepthwiseSeparableConv2d(nn.Module):
    """Depthwise KxK convolution (``depth_multiplier`` filters per input channel) followed by a
    pointwise 1x1 convolution, as in Xception / MobileNet (no norm or activation between).

    (N, C_in, H, W) -> depthwise (N, C_in * depth_multiplier, OH, OW) -> pointwise (N, C_out, OH, OW).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: Union[IntPair, str] = 0, dilation: IntPair = 1, bias: bool = True,
                 depth_multiplier: int = 1, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        positive_int(depth_multiplier, "depth_multiplier")
        mid = in_channels * depth_multiplier
        self.depthwise = Conv2d(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                                bias=False, padding_mode=padding_mode, device=device, dtype=dtype)
        self.pointwise = Conv2d(mid, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(input))


class SpatiallySeparableConv2d(nn.Module):
    """A K x 1 convolution followed by a 1 x K one (factorised KxK, as in Inception-v3).

    (N, C_in, H, W) -> (N, mid_channels, OH, W') -> (N, C_out, OH, OW); stride, padding and
    dilation apply per axis: (s_h, 1) in the first, (1, s_w) in the second convolution.
    ``mid_channels`` defaults to ``out_channels``; the bias sits on the second convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, bias: bool = True,
                 mid_channels: Optional[int] = None, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        (kh, kw) = pair(kernel_size, "kernel_size", 1)
        (sh, sw), (ph, pw) = pair(stride, "stride", 1), pair(padding, "padding", 0)
        (dh, dw) = pair(dilation, "dilation", 1)
        mid = out_channels if mid_channels is None else mid_channels
        self.vertical = Conv2d(in_channels, mid, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=groups, bias=False,
                               padding_mode=padding_mode, device=device, dtype=dtype)
        self.horizontal = Conv2d(mid, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), groups=groups, bias=bias,
                                 padding_mode=padding_mode, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.horizontal(self.vertical(input))


__all__ = ["conv2d", "conv_transpose2d", "Conv2d", "ConvTranspose2d", "DepthwiseSeparableConv2d",
           "SpatiallySeparableConv2d"]
