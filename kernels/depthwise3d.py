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
the design) with one change: what the 2-D kernels call an image *row* is here a (depth, row)
pair, flattened as ``r = d * H + h``. So:

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

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, autotuned, cdiv, config_class, _idx, KernelSpec, launch, needs_int64, _unflatten,
    with_index64,
)
from .depthwise import _cfg, _out_cols, _rows_channels, _tap_major, out_cols, spatial_tiles

# Autotune configs per config class (kernels._common.config_class); the first of each list is the
# default, which must compile without spills in every build (python -m kernels.aot).
# BLOCK_IW >= BLOCK_W + 9 (a segment holds the columns of at least one tap, aligned). The 2-D
# depthwise table, with more flattened (d, h) rows per program first: X3D stages have few channels
# per block of 16-byte vectors' worth and many rows.
_DW3 = [_cfg(8, 4, 32, 64, 4), _cfg(4, 8, 32, 64, 4), _cfg(2, 16, 32, 64, 4), _cfg(1, 32, 32, 64, 4),
        _cfg(4, 8, 32, 64, 8), _cfg(8, 8, 16, 32, 4), _cfg(4, 16, 64, 128, 8)]
# fp64 with 64-bit indices: the default's weight gradient spills (255 registers, 16-176 B on
# sm_90 / sm_80, kernels.aot); half the columns per tile fit
_DW3_FP64_I64 = [_cfg(8, 4, 16, 32, 4), _cfg(4, 8, 16, 32, 4)]
DW3_CONFIGS = with_index64({"fp16": _DW3, "bf16": _DW3, "fp32": _DW3, "fp64": _DW3}, fp64=_DW3_FP64_I64)
# interpreter: many (d, h) rows per program, since the interpreter's cost is per program and op,
# not per element (tests/ops/test_depthwise3d.py also runs small tiles, to cross tile edges)
INTERPRET_CONFIG = {"BLOCK_H": 64, "BLOCK_C": 4, "BLOCK_W": 8, "BLOCK_IW": 32}


