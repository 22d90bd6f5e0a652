"""Depthwise 3-D convolution (groups == C_in, C_out = C_in * multiplier): X3D-style channelwise
KD x KH x KW filters, the memory-bound path of the conv3d family.

Each output channel ``c`` reads one input channel ``c // MULT`` and one KD x KH x KW filter, so
there is no channel reduction for a tensor core to exploit:

    forward      y[n, c, od, oh, ow]   = sum_taps x[n, c // MULT, id, ih, iw] * w[c, 0, kd, kh, kw]
    input grad   dx[n, ci, id, ih, iw] = sum_{m < MULT} sum_taps dy[n, ci*MULT+m, od, oh, ow]
                                                                 * w[ci*MULT+m, 0, kd, kh, kw]
    weight grad  dw[c, 0, kd, kh, kw]  = sum_{n, od, oh, ow} dy[n, c, od, oh, ow] * x[n, c // MULT, id, ih, iw]
    with id = od*s_d - p_d + kd*d_d, ih = oh*s_h - p_h + kh*d_h, iw = ow*s_w - p_w + kw*d_w

The kernels are those of the 2-D depthwise path (kernels/depthwise.py, whose docstring explains
the design; the same functions, launched with DEPTH=True) with one change: what the 2-D kernels
call an image *row* is here a (depth, row) pair, flattened as ``r = d * H + h``. So:

* A forward / input-gradient program owns BLOCK_H flattened (d, h) rows x BLOCK_C channels (the
  ``q`` axis of BLOCK_H * BLOCK_C) times a run of columns. For each filter plane and row
  ``(kd, kh)`` it loads one aligned *segment* of BLOCK_IW input columns per ``q`` row, once, and
  applies every tap ``kw`` of that filter row from registers (``tl.gather`` along W). In
  channels_last_3d the channels are contiguous (the compiler puts them on the lanes, BLOCK_C of
  them per vector); in NCDHW the segment's columns are (16-byte aligned segments along W).
* The weight gradient runs one program per (channel block, split of the N * OD * OH output rows);
  per tile it keeps dy in registers, loads each input segment once and reduces every tap of the
  filter in turn into its own rows of a workspace ``ws[split, tap, c]`` (read-modify-write by the
  one program that owns them; no atomics). The launcher sums the splits in a fixed order, so the
  weight gradient is deterministic, as the 2-D one is.
* Stride, dilation (per axis), depth multiplier > 1 and symmetric padding use the same kernels.

Weights are handed to the kernels tap-major, ``wt[(kd * KH + kh) * KW + kw, c]`` (contiguous in
channels). Accumulation is fp32 (fp64 for fp64). Index arithmetic is 32-bit unless a tensor or a
flattened extent needs 64 bits (``IDX64``, see kernels._common.needs_int64).
"""
from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from ._common import KernelSpec, with_index64
from ._common import launch, needs_int64  # noqa: F401 (this family's hooks: _SELF.launch, ...)
from . import depthwise as _dw
from .depthwise import _cfg, _DW, _out_size

# Autotune configs per config class (kernels._common.config_class); the first of each list is the
# default, which must compile without spills in every build (python -m kernels.aot). The 2-D
# depthwise table (more flattened (d, h) rows per program first suits X3D stages too: few channels
# per block of 16-byte vectors' worth and many rows), except:
# fp64 with 64-bit indices: the default's weight gradient spills (255 registers, 16-176 B on
# sm_90 / sm_80, kernels.aot); half the columns per tile fit
_DW3_FP64_I64 = [_cfg(8, 4, 16, 32, 4), _cfg(4, 8, 16, 32, 4)]
DW3_CONFIGS = with_index64({"fp16": _DW, "bf16": _DW, "fp32": _DW, "fp64": _DW}, fp64=_DW3_FP64_I64)
# interpreter: many (d, h) rows per program, since the interpreter's cost is per program and op,
# not per element (tests/ops/test_depthwise3d.py also runs small tiles, to cross tile edges)
INTERPRET_CONFIG = {"BLOCK_H": 64, "BLOCK_C": 4, "BLOCK_W": 8, "BLOCK_IW": 32}


