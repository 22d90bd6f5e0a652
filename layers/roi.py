"""Deformable RoI pooling (DCNv1, section 2.2): custom op, functional, modules.

``deform_roi_pool(input, boxes, offset=None, output_size, spatial_scale, sampling_ratio, gamma)``
is ``torchvision.ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio,
aligned=False)`` with every output bin shifted by a learned, normalised offset:

    input   (N, C, H, W)
    boxes   Tensor (K, 5) as (batch index, x1, y1, x2, y2), or a list of N Tensors (L_i, 4)
    offset  (K, 2, PH, PW) or None; channel 0 shifts x, channel 1 shifts y:
            bin shift = gamma * offset * (roi_w, roi_h), roi_w / roi_h in feature-map pixels
    output  (K, C, PH, PW)

``offset=None`` (or all zeros) gives exactly RoI Align (aligned=False). Gradients flow to input
and offset (boxes get none). fp16 / bf16 / fp32 / fp64; accumulation in fp32 (fp64).

The batch index must be an integer in [0, N): a ValueError names the first box where it is not
(checked on CPU tensors; on CUDA only with ``check_batch_index=True``, which costs a host sync;
unchecked, such a box gives 0 and no gradient; torchvision instead truncates it to an int). A NaN
offset makes its bin NaN (see ``kernels.roi``).

``DeformRoIPool2d(output_size, spatial_scale, sampling_ratio, gamma=0.1)`` wraps the functional
(forward(input, rois, offset=None)); ``OffsetDeformRoIPool2d`` predicts the offsets itself as in
the paper: RoI Align without offset -> fc layers (the last zero-initialised) -> normalised offsets
-> deformable RoI pooling; ``ModulatedDeformRoIPool2d`` (DCNv2) adds a second fc branch whose sigmoid
output scales each pooled bin. The op runs the Triton kernels (``torch.ops.convlab.deform_roi_pool``)
or a plain-PyTorch reference, as ``layers.backend.resolve`` decides.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from kernels import roi as _k
from kernels._common import SUPPORTED_DTYPES, accumulator_dtype

from . import backend as _backend
from ._checks import pair
from ._op import convlab_op

BoxesType = Union[Tensor, List[Tensor], Tuple[Tensor, ...]]


# --------------------------------------------------------------------------- custom ops
@convlab_op("convlab::deform_roi_pool")
def _deform_roi_pool_op(input: Tensor, rois: Tensor, offset: Optional[Tensor], spatial_scale: float,
                        pooled_height: int, pooled_width: int, sampling_ratio: int, gamma: float) -> Tensor:
    return _k.deform_roi_pool_forward(input, rois, offset, spatial_scale, pooled_height, pooled_width,
                                      sampling_ratio, gamma)


@convlab_op("convlab::deform_roi_pool_backward")
def _deform_roi_pool_backward_op(grad_output: Tensor, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                                 spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int,
                                 gamma: float) -> Tuple[Tensor, Tensor]:
    """(grad input, grad offset); grad offset is an empty tensor when offset is None."""
    return _k.deform_roi_pool_backward(grad_output, input, rois, offset, spatial_scale, pooled_height,
                                       pooled_width, sampling_ratio, gamma)


def _setup(ctx, inputs, output):
    input, rois, offset = inputs[:3]
    ctx.save_for_backward(input, rois, offset)
    ctx.conf = inputs[3:]


def _backward(ctx, grad_output):
    input, rois, offset = ctx.saved_tensors
    need = ctx.needs_input_grad
    gi = go = None
    if need[0] or (offset is not None and need[2]):
        gi, go = torch.ops.convlab.deform_roi_pool_backward(grad_output.contiguous(), input, rois, offset, *ctx.conf)
        gi = gi if need[0] else None
        go = go if (offset is not None and need[2]) else None
    return gi, None, go, None, None, None, None, None


_deform_roi_pool_op.register_autograd(_backward, setup_context=_setup)


# FLOPs per output element and sample: bilinear interpolation (4 multiply-adds of the corners
# plus 3 for the weights = 7) + 1 for the average. The sampling grid is known statically only
# for sampling_ratio > 0; an adaptive grid (sampling_ratio <= 0) is counted as 2 x 2 samples.
# Backward: ~16 FLOPs per sample and channel (4 scatter weights, 4 corner dot products, 2 offset
# derivatives), as bilinear_gather's backward.
def _samples(sampling_ratio: int) -> int:
    return sampling_ratio * sampling_ratio if sampling_ratio > 0 else 4


@register_flop_formula(torch.ops.convlab.deform_roi_pool)
def _roi_flops(x_shape, rois_shape, off_shape, spatial_scale, ph, pw, sampling_ratio, *args, out_shape, **kwargs):
    return 8 * math.prod(out_shape) * _samples(sampling_ratio)


@register_flop_formula(torch.ops.convlab.deform_roi_pool_backward)
def _roi_backward_flops(gy_shape, x_shape, rois_shape, off_shape, spatial_scale, ph, pw, sampling_ratio, *args,
                        out_shape, **kwargs):
    return 16 * math.prod(gy_shape) * _samples(sampling_ratio)


# --------------------------------------------------------------------------- reference
def _roi_bilinear_reference(feat: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """torchvision RoI Align sampling: feat (K, C, H, W); py, px (K, L) -> (K, C, L).
    0 outside [-1, H] x [-1, W]; [-1, 0) clamps to 0; the last row / column is replicated.
    A NaN coordinate reads nothing (index 0, masked) and keeps a NaN weight: the sample is NaN,
    the input gets no gradient from it."""
    K, C, H, W = feat.shape
    valid = (py >= -1) & (py <= H) & (px >= -1) & (px <= W)
    ny, nx = py.isnan(), px.isnan()
    py = py.clamp(0, H + 1)
    px = px.clamp(0, W + 1)
    # NaN -> 0 before the float -> int conversion (NaN has no defined integer)
    y0 = py.detach().floor().nan_to_num(0.0).long()
    x0 = px.detach().floor().nan_to_num(0.0).long()
    top_y, top_x = (y0 >= H - 1) & ~ny, (x0 >= W - 1) & ~nx
    y0, x0 = torch.where(top_y, H - 1, y0), torch.where(top_x, W - 1, x0)
    y1, x1 = torch.where(top_y, H - 1, y0 + 1), torch.where(top_x, W - 1, x0 + 1)
    ly = torch.where(top_y, 0.0, py - y0.to(py.dtype))
    lx = torch.where(top_x, 0.0, px - x0.to(px.dtype))
    hy, hx = 1 - ly, 1 - lx
    flat = feat.reshape(K, C, H * W)
    out = 0
    for yy, xx, wt in ((y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)):
        idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1))[:, None, :].expand(K, C, -1)
        out = out + torch.where(valid[:, None, :], torch.gather(flat, 2, idx), 0.0) * wt[:, None, :]
    return out


def _deform_roi_pool_reference(input: Tensor, rois: Tensor, offset: Optional[Tensor], spatial_scale: float,
                               pooled_height: int, pooled_width: int, sampling_ratio: int, gamma: float) -> Tensor:
    """Plain PyTorch (differentiable by autograd in input and offset); computes in fp32 (fp64)."""
    dtype = input.dtype
    acc = accumulator_dtype(dtype)
    N, C, H, W = input.shape
    K, PH, PW = rois.shape[0], pooled_height, pooled_width
    if K == 0 or C == 0:
        return input.new_zeros((K, C, PH, PW)) + 0 * input.sum()
    x = input.to(acc)
    r = rois.detach().to(acc)
    b_ok = _batch_index_ok(r[:, 0], N)  # an invalid box reads image 0 and is zeroed below, as in the kernels
    b = torch.where(b_ok, r[:, 0], 0).long()
    x1, y1, x2, y2 = (r[:, 1:] * spatial_scale).unbind(1)
    roi_w, roi_h = (x2 - x1).clamp(min=1), (y2 - y1).clamp(min=1)
    bin_h, bin_w = roi_h / PH, roi_w / PW
    if sampling_ratio > 0:
        gh = torch.full((K,), sampling_ratio, device=r.device, dtype=torch.long)
        gw = gh
    else:
        gh, gw = torch.ceil(roi_h / PH).long(), torch.ceil(roi_w / PW).long()
    gh, gw = torch.where(b_ok, gh, 0), torch.where(b_ok, gw, 0)
    GH, GW = max(int(gh.max()), 1), max(int(gw.max()), 1)
    dev = input.device
    ph = torch.arange(PH, device=dev, dtype=acc)
    pw = torch.arange(PW, device=dev, dtype=acc)
    ys = y1[:, None, None] + ph[None, :, None] * bin_h[:, None, None]  # (K, PH, 1)
    xs = x1[:, None, None] + pw[None, None, :] * bin_w[:, None, None]  # (K, 1, PW)
    ys, xs = ys.expand(K, PH, PW), xs.expand(K, PH, PW)
    if offset is not None:
        off = offset.to(acc)
        ys = ys + gamma * roi_h[:, None, None] * off[:, 1]
        xs = xs + gamma * roi_w[:, None, None] * off[:, 0]
    iy = torch.arange(GH, device=dev, dtype=acc) + 0.5
    ix = torch.arange(GW, device=dev, dtype=acc) + 0.5
    step_h = (bin_h / gh.to(acc))[:, None, None, None, None]
    step_w = (bin_w / gw.to(acc))[:, None, None, None, None]
    py = ys[..., None, None] + iy[:, None] * step_h  # (K, PH, PW, GH, 1)
    px = xs[..., None, None] + ix[None, :] * step_w  # (K, PH, PW, 1, GW)
    py, px = py.expand(K, PH, PW, GH, GW), px.expand(K, PH, PW, GH, GW)
    used = ((torch.arange(GH, device=dev)[:, None] < gh[:, None, None])
            & (torch.arange(GW, device=dev)[None, :] < gw[:, None, None]))  # (K, GH, GW)
    # padding samples (beyond this RoI's grid) sit at a constant invalid position: no value and,
    # unlike a multiplication by 0, no gradient path to the offset (0 * NaN would be NaN)
    u = used[:, None, None].expand(K, PH, PW, GH, GW)
    py, px = torch.where(u, py, -2.0), torch.where(u, px, -2.0)
    vals = _roi_bilinear_reference(x[b], py.reshape(K, -1), px.reshape(K, -1)).reshape(K, C, PH, PW, GH, GW)
    vals = vals * used[:, None, None, None].to(acc)
    count = (gh * gw).clamp(min=1).to(acc)
    out = vals.sum((-1, -2)) / count[:, None, None, None]
    return torch.where(b_ok[:, None, None, None], out, 0.0).to(dtype)


# --------------------------------------------------------------------------- argument handling
def _batch_index_ok(idx: Tensor, N: int) -> Tensor:
    """Which batch indices are integers in [0, N) (NaN is not)."""
    return (idx >= 0) & (idx < N) & (idx == idx.floor())


def _check_batch_index(rois: Tensor, N: int) -> None:
    """ValueError naming the first box whose batch index (column 0) is not an integer in [0, N).
    Reads the indices on the host: one device sync for CUDA tensors."""
    ok = _batch_index_ok(rois[:, 0], N)
    if not bool(ok.all()):
        k = int((~ok).nonzero()[0, 0])
        raise ValueError(f"boxes[{k}] has batch index {rois[k, 0].item()!r}; a batch index (column 0 of the "
                         f"(K, 5) boxes) must be an integer in [0, {N}) for an input of batch size {N}")


def _output_size(output_size) -> Tuple[int, int]:
    return tuple(pair(output_size, "output_size", 1, form=" (PH, PW)"))


def boxes_to_rois(boxes: BoxesType, input: Tensor) -> Tensor:
    """(K, 5) rois (batch index, x1, y1, x2, y2) from a (K, 5) tensor or a list of (L_i, 4) tensors."""
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"boxes[{i}] must be a Tensor of shape (L, 4) as (x1, y1, x2, y2), got {shape}")
        if len(boxes) == 0:
            return input.new_zeros((0, 5))
        idx = torch.cat([torch.full((b.shape[0], 1), i, dtype=input.dtype, device=input.device)
                         for i, b in enumerate(boxes)])
        return torch.cat([idx, torch.cat([b.to(device=input.device, dtype=input.dtype) for b in boxes])], 1)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes (rois) must be a Tensor of shape (K, 5) as (batch index, x1, y1, x2, y2) or a list "
                         f"of Tensors (L, 4), got {shape}")
    return boxes.to(device=input.device, dtype=input.dtype)


def _check_args(input, rois, offset, PH, PW, sampling_ratio, gamma, spatial_scale):
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input must be a 4-D Tensor (N, C, H, W), got {shape}")
    if input.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"input dtype must be one of float16, bfloat16, float32, float64, got {input.dtype}")
    if min(input.shape[2:]) < 1:
        raise ValueError(f"input must have a positive spatial size (H, W), got {tuple(input.shape)}")
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
        raise ValueError(f"sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    for name, v in (("spatial_scale", spatial_scale), ("gamma", gamma)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite float, got {v!r}")
    if spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be > 0, got {spatial_scale!r}")
    K = rois.shape[0]
    if offset is not None:
        if not isinstance(offset, Tensor):
            raise ValueError(f"offset must be a Tensor of shape (K, 2, PH, PW) = ({K}, 2, {PH}, {PW}) or None, "
                             f"got {type(offset).__name__}")
        if tuple(offset.shape) != (K, 2, PH, PW):
            raise ValueError(f"offset must have shape (K, 2, PH, PW) = ({K}, 2, {PH}, {PW}) (one normalised (dx, dy) "
                             f"per RoI and bin), got {tuple(offset.shape)}")
        if offset.dtype != input.dtype:
            raise ValueError(f"offset dtype must match input dtype {input.dtype}, got {offset.dtype}")
        if offset.device != input.device:
            raise ValueError(f"offset must be on input's device {input.device}, got {offset.device}")


# --------------------------------------------------------------------------- functional
def deform_roi_pool(input: Tensor, boxes: BoxesType, offset: Optional[Tensor] = None, output_size=7,
                    spatial_scale: float = 1.0, sampling_ratio: int = -1, gamma: float = 0.1,
                    check_batch_index: Optional[bool] = None) -> Tensor:
    """Deformable RoI pooling; see the module docstring. Returns (K, C, PH, PW).

    ``check_batch_index``: raise a ValueError naming the first box whose batch index is not an
    integer in [0, N). ``None`` (default): check CPU tensors only (no device sync; skipped while
    torch.compile traces); ``True``: check on any device (one host sync per call); ``False``: never.
    Unchecked, such a box reads nothing: its output is 0 and it has no gradient."""
    PH, PW = _output_size(output_size)
    if not isinstance(input, Tensor):
        raise ValueError(f"input must be a 4-D Tensor (N, C, H, W), got {type(input).__name__}")
    rois = boxes_to_rois(boxes, input)
    _check_args(input, rois, offset, PH, PW, sampling_ratio, gamma, spatial_scale)
    if check_batch_index is None:
        check_batch_index = rois.device.type == "cpu" and not torch.compiler.is_compiling()
    if check_batch_index and rois.shape[0] > 0:
        _check_batch_index(rois, input.shape[0])
    spatial_scale, gamma = float(spatial_scale), float(gamma)
    if _backend.resolve(input.device) == "reference":
        return _deform_roi_pool_reference(input, rois, offset, spatial_scale, PH, PW, sampling_ratio, gamma)
    return torch.ops.convlab.deform_roi_pool(input, rois, offset, spatial_scale, PH, PW, sampling_ratio, gamma)


# --------------------------------------------------------------------------- modules
class DeformRoIPool2d(nn.Module):
    """``torchvision.ops.RoIAlign``'s arguments (aligned=False) plus ``gamma``;
    ``forward(input, rois, offset=None)`` with rois (K, 5) or a list of (L, 4) boxes and offset
    (K, 2, PH, PW) normalised (dx, dy) per bin. ``check_batch_index`` as ``deform_roi_pool``'s
    (an attribute; ``None``: check CPU tensors only)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, gamma: float = 0.1,
                 check_batch_index: Optional[bool] = None):
        super().__init__()
        self.output_size = _output_size(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.gamma = float(gamma)
        self.check_batch_index = check_batch_index

    def forward(self, input: Tensor, rois: BoxesType, offset: Optional[Tensor] = None) -> Tensor:
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale, self.sampling_ratio,
                               self.gamma, self.check_batch_index)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


