"""What conv2d and conv3d share, written once for ``nd`` spatial dimensions (2: H, W; 3: D, H, W).

``layers/conv.py`` and ``layers/conv3d.py`` each define their three custom ops (which kernels
compute ``convlab::conv{nd}d``, ``convlab::conv{nd}d_input_grad`` and ``convlab::conv{nd}d_weight_grad``)
and their public functions and modules. The rest is the same logic for both ranks and lives here:
the argument checks, the functional bodies (padding rules, size checks, backend choice), the
autograd of the three ops (backward and double backward), their FLOP formulas, and the bodies of
the modules ``Conv{nd}d``, ``ConvTranspose{nd}d`` and ``DepthwiseSeparableConv{nd}d``.

Shapes, with ``S`` the ``nd`` spatial sizes ((H, W) or (D, H, W)) and ``K`` the kernel's:
input (N, C_in, *S) or unbatched (C_in, *S); weight (C_out, C_in / groups, *K) for the
convolution and (C_in, C_out / groups, *K) for the transposed one; bias (C_out,).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from kernels._common import SUPPORTED_DTYPES

from . import backend as _backend
from ._checks import pair, positive_int, triple

_AXES = ("depth", "height", "width")  # the last nd of them, in the messages
_INTS = {2: (pair, "pair"), 3: (triple, "triple")}  # an argument's per-axis form and its name


def _layout(letters: str, nd: int) -> str:
    """e.g. ``_layout("K", 2)`` -> "KH, KW"; ``_layout("", 3)`` -> "D, H, W"."""
    return ", ".join(letters + axis for axis in "DHW"[-nd:])


# --------------------------------------------------------------------------- argument checks
def check_args(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int, transposed: bool,
               nd: int) -> Tuple[Tensor, bool]:
    """Checks shared by conv{nd}d and conv_transpose{nd}d; returns (batched input, was_unbatched)."""
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a Tensor, got {type(input).__name__}")
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a Tensor, got {type(weight).__name__}")
    if input.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"input must be {nd + 2}-D (N, C, {_layout('', nd)}) or {nd + 1}-D (C, {_layout('', nd)}), "
                         f"got shape {tuple(input.shape)}")
    unbatched = input.dim() == nd + 1
    if unbatched:
        input = input.unsqueeze(0)
    channels = "C_in, C_out / groups" if transposed else "C_out, C_in / groups"
    if weight.dim() != nd + 2:
        raise ValueError(f"weight must be {nd + 2}-D ({channels}, {_layout('K', nd)}), got shape {tuple(weight.shape)}")
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
            raise ValueError(f"weight.shape[0] must equal input channels {c_in} for conv_transpose{nd}d, "
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


def same_padding(weight: Tensor, stride: List[int], dilation: List[int]) -> Tuple[List[int], List[int]]:
    """(symmetric padding, extra padding at the end) per spatial axis that keeps the input's size
    for padding='same'; an odd total goes one more at the end, as PyTorch pads."""
    if stride != [1] * len(stride):
        raise ValueError(f"padding='same' needs stride 1, got stride {stride}")
    total = [d * (k - 1) for d, k in zip(dilation, weight.shape[-len(stride):])]
    return [t // 2 for t in total], [t % 2 for t in total]


# --------------------------------------------------------------------------- functional bodies
def conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int,
         nd: int) -> Tensor:
    """The body of ``layers.conv2d`` (nd=2) and ``layers.conv3d`` (nd=3): see their docstrings.

    Returns Tensor[N, C_out, *OS] (unbatched in, unbatched out) with, per axis,
    OS = (S + 2 * pad - dil * (K - 1) - 1) // stride + 1.
    """
    ints, noun = _INTS[nd]
    input, unbatched = check_args(input, weight, bias, groups, transposed=False, nd=nd)
    stride_, dilation_ = ints(stride, "stride", 1), ints(dilation, "dilation", 1)
    extra = [0] * nd
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0] * nd
        elif padding == "same":
            padding_, extra = same_padding(weight, stride_, dilation_)
        else:
            raise ValueError(f"padding must be an int, a {noun}, 'valid' or 'same', got {padding!r}")
    else:
        padding_ = ints(padding, "padding", 0)
    if any(extra):  # the extra plane/row/column of an odd 'same' padding goes last, as PyTorch pads
        input = F.pad(input, [p for e in reversed(extra) for p in (0, e)])
    for size, pad, dil, k, axis in zip(input.shape[-nd:], padding_, dilation_, weight.shape[-nd:], _AXES[-nd:]):
        if size + 2 * pad < dil * (k - 1) + 1:
            raise ValueError(f"input {axis} {size} (padded {size + 2 * pad}) is smaller than the dilated kernel "
                             f"extent {dil * (k - 1) + 1}")
    if _backend.resolve(input.device) == "reference":
        out = (F.conv2d if nd == 2 else F.conv3d)(input, weight, bias, stride_, padding_, dilation_, groups)
    else:
        op = torch.ops.convlab.conv2d if nd == 2 else torch.ops.convlab.conv3d
        out = op(input, weight, bias, stride_, padding_, dilation_, groups)
    return out.squeeze(0) if unbatched else out


def conv_transpose(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, output_padding,
                   groups: int, dilation, nd: int) -> Tensor:
    """The body of ``layers.conv_transpose2d`` (nd=2) and ``layers.conv_transpose3d`` (nd=3): see their
    docstrings.

    Returns Tensor[N, C_out, *OS] with, per axis, OS = (S - 1) * stride - 2 * pad + dil * (K - 1) + out_pad + 1,
    computed as the input gradient (op ``convlab::conv{nd}d_input_grad``) of the conv{nd}d with the same weight.
    """
    ints, _ = _INTS[nd]
    input, unbatched = check_args(input, weight, bias, groups, transposed=True, nd=nd)
    stride_, dilation_ = ints(stride, "stride", 1), ints(dilation, "dilation", 1)
    padding_, out_pad = ints(padding, "padding", 0), ints(output_padding, "output_padding", 0)
    for op_, s, d, axis in zip(out_pad, stride_, dilation_, _AXES[-nd:]):
        if op_ >= max(s, d):
            raise ValueError(f"output_padding ({op_}) must be smaller than stride or dilation in {axis}, got "
                             f"stride {s}, dilation {d}")
    out_size = [(size - 1) * s - 2 * p + d * (k - 1) + op_ + 1 for size, s, p, d, k, op_ in
                zip(input.shape[-nd:], stride_, padding_, dilation_, weight.shape[-nd:], out_pad)]
    if min(out_size) <= 0:
        raise ValueError(f"conv_transpose{nd}d output size would be {tuple(out_size)}; reduce padding {padding_}")
    if _backend.resolve(input.device) == "reference":
        reference = F.conv_transpose2d if nd == 2 else F.conv_transpose3d
        out = reference(input, weight, bias, stride_, padding_, out_pad, groups, dilation_)
    else:
        op = torch.ops.convlab.conv2d_input_grad if nd == 2 else torch.ops.convlab.conv3d_input_grad
        c_out = weight.shape[1] * groups
        out = op(input, weight, bias, [input.shape[0], c_out, *out_size], stride_, padding_, dilation_, groups)
    return out.squeeze(0) if unbatched else out


# --------------------------------------------------------------------------- autograd of the custom ops
def bias_grad(grad_output: Tensor) -> Tensor:
    """dL/dbias (C_out,) of grad_output (N, C_out, *OS), accumulated in float32 (float64 for float64)."""
    acc = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
    return grad_output.sum((0, *range(2, grad_output.dim())), dtype=acc).to(grad_output.dtype)


def crop_to(out: Tensor, like: Tensor) -> Tensor:
    """``out`` cut to ``like``'s spatial size (its last ``like.dim() - 2`` dims).

    A conv over an input of size (S - 1) * stride - 2 * pad + dil * (K - 1) + 1 + output_padding
    gives floor(output_padding / stride) rows more than S. conv_transpose allows output_padding
    up to max(stride, dilation) - 1, so with output_padding >= stride the conv that is its
    input gradient (and the grad_output gradient of its weight gradient) has extra rows/columns
    past the end of the transposed conv's input; they belong to no input element and are dropped.
    """
    size = like.shape[2:]
    return out if out.shape[2:] == size else out[(..., *(slice(0, s) for s in size))]


def _setup(ctx, inputs, output):
    # Each op's inputs: its two tensors (saved), then bias (forward, input grad) or weight_size
    # (weight grad), and they end with (stride, padding, dilation, groups).
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.conf = tuple(inputs[-4:])
    ctx.has_bias = isinstance(inputs[2], Tensor)


def register_autograd(name: str) -> None:
    """Backward (and double backward) and FLOP formulas of the ops ``convlab::{name}``,
    ``{name}_input_grad`` and ``{name}_weight_grad`` (name "conv2d" or "conv3d"), which take

        {name}(input, weight, bias, stride, padding, dilation, groups) -> output
        {name}_input_grad(grad_output, weight, bias, input_size, stride, ...) -> grad_input (+ bias)
        {name}_weight_grad(input, grad_output, weight_size, stride, ...) -> grad_weight

    Each gradient is again one of the three ops, so every order of derivative runs the kernels.
    """
    forward = getattr(torch.ops.convlab, name)
    input_grad = getattr(torch.ops.convlab, f"{name}_input_grad")
    weight_grad = getattr(torch.ops.convlab, f"{name}_weight_grad")

    def forward_backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gi = input_grad(grad_output, weight, None, list(input.shape), *ctx.conf) if needs[0] else None
        gw = weight_grad(input, grad_output, list(weight.shape), *ctx.conf) if needs[1] else None
        gb = bias_grad(grad_output) if ctx.has_bias and needs[2] else None
        return gi, gw, gb, None, None, None, None

    def input_grad_backward(ctx, grad):
        # conv_transpose's backward: the roles of the forward and the weight grad swap.
        grad_output, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gg = crop_to(forward(grad, weight, None, *ctx.conf), grad_output) if needs[0] else None
        gw = weight_grad(grad, grad_output, list(weight.shape), *ctx.conf) if needs[1] else None
        gb = bias_grad(grad) if ctx.has_bias and needs[2] else None
        return gg, gw, gb, None, None, None, None, None

    def weight_grad_backward(ctx, grad):
        # <grad, weight_grad(x, gy)> = <conv(x, grad), gy>: bilinear in x and gy (double backward).
        input, grad_output = ctx.saved_tensors
        needs = ctx.needs_input_grad
        gx = input_grad(grad_output, grad, None, list(input.shape), *ctx.conf) if needs[0] else None
        ggy = crop_to(forward(input, grad, None, *ctx.conf), grad_output) if needs[1] else None
        return gx, ggy, None, None, None, None, None

    for op, backward in ((name, forward_backward), (f"{name}_input_grad", input_grad_backward),
                         (f"{name}_weight_grad", weight_grad_backward)):
        torch.library.register_autograd(f"convlab::{op}", backward, setup_context=_setup)
    register_flop_formula(forward)(_forward_flops)
    register_flop_formula(input_grad)(_input_grad_flops)
    register_flop_formula(weight_grad)(_weight_grad_flops)


# FLOPs: 2 * N * prod(OS) * C_out * (C_in / groups) * prod(K) for the forward and for each gradient.
def _forward_flops(x_shape, w_shape, bias_shape, stride, padding, dilation, groups, *, out_shape, **kwargs):
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def _input_grad_flops(gy_shape, w_shape, bias_shape, input_size: Sequence[int], *args, out_shape, **kwargs):
    return conv_flop_count(list(input_size), w_shape, gy_shape, transposed=False)


def _weight_grad_flops(x_shape, gy_shape, weight_size: Sequence[int], *args, out_shape, **kwargs):
    return conv_flop_count(x_shape, list(weight_size), gy_shape, transposed=False)


# --------------------------------------------------------------------------- modules
def conv_module_forward(module: nn.Module, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                        conv: Callable[..., Tensor]) -> Tensor:
    """``_conv_forward`` of ``layers.Conv2d`` / ``Conv3d``: ``nn.Conv{nd}d``'s, with ``conv``
    (``layers.conv2d`` / ``conv3d``) for ``F.conv{nd}d``; a padding_mode other than "zeros" pads first."""
    if module.padding_mode != "zeros":
        input = F.pad(input, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        return conv(input, weight, bias, module.stride, 0, module.dilation, module.groups)
    return conv(input, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def conv_transpose_module_forward(module: nn.Module, input: Tensor, output_size: Optional[List[int]],
                                  conv_transpose: Callable[..., Tensor]) -> Tensor:
    """``forward`` of ``layers.ConvTranspose2d`` / ``ConvTranspose3d``: ``output_size`` (the spatial
    sizes, or with the leading batch/channel sizes) picks output_padding, as in
    ``nn.ConvTranspose{nd}d.forward``; sizes up to stride - 1 past the smallest are reachable."""
    nd = len(module.kernel_size)
    if module.padding_mode != "zeros":  # settable after construction; nn.ConvTranspose{nd}d refuses it here too
        raise ValueError(f"Only 'zeros' padding mode is supported for ConvTranspose{nd}d, got {module.padding_mode!r}")
    output_padding = module._output_padding(input, output_size, module.stride, module.padding, module.kernel_size,
                                            nd, module.dilation)
    return conv_transpose(input, module.weight, module.bias, module.stride, module.padding, output_padding,
                          module.groups, module.dilation)


class DepthwiseSeparable(nn.Module):
    """The body of ``layers.DepthwiseSeparableConv2d`` / ``DepthwiseSeparableConv3d``: a depthwise
    ``conv`` (``layers.Conv2d`` / ``Conv3d`` with groups = C_in, ``depth_multiplier`` filters per input
    channel, no bias) followed by a pointwise one (kernel 1), no norm or activation between.

    (N, C_in, *S) -> depthwise (N, C_in * depth_multiplier, *OS) -> pointwise (N, C_out, *OS).
    """

    def __init__(self, conv: Callable[..., nn.Module], in_channels: int, out_channels: int, kernel_size,
                 stride, padding, dilation, bias: bool, depth_multiplier: int, padding_mode: str, device, dtype):
        super().__init__()
        positive_int(depth_multiplier, "depth_multiplier")
        mid = in_channels * depth_multiplier
        self.depthwise = conv(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                              bias=False, padding_mode=padding_mode, device=device, dtype=dtype)
        self.pointwise = conv(mid, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(input))