# ------------------------------------------------------------------------------------- kernels
# The 2-D family's kernels with their depth axis on (DEPTH=True at launch), jitted once more so
# that these builds have their own autotuners and their own rows in kernels.inspect (the compiled
# kernels keep the 2-D names).
_dw3_fwd_kernel = triton.jit(_dw._dw_fwd_kernel.fn)
_dw3_bwd_input_kernel = triton.jit(_dw._dw_bwd_input_kernel.fn)
_dw3_bwd_weight_kernel = triton.jit(_dw._dw_bwd_weight_kernel.fn)
_fwd_tuned, _bwd_input_tuned, _bwd_weight_tuned = _dw.tuned_kernels(_dw3_fwd_kernel, _dw3_bwd_input_kernel,
                                                                    _dw3_bwd_weight_kernel, DW3_CONFIGS)


# ------------------------------------------------------------------------------------ launchers
# The launches are kernels.depthwise's (_launch_forward, ...), with this module as their family:
# its launch, needs_int64 and INTERPRET_CONFIG, read at each call.
_SELF = sys.modules[__name__]


def triple(v, name: str = "argument") -> tuple:
    """int or 3 ints -> (d, h, w); anything else is a ValueError naming ``name``."""
    if isinstance(v, int):
        return (v, v, v)
    v = tuple(v)
    if len(v) != 3 or not all(isinstance(e, int) for e in v):
        raise ValueError(f"{name} must be an int or 3 ints (d, h, w), got {v!r}")
    return v


def like_layout_3d(ref: torch.Tensor, shape) -> torch.Tensor:
    """Empty 5-D tensor of ``shape`` in ``ref``'s memory format (channels_last_3d stays so)."""
    cl = ref.dim() == 5 and ref.is_contiguous(memory_format=torch.channels_last_3d) and not ref.is_contiguous()
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    return torch.empty(shape, device=ref.device, dtype=ref.dtype, memory_format=fmt)


def _check_weight(weight_shape, c_in: int) -> tuple:
    """(C_out, KD, KH, KW) of a depthwise weight, or a ValueError naming the expected shape."""
    shape = tuple(weight_shape)
    if len(shape) != 5 or shape[1] != 1 or shape[0] == 0 or c_in == 0 or shape[0] % c_in:
        raise ValueError(f"weight must have shape (C_in * multiplier, 1, KD, KH, KW) with C_in = {c_in}, "
                         f"got {shape}")
    return shape[0], shape[2], shape[3], shape[4]


def _check_5d(t: torch.Tensor, name: str) -> None:
    if t.dim() != 5:
        raise ValueError(f"{name} must be 5-D (N, C, D, H, W), got shape {tuple(t.shape)}")


def depthwise3d_forward(x, weight, bias, stride, padding, dilation):
    """Depthwise conv3d, F.conv3d(x, weight, bias, stride, padding, dilation, groups=C_in).

    Args:
        x (Tensor[N, C_in, D, H, W]): NCDHW or channels_last_3d (any strides).
        weight (Tensor[C_in * MULT, 1, KD, KH, KW]): MULT >= 1 is the depth multiplier.
        bias (Tensor[C_in * MULT] or None)
        stride, padding, dilation: int or 3 ints (d, h, w); padding is symmetric.

    Returns:
        Tensor[N, C_in * MULT, OD, OH, OW] in x's memory format, x's dtype.
    """
    _check_5d(x, "x")
    N, C_in, D, H, W = x.shape
    C_out, KD, KH, KW = _check_weight(weight.shape, C_in)
    (sd, sh, sw), (pd, ph, pw) = triple(stride, "stride"), triple(padding, "padding")
    (dd, dh, dw) = triple(dilation, "dilation")
    OD, OH, OW = _out_size(D, KD, sd, pd, dd), _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    if min(OD, OH, OW) < 0:
        raise ValueError(f"x of shape {tuple(x.shape)} is smaller than the dilated kernel (after padding)")
    y = like_layout_3d(x, (N, C_out, OD, OH, OW))
    if y.numel() == 0:
        return y
    _dw._launch_forward(_SELF, _dw3_fwd_kernel, _fwd_tuned, x, weight, bias, y, (sd, sh, sw), (pd, ph, pw),
                        (dd, dh, dw))
    return y


