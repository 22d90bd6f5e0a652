"""2-D convolution ops (standard, grouped, depthwise, dilated, transposed) and their modules.

The functional ops mirror ``F.conv2d`` / ``F.conv_transpose2d``; they check their arguments,
then run either the Triton custom ops (``torch.ops.convlab.*``) or the PyTorch reference,
as the backend switch (``layers.backend``) decides. Shapes: input (N, C_in, H, W) or
unbatched (C_in, H, W); weight (C_out, C_in / groups, KH, KW) for conv2d and
(C_in, C_out / groups, KH, KW) for conv_transpose2d. channels_last input gives
channels_last output.

The logic shared with conv3d (checks, functional bodies, autograd, FLOP formulas, module bodies)
is written once, for any rank, in ``layers._convnd``.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch.nn as nn
from torch import Tensor

from kernels import conv2d as _gemm
from kernels import depthwise as _dw

from . import _convnd as _nd
from . import backend as _backend
from ._checks import IntPair, pair
from ._op import convlab_op


# --------------------------------------------------------------------------- argument checks
def _check_common(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int, transposed: bool):
    """Checks shared by conv2d and conv_transpose2d (and layers.upsample); returns (batched input,
    was_unbatched)."""
    return _nd.check_args(input, weight, bias, groups, transposed, nd=2)


# --------------------------------------------------------------------------- custom ops
# Which kernels compute each op; their autograd and FLOP formulas are layers._convnd's (same for 3-D).
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


_nd.register_autograd("conv2d")


# --------------------------------------------------------------------------- functional
def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D convolution, signature and semantics of ``torch.nn.functional.conv2d``.

    input: (N, C_in, H, W) or (C_in, H, W); weight: (C_out, C_in / groups, KH, KW); bias: (C_out,).
    padding: int, pair, "valid" or "same" (stride 1). Returns (N, C_out, OH, OW) with
    OH = (H + 2 * pad_h - dil_h * (KH - 1) - 1) // stride_h + 1.
    Depthwise weights (C_in / groups == 1, any channel multiplier) use the depthwise kernels.
    """
    return _nd.conv(input, weight, bias, stride, padding, dilation, groups, nd=2)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                     padding: IntPair = 0, output_padding: IntPair = 0, groups: int = 1,
                     dilation: IntPair = 1) -> Tensor:
    """Transposed 2-D convolution, signature of ``torch.nn.functional.conv_transpose2d``.

    input: (N, C_in, H, W) or (C_in, H, W); weight: (C_in, C_out / groups, KH, KW); bias: (C_out,).
    Returns (N, C_out, OH, OW), OH = (H - 1) * stride_h - 2 * pad_h + dil_h * (KH - 1) + out_pad_h + 1.
    Computed as the input gradient of the conv2d with the same weight.
    """
    return _nd.conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, nd=2)


# --------------------------------------------------------------------------- modules
class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same arguments, parameters and state_dict) running convlab's kernels."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return _nd.conv_module_forward(self, input, weight, bias, conv2d)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same arguments and state_dict) running convlab's kernels."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """``output_size`` ((H, W), or with the leading batch/channel sizes) picks output_padding, as in
        ``nn.ConvTranspose2d.forward``; sizes up to stride - 1 past the smallest are reachable."""
        return _nd.conv_transpose_module_forward(self, input, output_size, conv_transpose2d)


class DepthwiseSeparableConv2d(_nd.DepthwiseSeparable):
    """Depthwise KxK convolution (``depth_multiplier`` filters per input channel) followed by a
    pointwise 1x1 convolution, as in Xception / MobileNet (no norm or activation between).

    (N, C_in, H, W) -> depthwise (N, C_in * depth_multiplier, OH, OW) -> pointwise (N, C_out, OH, OW).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: Union[IntPair, str] = 0, dilation: IntPair = 1, bias: bool = True,
                 depth_multiplier: int = 1, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(Conv2d, in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         depth_multiplier, padding_mode, device, dtype)


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
