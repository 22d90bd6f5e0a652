"""3-D convolution ops (standard, grouped, depthwise, dilated, transposed) and their modules.

The functional ops mirror ``F.conv3d`` / ``F.conv_transpose3d``: they check their arguments, then
run either the Triton custom ops (``torch.ops.convlab.conv3d*``) or the PyTorch reference, as the
backend switch (``layers.backend``) decides. Shapes: input (N, C_in, D, H, W) or unbatched
(C_in, D, H, W); weight (C_out, C_in / groups, KD, KH, KW) for conv3d and
(C_in, C_out / groups, KD, KH, KW) for conv_transpose3d. channels_last_3d input gives
channels_last_3d output.

Depthwise weights (C_in / groups == 1, groups == C_in) go to ``kernels.depthwise3d`` when that
module exists (``_use_depthwise3d`` is the one place that decides), else to the grouped GEMM.

The logic shared with conv2d (checks, functional bodies, autograd, FLOP formulas, module bodies)
is written once, for any rank, in ``layers._convnd``.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import List, Optional, Sequence, Union

import torch.nn as nn
from torch import Tensor

from kernels import conv3d as _gemm3d

from . import _convnd as _nd
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


# --------------------------------------------------------------------------- custom ops
# Which kernels compute each op; their autograd and FLOP formulas are layers._convnd's (same for 2-D).
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


_nd.register_autograd("conv3d")


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
    return _nd.conv(input, weight, bias, stride, padding, dilation, groups, nd=3)


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
    return _nd.conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, nd=3)


# --------------------------------------------------------------------------- modules
class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same arguments, parameters and state_dict) running convlab's kernels; see
    :func:`conv3d`."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return _nd.conv_module_forward(self, input, weight, bias, conv3d)


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` (same arguments and state_dict) running convlab's kernels; see
    :func:`conv_transpose3d`."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        """``output_size`` ((D, H, W), or with the leading batch/channel sizes) picks output_padding,
        as in ``nn.ConvTranspose3d.forward``."""
        return _nd.conv_transpose_module_forward(self, input, output_size, conv_transpose3d)


class DepthwiseSeparableConv3d(_nd.DepthwiseSeparable):
    """Depthwise KxKxK convolution (``depth_multiplier`` filters per input channel) followed by a
    pointwise 1x1x1 convolution (no norm or activation between).

    (N, C_in, D, H, W) -> depthwise (N, C_in * depth_multiplier, OD, OH, OW) -> pointwise
    (N, C_out, OD, OH, OW).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple, stride: IntTriple = 1,
                 padding: Union[IntTriple, str] = 0, dilation: IntTriple = 1, bias: bool = True,
                 depth_multiplier: int = 1, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__(Conv3d, in_channels, out_channels, kernel_size, stride, padding, dilation, bias,
                         depth_multiplier, padding_mode, device, dtype)


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