# ------------------------------------------------------------------------------------- kernels
# As in kernels/depthwise.py the segment / tap / per-q steps are spelled out inline in the loops
# (a @triton.jit call inside a loop costs the CPU interpreter ~10 ms per call, paid per tap).
@triton.jit
def _dw3_fwd_kernel(
    # pointers
    x_ptr, wt_ptr, b_ptr, y_ptr,
    # shapes
    C_OUT, D, H, W, OD, OH, OW, KD, KH, KW, MULT,
    # strides
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yd, stride_yh, stride_yw,
    # convolution
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_IW: tl.constexpr,
):
    # axis 0 = (n, (d, h)-row tile, column tile) folded (axes 1 and 2 stop at 65535); axis 1 = channel block
    OWT = _out_cols(stride_w, BLOCK_W, BLOCK_IW)
    # flattened (od, oh) rows of one image (tl.cast, not _idx: OD == 1 arrives as a constant)
    if IDX64:
        ROWS = tl.cast(OD, tl.int64) * OH
    else:
        ROWS = OD * OH
    n, th, tw = _unflatten(_idx(tl.program_id(0), IDX64), tl.cdiv(ROWS, BLOCK_H), tl.cdiv(OW, OWT))
    r, c = _rows_channels(th * BLOCK_H, tl.program_id(1) * BLOCK_C, BLOCK_H, BLOCK_C)
    od = r // OH
    oh = r % OH
    ow0 = tw * OWT
    j = tl.arange(0, BLOCK_W)
    i = tl.arange(0, BLOCK_IW)
    cb = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok_q = (r < ROWS) & (c < C_OUT)
    x_q = n * stride_xn + _idx(c // MULT, IDX64) * stride_xc
    # taps per segment: the span of OWT columns and KC taps (+ 7 alignment) fits in BLOCK_IW
    KC = (BLOCK_IW - 8 - (OWT - 1) * stride_w) // dil_w + 1
    slack = ((pad_w + 15) // 16) * 16
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_W, BLOCK_H * BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_W, BLOCK_H * BLOCK_C), dtype=tl.float32)
    for kd in range(KD):
        i_d = od * stride_d - pad_d + kd * dil_d
        ok_d = ok_q & (i_d >= 0) & (i_d < D)
        base_d = x_q + i_d * stride_xd
        for kh in range(KH):
            ih = oh * stride_h - pad_h + kh * dil_h
            ok = ok_d & (ih >= 0) & (ih < H)
            base = base_d + ih * stride_xh  # int64 in the 64-bit build (r is)
            for k0 in range(0, KW, KC):
                # segment: input columns [start, start + BLOCK_IW) of every q row, aligned
                start = ((ow0 * stride_w - pad_w + k0 * dil_w + slack) // 8) * 8 - slack
                cols = start + i
                seg = tl.load(x_ptr + (cols[:, None] * stride_xw + base[None, :]),
                              mask=((cols >= 0) & (cols < W))[:, None] & ok[None, :], other=0.0)
                col0 = ow0 * stride_w + j * stride_w - pad_w - start
                for kw in range(k0, tl.minimum(k0 + KC, KW)):
                    # tap: its columns gathered from the segment
                    col = tl.minimum(tl.maximum(col0 + kw * dil_w, 0), BLOCK_IW - 1)
                    xs = tl.gather(seg, tl.broadcast_to(col[:, None], (BLOCK_W, BLOCK_H * BLOCK_C)), 0)
                    wv = tl.load(wt_ptr + ((kd * KH + kh) * KW + kw) * C_OUT + cb, mask=cb < C_OUT, other=0.0)
                    wq = tl.reshape(tl.broadcast_to(wv[None, :], (BLOCK_H, BLOCK_C)), (BLOCK_H * BLOCK_C,))
                    acc += xs.to(acc.dtype) * wq.to(acc.dtype)[None, :]
    if HAS_BIAS:
        bv = tl.load(b_ptr + cb, mask=cb < C_OUT, other=0.0)
        acc += tl.reshape(tl.broadcast_to(bv[None, :], (BLOCK_H, BLOCK_C)), (BLOCK_H * BLOCK_C,)).to(acc.dtype)[None, :]
    ow = ow0 + j
    y_q = n * stride_yn + _idx(c, IDX64) * stride_yc + od * stride_yd + oh * stride_yh
    mask = ((j < OWT) & (ow < OW))[:, None] & ok_q[None, :]
    tl.store(y_ptr + (ow[:, None] * stride_yw + y_q[None, :]), acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _dw3_bwd_input_kernel(
    # pointers
    gy_ptr, wt_ptr, b_ptr, gx_ptr,
    # shapes
    C_IN, D, H, W, OD, OH, OW, KD, KH, KW, MULT,
    # strides
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    # convolution
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_IW: tl.constexpr,
):
    # axis 0 = (n, (d, h)-row tile, column tile) of dx; axis 1 = input-channel block
    if IDX64:  # flattened (d, h) rows of one image
        ROWS = tl.cast(D, tl.int64) * H
    else:
        ROWS = D * H
    n, th, tw = _unflatten(_idx(tl.program_id(0), IDX64), tl.cdiv(ROWS, BLOCK_H), tl.cdiv(W, BLOCK_W))
    r, ci = _rows_channels(th * BLOCK_H, tl.program_id(1) * BLOCK_C, BLOCK_H, BLOCK_C)
    i_d = r // H
    ih = r % H
    cb = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    iw0 = tw * BLOCK_W
    iw = iw0 + tl.arange(0, BLOCK_W)
    i = tl.arange(0, BLOCK_IW)
    ok_q = (r < ROWS) & (ci < C_IN)
    C_OUT = C_IN * MULT
    # dx[i] takes dy[o] with o * s = i + p - k * d; shift_* (a multiple of s, > (K-1) * d) keeps
    # the divisions non-negative, so they floor the same on the GPU and in the interpreter
    shift_d = ((KD - 1) * dil_d // stride_d + 1) * stride_d
    shift_h = ((KH - 1) * dil_h // stride_h + 1) * stride_h
    shift_w = ((KW - 1) * dil_w // stride_w + 1) * stride_w
    slack = ((shift_w // stride_w + 15) // 16) * 16
    # taps per segment: their span of dy columns ((BLOCK_W - 1 + (KC - 1) * d) / s + 1, + 7) fits
    KC = (stride_w * (BLOCK_IW - 8) - (BLOCK_W - 1)) // dil_w + 1
    if gy_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_W, BLOCK_H * BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_W, BLOCK_H * BLOCK_C), dtype=tl.float32)
    for m in range(MULT):
        co = ci * MULT + m
        g_q = n * stride_gn + _idx(co, IDX64) * stride_gc
        for kd in range(KD):
            t_d = i_d + pad_d - kd * dil_d + shift_d
            od = t_d // stride_d - shift_d // stride_d
            ok_d = ok_q & (t_d % stride_d == 0) & (od >= 0) & (od < OD)
            base_d = g_q + od * stride_gd
            for kh in range(KH):
                t_h = ih + pad_h - kh * dil_h + shift_h
                oh = t_h // stride_h - shift_h // stride_h
                ok = ok_d & (t_h % stride_h == 0) & (oh >= 0) & (oh < OH)
                base = base_d + oh * stride_gh  # int64 in the 64-bit build (r is)
                for k0 in range(0, KW, KC):
                    k1 = tl.minimum(k0 + KC, KW)
                    # segment: the dy columns of taps [k0, k1), from an aligned start
                    lo = (iw0 + pad_w - (k1 - 1) * dil_w + shift_w) // stride_w - shift_w // stride_w
                    start = ((lo + slack) // 8) * 8 - slack
                    cols = start + i
                    seg = tl.load(gy_ptr + (cols[:, None] * stride_gw + base[None, :]),
                                  mask=((cols >= 0) & (cols < OW))[:, None] & ok[None, :], other=0.0)
                    for kw in range(k0, k1):
                        # tap: dx[iw] takes dy[ow] where ow * s == iw + p - kw * d
                        t_w = iw + pad_w - kw * dil_w + shift_w
                        col = tl.minimum(tl.maximum(t_w // stride_w - shift_w // stride_w - start, 0), BLOCK_IW - 1)
                        gs = tl.gather(seg, tl.broadcast_to(col[:, None], (BLOCK_W, BLOCK_H * BLOCK_C)), 0)
                        gs = tl.where((t_w % stride_w == 0)[:, None], gs.to(acc.dtype), 0.0)
                        wv = tl.load(wt_ptr + ((kd * KH + kh) * KW + kw) * C_OUT + cb * MULT + m, mask=cb < C_IN,
                                     other=0.0)
                        wq = tl.reshape(tl.broadcast_to(wv[None, :], (BLOCK_H, BLOCK_C)), (BLOCK_H * BLOCK_C,))
                        acc += gs * wq.to(acc.dtype)[None, :]
    if HAS_BIAS:  # conv_transpose3d's bias
        bv = tl.load(b_ptr + cb, mask=cb < C_IN, other=0.0)
        acc += tl.reshape(tl.broadcast_to(bv[None, :], (BLOCK_H, BLOCK_C)), (BLOCK_H * BLOCK_C,)).to(acc.dtype)[None, :]
    x_q = n * stride_xn + _idx(ci, IDX64) * stride_xc + i_d * stride_xd + ih * stride_xh
    mask = (iw < W)[:, None] & ok_q[None, :]
    tl.store(gx_ptr + (iw[:, None] * stride_xw + x_q[None, :]), acc.to(gx_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _dw3_bwd_weight_kernel(
    # pointers
    x_ptr, gy_ptr, ws_ptr,
    # shapes
    C_OUT, D, H, W, OD, OH, OW, KD, KH, KW, MULT, ROWS, ROWS_PER_SPLIT,
    # strides
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    # convolution
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # meta-parameters
    IDX64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_IW: tl.constexpr,
):
    # One program: BLOCK_C channels x the output rows [u_start, u_end) of the ROWS = N * OD * OH
    # rows, every tap; partial sums accumulate in ws[split, tap, c] (this program's rows alone).
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    OWT = _out_cols(stride_w, BLOCK_W, BLOCK_IW)
    KC = (BLOCK_IW - 8 - (OWT - 1) * stride_w) // dil_w + 1
    slack = ((pad_w + 15) // 16) * 16
    taps = KD * KH * KW
    u_start = _idx(split, IDX64) * ROWS_PER_SPLIT  # int64 in the 64-bit build (so the loop is)
    u_end = tl.minimum(u_start + ROWS_PER_SPLIT, ROWS)
    q_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    ws_c = ws_ptr + _idx(split, IDX64) * taps * C_OUT + q_c
    j = _idx(tl.arange(0, BLOCK_W), IDX64)  # so ow, the segment columns and their offsets are int64 there
    i = tl.arange(0, BLOCK_IW)
    for u0 in range(u_start, u_end, BLOCK_H):
        u, c = _rows_channels(u0, pid_c * BLOCK_C, BLOCK_H, BLOCK_C)
        t = u // OH
        oh = u % OH
        n = t // OD
        od = t % OD
        ok_q = (u < u_end) & (c < C_OUT)
        g_q = n * stride_gn + _idx(c, IDX64) * stride_gc + od * stride_gd + oh * stride_gh
        x_q = n * stride_xn + _idx(c // MULT, IDX64) * stride_xc
        for ow0 in range(0, OW, OWT):
            ow = ow0 + j
            gy = tl.load(gy_ptr + (ow[:, None] * stride_gw + g_q[None, :]),
                         mask=(ow < OW)[:, None] & ok_q[None, :], other=0.0)
            if x_ptr.dtype.element_ty == tl.float64:
                gy = tl.where((j < OWT)[:, None], gy.to(tl.float64), 0.0)
            else:
                gy = tl.where((j < OWT)[:, None], gy.to(tl.float32), 0.0)
            for kd in range(KD):
                i_d = od * stride_d - pad_d + kd * dil_d
                ok_d = ok_q & (i_d >= 0) & (i_d < D)
                base_d = x_q + i_d * stride_xd
                for kh in range(KH):
                    ih = oh * stride_h - pad_h + kh * dil_h
                    ok = ok_d & (ih >= 0) & (ih < H)
                    base = base_d + ih * stride_xh
                    for k0 in range(0, KW, KC):
                        # segment: input columns [start, start + BLOCK_IW) of every q row, aligned
                        start = ((ow0 * stride_w - pad_w + k0 * dil_w + slack) // 8) * 8 - slack
                        cols = start + i
                        seg = tl.load(x_ptr + (cols[:, None] * stride_xw + base[None, :]),
                                      mask=((cols >= 0) & (cols < W))[:, None] & ok[None, :], other=0.0)
                        col0 = ow * stride_w - pad_w - start
                        for kw in range(k0, tl.minimum(k0 + KC, KW)):
                            # tap: its columns gathered from the segment, times dy, summed over the tile
                            col = tl.minimum(tl.maximum(col0 + kw * dil_w, 0), BLOCK_IW - 1)
                            xs = tl.gather(seg, tl.broadcast_to(col[:, None], (BLOCK_W, BLOCK_H * BLOCK_C)), 0)
                            part = tl.sum(tl.reshape(gy * xs.to(gy.dtype), (BLOCK_W * BLOCK_H, BLOCK_C)), axis=0)
                            ptrs = ws_c + ((kd * KH + kh) * KW + kw) * C_OUT
                            tl.store(ptrs, tl.load(ptrs, mask=q_c < C_OUT, other=0.0) + part, mask=q_c < C_OUT)
            # the next tile reads what this one wrote (other threads of the CTA may hold those lanes)
            tl.debug_barrier()


_fwd_tuned = autotuned(_dw3_fwd_kernel, DW3_CONFIGS, ["C_OUT", "OD", "OH", "OW", "KD", "KH", "KW", "MULT",
                                                      "stride_w", "stride_xc"])
_bwd_input_tuned = autotuned(_dw3_bwd_input_kernel, DW3_CONFIGS, ["C_IN", "D", "H", "W", "KD", "KH", "KW", "MULT",
                                                                  "stride_w", "stride_gc"])
_bwd_weight_tuned = autotuned(_dw3_bwd_weight_kernel, DW3_CONFIGS, ["C_OUT", "OW", "KD", "KH", "KW",
                                                                    "ROWS_PER_SPLIT", "stride_w", "stride_xc"])


# ------------------------------------------------------------------------------------ launchers
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


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


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
    i64 = needs_int64(x, y, N * OD * OH * OW)
    # the flattened (od, oh) rows play the 2-D kernel's image rows
    grid = lambda meta: (spatial_tiles(meta, N, OD * OH, OW, sw), cdiv(C_out, meta["BLOCK_C"]))  # noqa: E731
    launch(_fwd_tuned[config_class(_fwd_tuned, x.dtype, idx64=i64)], _dw3_fwd_kernel, grid, INTERPRET_CONFIG,
           x, _tap_major(weight), bias if bias is not None else weight, y,
           C_out, D, H, W, OD, OH, OW, KD, KH, KW, C_out // C_in,
           *x.stride(), *y.stride(),
           sd, sh, sw, pd, ph, pw, dd, dh, dw, HAS_BIAS=bias is not None, IDX64=i64)
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
    C_out, KD, KH, KW = _check_weight(weight.shape, C_in)
    if grad_output.shape[:2] != (N, C_out):
        raise ValueError(f"grad_output must have shape (N={N}, C_out={C_out}, OD, OH, OW), "
                         f"got {tuple(grad_output.shape)}")
    OD, OH, OW = grad_output.shape[-3:]
    (sd, sh, sw), (pd, ph, pw) = triple(stride, "stride"), triple(padding, "padding")
    (dd, dh, dw) = triple(dilation, "dilation")
    gx = like_layout_3d(grad_output, (N, C_in, D, H, W))
    if gx.numel() == 0:
        return gx
    i64 = needs_int64(grad_output, gx, N * D * H * W)
    grid = lambda meta: (spatial_tiles(meta, N, D * H, W, out_tile=False), cdiv(C_in, meta["BLOCK_C"]))  # noqa: E731
    launch(_bwd_input_tuned[config_class(_bwd_input_tuned, gx.dtype, idx64=i64)], _dw3_bwd_input_kernel, grid,
           INTERPRET_CONFIG,
           grad_output, _tap_major(weight), bias if bias is not None else weight, gx,
           C_in, D, H, W, OD, OH, OW, KD, KH, KW, C_out // C_in,
           *grad_output.stride(), *gx.stride(),
           sd, sh, sw, pd, ph, pw, dd, dh, dw, HAS_BIAS=bias is not None, IDX64=i64)
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
    N, C_in, D, H, W = x.shape
    C_out, KD, KH, KW = _check_weight(weight_shape, C_in)
    OD, OH, OW = grad_output.shape[-3:]
    (sd, sh, sw), (pd, ph, pw) = triple(stride, "stride"), triple(padding, "padding")
    (dd, dh, dw) = triple(dilation, "dilation")
    rows = N * OD * OH
    if rows == 0 or OW == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=x.dtype)
    taps = KD * KH * KW
    if split_k is None:
        split_k = 1
        if x.device.type == "cuda":
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            # ~4 programs per SM, each at least 8 rows; the workspace stays <= 64 MiB of fp32
            cap = max(1, (64 << 20) // (4 * taps * C_out))
            split_k = max(1, min(4 * sms // cdiv(C_out, 16), cdiv(rows, 8), cap, 65535))
    rows_per_split = cdiv(rows, split_k)
    split_k = cdiv(rows, rows_per_split)
    ws = torch.zeros((split_k, taps, C_out), device=x.device, dtype=accumulator_dtype(x.dtype))
    grid = lambda meta: (cdiv(C_out, meta["BLOCK_C"]), split_k)  # noqa: E731
    i64 = needs_int64(x, grad_output, ws, N * OD * OH * OW, split_k * rows_per_split)
    launch(_bwd_weight_tuned[config_class(_bwd_weight_tuned, x.dtype, idx64=i64)], _dw3_bwd_weight_kernel, grid,
           INTERPRET_CONFIG,
           x, grad_output, ws,
           C_out, D, H, W, OD, OH, OW, KD, KH, KW, C_out // C_in, rows, rows_per_split,
           *x.stride(), *grad_output.stride(),
           sd, sh, sw, pd, ph, pw, dd, dh, dw, IDX64=i64)
    # splits summed in a fixed order: deterministic
    return ws.sum(0).t().reshape(weight_shape).to(x.dtype).contiguous()


AOT_SPECS = [
    KernelSpec("depthwise3d_fwd", _dw3_fwd_kernel, DW3_CONFIGS),
    KernelSpec("depthwise3d_bwd_input", _dw3_bwd_input_kernel, DW3_CONFIGS),
    KernelSpec("depthwise3d_bwd_weight", _dw3_bwd_weight_kernel, DW3_CONFIGS),
]
