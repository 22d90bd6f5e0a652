"""Bilinear gather: custom ops, functional.

``bilinear_gather(input, positions)``: input (N, C, H, W), positions (N, *, 2) as (y, x) in
pixel coordinates -> (N, C, *). A corner outside the image contributes 0, so a sample with
y <= -1, y >= H, x <= -1 or x >= W is 0 (torchvision's deform_conv2d rule, the one deformable
convolution samples with).

The op runs the Triton kernels (``torch.ops.convlab.bilinear_gather``, ``kernels.gather``) or the
plain-PyTorch reference (``layers.deform._bilinear_reference``, fp16 / bf16 computed in fp32 and
cast back), as ``layers.backend.resolve`` decides.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from kernels import gather as _k
from kernels._common import SUPPORTED_DTYPES, accumulator_dtype

from . import backend as _backend
from ._op import convlab_op
from .deform import _bilinear_reference, _check_tensor


# --------------------------------------------------------------------------- custom ops
# triton_op on GPU (torch.compile sees the kernels); an opaque custom_op under the
# interpreter (see layers._op).
@convlab_op("convlab::bilinear_gather")
def _bilinear_gather_op(input: Tensor, positions: Tensor) -> Tensor:
    """input (N, C, H, W), positions (N, P, 2) -> (N, C, P)."""
    return _k.bilinear_gather_forward(input, positions)


@convlab_op("convlab::bilinear_gather_backward")
def _bilinear_gather_backward_op(grad_output: Tensor, input: Tensor, positions: Tensor) -> Tuple[Tensor, Tensor]:
    return _k.bilinear_gather_backward(grad_output, input, positions)


def _gather_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _gather_backward(ctx, grad_output):
    input, positions = ctx.saved_tensors
    gi, gp = torch.ops.convlab.bilinear_gather_backward(grad_output, input, positions)
    return (gi if ctx.needs_input_grad[0] else None), (gp if ctx.needs_input_grad[1] else None)


_bilinear_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)


# FLOPs: 7 per sampled value forward (4 weights' products and the blend), 16 backward
# (scatter weights, corner dots, coordinate weights).
@register_flop_formula(torch.ops.convlab.bilinear_gather)
def _gather_flops(x_shape, pos_shape, *, out_shape, **kwargs):
    return 7 * math.prod(out_shape)


@register_flop_formula(torch.ops.convlab.bilinear_gather_backward)
def _gather_backward_flops(gy_shape, x_shape, pos_shape, *, out_shape, **kwargs):
    return 16 * math.prod(gy_shape)


# --------------------------------------------------------------------------- functional
def bilinear_gather(input: Tensor, positions: Tensor) -> Tensor:
    """Sample ``input`` (N, C, H, W) bilinearly at ``positions`` (N, *, 2), given as (y, x) in
    pixel coordinates (pixel (i, j) sits at (i, j)); returns (N, C, *). Corners outside the
    image contribute 0 (a sample with y <= -1, y >= H, x <= -1 or x >= W is 0). Differentiable
    in both arguments."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input must be a 4-D Tensor (N, C, H, W), got {shape}")
    if input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"input dtype must be one of float16, bfloat16, float32, float64, got {input.dtype}")
    _check_tensor(positions, "positions", input, "(N, *, 2)")
    if positions.dim() < 2 or positions.shape[0] != input.shape[0] or positions.shape[-1] != 2:
        raise ValueError(f"positions must have shape (N, *, 2) = ({input.shape[0]}, ..., 2) as (y, x) pixel "
                         f"coordinates, got {tuple(positions.shape)}")
    N, C = input.shape[:2]
    rest = positions.shape[1:-1]
    pos = positions.reshape(N, math.prod(rest), 2)
    if _backend.resolve(input.device) == "reference":
        acc = accumulator_dtype(input.dtype)
        out = _bilinear_reference(input.to(acc), pos[..., 0].to(acc).unsqueeze(1),
                                  pos[..., 1].to(acc).unsqueeze(1)).to(input.dtype)
    else:
        out = torch.ops.convlab.bilinear_gather(input, pos)
    return out.reshape(N, C, *rest)


__all__ = ["bilinear_gather"]