class OffsetDeformRoIPool2d(DeformRoIPool2d):
    """Deformable RoI pooling that predicts its own offsets (the paper's RoI pooling branch):
    RoI Align without offsets -> ``offset_fc`` -> normalised offsets (K, 2, PH, PW) -> deformable
    RoI pooling. ``offset_fc`` is Linear(C * PH * PW, hidden) + ReLU + Linear(hidden, 2 * PH * PW)
    (one Linear when ``hidden_channels=0``); its last layer is zero-initialised, so at init the
    module equals RoI Align. ``forward(input, rois)``."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, in_channels: int,
                 gamma: float = 0.1, hidden_channels: int = 256):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        ph, pw = self.output_size
        n_in, n_out = in_channels * ph * pw, 2 * ph * pw
        if hidden_channels and hidden_channels > 0:
            self.offset_fc = nn.Sequential(nn.Linear(n_in, hidden_channels), nn.ReLU(inplace=True),
                                           nn.Linear(hidden_channels, n_out))
        else:
            self.offset_fc = nn.Sequential(nn.Linear(n_in, n_out))
        self.in_channels = in_channels
        nn.init.zeros_(self.offset_fc[-1].weight)
        nn.init.zeros_(self.offset_fc[-1].bias)

    def forward(self, input: Tensor, rois: BoxesType, offset: Optional[Tensor] = None) -> Tensor:
        if offset is None:
            rois = boxes_to_rois(rois, input) if isinstance(input, Tensor) else rois
            plain = super().forward(input, rois, None)
            ph, pw = self.output_size
            offset = self.offset_fc(plain.flatten(1)).view(-1, 2, ph, pw)
        return super().forward(input, rois, offset)

class ModulatedDeformRoIPool2d(OffsetDeformRoIPool2d):
    """Modulated deformable RoI pooling (DCNv2, Zhu et al. 2019, section 3.1): as
    :class:`OffsetDeformRoIPool2d`, plus a second fc branch on the same RoI Align features that
    predicts a per-bin modulation scalar through a sigmoid, which multiplies the pooled bins:

        plain  = deform_roi_pool(input, rois, None)                       (K, C, PH, PW)
        offset = offset_fc(plain.flatten(1)).view(K, 2, PH, PW)
        mask   = sigmoid(mask_fc(plain.flatten(1))).view(K, 1, PH, PW)
        output = deform_roi_pool(input, rois, offset) * mask              (K, C, PH, PW)

    ``mask_fc`` has ``offset_fc``'s shape with PH * PW outputs; both last layers are
    zero-initialised, so at init the module is RoI Align times 0.5 (as in DCNv2's reference code).
    Arguments as :class:`OffsetDeformRoIPool2d`. ``forward(input, rois, offset=None, mask=None)``:
    an ``offset`` (K, 2, PH, PW) or ``mask`` (K, 1, PH, PW) given is used instead of predicted."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, in_channels: int,
                 gamma: float = 0.1, hidden_channels: int = 256):
        super().__init__(output_size, spatial_scale, sampling_ratio, in_channels, gamma, hidden_channels)
        ph, pw = self.output_size
        n_in = in_channels * ph * pw
        if hidden_channels and hidden_channels > 0:
            self.mask_fc = nn.Sequential(nn.Linear(n_in, hidden_channels), nn.ReLU(inplace=True),
                                         nn.Linear(hidden_channels, ph * pw))
        else:
            self.mask_fc = nn.Sequential(nn.Linear(n_in, ph * pw))
        nn.init.zeros_(self.mask_fc[-1].weight)
        nn.init.zeros_(self.mask_fc[-1].bias)

    def forward(self, input: Tensor, rois: BoxesType, offset: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        ph, pw = self.output_size
        if offset is None or mask is None:
            rois = boxes_to_rois(rois, input) if isinstance(input, Tensor) else rois
            plain = DeformRoIPool2d.forward(self, input, rois, None).flatten(1)
            if offset is None:
                offset = self.offset_fc(plain).view(-1, 2, ph, pw)
            if mask is None:
                mask = torch.sigmoid(self.mask_fc(plain)).view(-1, 1, ph, pw)
        out = DeformRoIPool2d.forward(self, input, rois, offset)
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (out.shape[0], 1, ph, pw):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a Tensor of shape (K, 1, PH, PW) = {(out.shape[0], 1, ph, pw)}, "
                             f"got {shape}")
        return out * mask


__all__ = ["deform_roi_pool", "DeformRoIPool2d", "OffsetDeformRoIPool2d", "ModulatedDeformRoIPool2d", "boxes_to_rois"]