def depthwise3d_input_grad(grad_output, weight, input_shape, stride, padding, dilation, bias=None):
    """dL/dx of the depthwise conv3d; with ``bias`` it is the depthwise conv_transpose3d
    (F.conv_transpose3d(grad_output, weight, bias, stride, padding, output_padding, groups=C_in),
    the output_padding being implied by ``input_shape``).

    Args:
        grad_output (Tensor[N, C_in * MULT, OD, OH, OW]): NCDHW or channels_last_3d.
        weight (Tensor[C_in * MULT, 1, KD, KH, KW])
        input_shape: (N, C_in, D, H, W) of x.
        bias (Tensor[C_in] or None): added to every output element (conv_transpose3d's bias).

    Returns:
        Tensor[N, C_in, D, H, W] in grad_output's memory format and dtype.
    """
    _check_5d(grad_output, "grad_output")
    N, C_in, D, H, W = input_shape
    C_out = _check_weight(weight.shape, C_in)[0]
    if grad_output.shape[:2] != (N, C_out):
        raise ValueError(f"grad_output must have shape (N={N}, C_out={C_out}, OD, OH, OW), "
                         f"got {tuple(grad_output.shape)}")
    (sd, sh, sw), (pd, ph, pw) = triple(stride, "stride"), triple(padding, "padding")
    (dd, dh, dw) = triple(dilation, "dilation")
    gx = like_layout_3d(grad_output, (N, C_in, D, H, W))
    if gx.numel() == 0:
        return gx
    _dw._launch_input_grad(_SELF, _dw3_bwd_input_kernel, _bwd_input_tuned, grad_output, weight, bias, gx,
                           (sd, sh, sw), (pd, ph, pw), (dd, dh, dw))
    return gx


def depthwise3d_weight_grad(x, grad_output, weight_shape, stride, padding, dilation, split_k=None):
    """dL/dweight of the depthwise conv3d, deterministic (no atomics: per-split partial sums in an
    fp32 workspace, fp64 for fp64, summed in a fixed order).

    Args:
        x (Tensor[N, C_in, D, H, W]), grad_output (Tensor[N, C_in * MULT, OD, OH, OW]): any layout.
        weight_shape: (C_in * MULT, 1, KD, KH, KW).
        split_k: how many programs share the N * OD * OH output rows of a channel block (default:
            enough to fill the GPU; 1 on CPU).

    Returns:
        Tensor[C_in * MULT, 1, KD, KH, KW], contiguous, x's dtype.
    """
    _check_5d(x, "x")
    _check_5d(grad_output, "grad_output")
    _check_weight(weight_shape, x.shape[1])
    (sd, sh, sw), (pd, ph, pw) = triple(stride, "stride"), triple(padding, "padding")
    (dd, dh, dw) = triple(dilation, "dilation")
    return _dw._launch_weight_grad(_SELF, _dw3_bwd_weight_kernel, _bwd_weight_tuned, x, grad_output,
                                   tuple(weight_shape), (sd, sh, sw), (pd, ph, pw), (dd, dh, dw), split_k)

AOT_SPECS = [
    KernelSpec("depthwise3d_fwd", _dw3_fwd_kernel, DW3_CONFIGS),
    KernelSpec("depthwise3d_bwd_input", _dw3_bwd_input_kernel, DW3_CONFIGS),
    KernelSpec("depthwise3d_bwd_weight", _dw3_bwd_weight_kernel, DW3_CONFIGS),
]
