"""Depthwise 2-D convolution (groups == C_in, C_out = C_in * multiplier): the memory-bound path.

Each output channel ``c`` reads one input channel ``c // MULT`` and one KH x KW filter, so there
is no channel reduction for a tensor core to exploit:

    forward      y[n, c, oh, ow]   = sum_taps x[n, c // MULT, oh*s - p + kh*d, ow*s - p + kw*d] * w[c, 0, kh, kw]
    input grad   dx[n, ci, ih, iw] = sum_{m < MULT} sum_taps dy[n, ci*MULT+m, oh, ow] * w[ci*MULT+m, 0, kh, kw]
                                     over the (oh, ow) with ih = oh*s - p + kh*d, iw = ow*s - p + kw*d
    weight grad  dw[c, 0, kh, kw]  = sum_{n, oh, ow} dy[n, c, oh, ow] * x[n, c // MULT, ih, iw]

How the kernels reuse their input (the idea of large-kernel depthwise convolution, RepLKNet /
MegEngine: load a tile plus its halo once, apply every tap on chip):

* A program owns BLOCK_H image rows x BLOCK_C channels, flattened into one ``q`` axis of
  BLOCK_H * BLOCK_C rows, times a run of columns. For each filter row ``kh`` it loads one
  *segment* per ``q`` row: BLOCK_IW consecutive input columns starting at a multiple of 8 (so
  NCHW rows, contiguous along W, load as 16-byte vectors; channels_last tiles are contiguous
  along the channels, which the compiler then puts on the lanes). Every tap ``kw`` of that filter
  row is then a ``tl.gather`` of the segment along W (register shuffles or one shared-memory
  round trip), not another global load. A segment holds the halo of the program's output
  columns for KC taps at once (KC = all of them unless the row is wider than BLOCK_IW, e.g.
  31-tap filters; then a second segment is loaded).
* Stride, dilation and channel multiplier > 1 use the same kernels (the gather index carries
  the stride and dilation; a forward program covers fewer output columns when the stride is
  larger, so that their input span fits in the segment).
* The weight gradient runs one program per (channel block, split of the N * OH output rows);
  for each tile of BLOCK_H rows x a run of columns it keeps grad_output in registers, loads each
  input segment once, and reduces every tap of the filter in turn into its own rows of a
  workspace ``ws[split, tap, c]`` (read-modify-write by the one program that owns them, with a
  CTA barrier between tiles). The launcher sums the splits in a fixed order (deterministic).

* The same kernels serve kernels/depthwise3d.py: a constexpr DEPTH adds a depth axis, a tile row
  then being a flattened (depth, row) pair; the 2-D launches pass one plane (D = KD = 1) and
  DEPTH=False, which compiles every depth term away.

Weights are handed to the kernels tap-major, ``wt[kh * KW + kw, c]`` (contiguous in channels).
Accumulation is fp32 (fp64 for fp64).

What the compiled code does (PTX of the default config, sm_80 / sm_90, triton 3.6 and 3.8): per
(filter row, segment) two 16-byte loads per thread, staged once through shared memory into the
gather layout; per tap and thread 32 shuffles + 16 selects for 16 FMAs and one weight load, no
shared memory or barrier (forward and input gradient). The weight gradient's per-tap partial sum
is a CTA reduction (shuffles and one shared-memory exchange per tap). Whether shuffles beat the
old per-tap L1 loads has not been timed on a GPU.
"""
from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, autotuned, block_config, cdiv, config_class, _idx, KernelSpec, like_layout, pair, sm_count,
    split_k as _split_k_rule, _unflatten, with_index64,
)
from ._common import launch, needs_int64  # noqa: F401 (this family's hooks: _SELF.launch, ...)

#: input segments start at a multiple of this many elements (16 bytes of fp16 / bf16)
SEG_ALIGN = 8


def _cfg(bh, bc, bw, biw, warps):
    # maxnreg: without a cap, ptxas (12.9) aims these loop nests at an occupancy step (64-80
    # registers) and spills a few loop-invariant values to get there; with .maxnreg it allocates
    # what the loop needs (no spills, ~90-130 registers)
    return block_config(warps, 1, maxnreg=255, BLOCK_H=bh, BLOCK_C=bc, BLOCK_W=bw, BLOCK_IW=biw)


# Autotune configs per config class (kernels._common.config_class); the first of each list is the
# default, which must compile without spills in every build (python -m kernels.inspect).
# BLOCK_IW >= BLOCK_W + 9 (a segment holds the columns of at least one tap, aligned).
_DW = [_cfg(8, 4, 32, 64, 4), _cfg(4, 8, 32, 64, 4), _cfg(2, 16, 32, 64, 4), _cfg(1, 32, 32, 64, 4),
       _cfg(4, 8, 32, 64, 8), _cfg(8, 8, 16, 32, 4), _cfg(4, 16, 64, 128, 8)]
DW_CONFIGS = with_index64({"fp16": _DW, "bf16": _DW, "fp32": _DW, "fp64": _DW})
INTERPRET_CONFIG = {"BLOCK_H": 4, "BLOCK_C": 4, "BLOCK_W": 16, "BLOCK_IW": 32}


def out_cols(meta, stride_w: int) -> int:
    """Output columns of a forward program: at most BLOCK_W, fewer when the stride would carry
    their input span past the segment (the kernel computes the same, ``_out_cols``)."""
    return min(meta["BLOCK_W"], (meta["BLOCK_IW"] - SEG_ALIGN) // stride_w + 1)


def spatial_tiles(meta, N, OH, OW, stride_w=1, out_tile=True) -> int:
    """Programs on grid axis 0 of the forward (``out_tile``) / input-gradient kernels: the batch
    is folded in with the row and column tiles (axis 0 takes 2**31 - 1 programs, axes 1 and 2
    only 65535)."""
    cols = out_cols(meta, stride_w) if out_tile else meta["BLOCK_W"]
    return N * cdiv(OH, meta["BLOCK_H"]) * cdiv(OW, cols)


# ------------------------------------------------------------------------------------- helpers
@triton.jit
def _out_cols(stride_w, BLOCK_W: tl.constexpr, BLOCK_IW: tl.constexpr):
    """Output columns of a program whose segment must hold their input span (see ``out_cols``);
    a compile-time constant when stride_w == 1 (specialised)."""
    return tl.minimum(BLOCK_W, (BLOCK_IW - 8) // stride_w + 1)


@triton.jit
def _rows_channels(r0, c0, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    """The flattened ``q`` axis of a tile: row ``r0 + q // BLOCK_C`` x channel ``c0 + q % BLOCK_C``."""
    q = tl.arange(0, BLOCK_H * BLOCK_C)
    return r0 + q // BLOCK_C, c0 + q % BLOCK_C


@triton.jit
def _flat_rows(D, H, IDX64: tl.constexpr, DEPTH: tl.constexpr):
    """Rows of one image on the tiles' row axis: D * H flattened (depth, row) pairs with DEPTH,
    else the H image rows (tl.cast, not _idx: D == 1 may arrive as a constant)."""
    if DEPTH:
        if IDX64:
            return tl.cast(D, tl.int64) * H
        else:
            return D * H
    else:
        return H


@triton.jit
def _per_q(v, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    """A per-channel vector (BLOCK_C,) repeated over the BLOCK_H rows of the ``q`` axis."""
    return tl.reshape(tl.broadcast_to(v[None, :], (BLOCK_H, BLOCK_C)), (BLOCK_H * BLOCK_C,))


# The loops below spell out three small steps inline (a @triton.jit call inside a loop costs the
# CPU interpreter ~10 ms per call, which the tests would pay per tap):
#   segment  start = ((lo + slack) // 8) * 8 - slack: the multiple of 8 at or below lo (slack, a
#            multiple of 16 >= -lo, keeps the division non-negative and the alignment visible);
#            seg = x[rows, start + [0, BLOCK_IW)] as a [BLOCK_IW, Q] tile, zero outside the image
#   tap      tl.gather(seg, clamp(col), 0): the columns of one tap, from the segment in registers
#   per-q    a per-channel vector (BLOCK_C,) loaded once and repeated over the BLOCK_H rows of q
#            (``_per_q``; loading it per q costs each thread one load per row it holds)


# ------------------------------------------------------------------------------------- kernels
# One kernel per pass serves both depthwise families. DEPTH (constexpr) adds the depth axis of
# kernels/depthwise3d.py: there a tile row is a (depth, row) pair flattened as r = d * H + h, here
# an image row. The 2-D launchers pass D = OD = KD = 1, depth stride and dilation 1, padding 0 and
# DEPTH=False, which leaves every depth term out (ints equal to 1 compile as constants, so the
# depth loop is a single iteration): a 2-D build compiles to the code of a kernel written for 2-D
# alone. The depth's convolution arguments come last: its unused padding then trails the 2-D
# parameters (placed between them, it moved ptxas's allocation by a few registers in one build).
# depthwise3d.py jits the same functions a second time, so its builds keep an autotuner and rows
# in kernels.inspect of their own.
@triton.jit
def _dw_fwd_kernel(
    # pointers
    x_ptr, wt_ptr, b_ptr, y_ptr,
    # shapes
    C_OUT, D, H, W, OD, OH, OW, KD, KH, KW, MULT,
    # strides
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yd, stride_yh, stride_yw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, stride_d, pad_d, dil_d,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IDX64: tl.constexpr, DEPTH: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_IW: tl.constexpr,
):
    # axis 0 = (n, row tile, column tile) folded (axes 1 and 2 stop at 65535); axis 1 = channel block
    OWT = _out_cols(stride_w, BLOCK_W, BLOCK_IW)
    ROWS = _flat_rows(OD, OH, IDX64, DEPTH)
    n, th, tw = _unflatten(_idx(tl.program_id(0), IDX64), tl.cdiv(ROWS, BLOCK_H), tl.cdiv(OW, OWT))
    r, c = _rows_channels(th * BLOCK_H, tl.program_id(1) * BLOCK_C, BLOCK_H, BLOCK_C)
    if DEPTH:
        od = r // OH
        oh = r % OH
    else:
        oh = r
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
        if DEPTH:
            i_d = od * stride_d - pad_d + kd * dil_d
            ok_d = ok_q & (i_d >= 0) & (i_d < D)
            base_d = x_q + i_d * stride_xd
        else:
            ok_d = ok_q
            base_d = x_q
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
        acc += _per_q(tl.load(b_ptr + cb, mask=cb < C_OUT, other=0.0), BLOCK_H, BLOCK_C).to(acc.dtype)[None, :]
    ow = ow0 + j
    if DEPTH:
        y_q = n * stride_yn + _idx(c, IDX64) * stride_yc + od * stride_yd + oh * stride_yh
    else:
        y_q = n * stride_yn + _idx(c, IDX64) * stride_yc + oh * stride_yh
    mask = ((j < OWT) & (ow < OW))[:, None] & ok_q[None, :]
    tl.store(y_ptr + (ow[:, None] * stride_yw + y_q[None, :]), acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _dw_bwd_input_kernel(
    # pointers
    gy_ptr, wt_ptr, b_ptr, gx_ptr,
    # shapes
    C_IN, D, H, W, OD, OH, OW, KD, KH, KW, MULT,
    # strides
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, stride_d, pad_d, dil_d,
    # meta-parameters
    HAS_BIAS: tl.constexpr, IDX64: tl.constexpr, DEPTH: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_IW: tl.constexpr,
):
    # axis 0 = (n, row tile, column tile) of dx; axis 1 = input-channel block
    ROWS = _flat_rows(D, H, IDX64, DEPTH)
    n, th, tw = _unflatten(_idx(tl.program_id(0), IDX64), tl.cdiv(ROWS, BLOCK_H), tl.cdiv(W, BLOCK_W))
    r, ci = _rows_channels(th * BLOCK_H, tl.program_id(1) * BLOCK_C, BLOCK_H, BLOCK_C)
    if DEPTH:
        i_d = r // H
        ih = r % H
    else:
        ih = r
    cb = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    iw0 = tw * BLOCK_W
    iw = iw0 + tl.arange(0, BLOCK_W)
    i = tl.arange(0, BLOCK_IW)
    ok_q = (r < ROWS) & (ci < C_IN)
    C_OUT = C_IN * MULT
    # dx[i] takes dy[o] with o * s = i + p - k * d; shift_* (a multiple of s, > (K-1) * d) keeps
    # the divisions non-negative, so they floor the same on the GPU and in the interpreter
    if DEPTH:
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
            if DEPTH:
                t_d = i_d + pad_d - kd * dil_d + shift_d
                od = t_d // stride_d - shift_d // stride_d
                ok_d = ok_q & (t_d % stride_d == 0) & (od >= 0) & (od < OD)
                base_d = g_q + od * stride_gd
            else:
                ok_d = ok_q
                base_d = g_q
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
    if HAS_BIAS:  # conv_transpose2d's / conv_transpose3d's bias
        acc += _per_q(tl.load(b_ptr + cb, mask=cb < C_IN, other=0.0), BLOCK_H, BLOCK_C).to(acc.dtype)[None, :]
    if DEPTH:
        x_q = n * stride_xn + _idx(ci, IDX64) * stride_xc + i_d * stride_xd + ih * stride_xh
    else:
        x_q = n * stride_xn + _idx(ci, IDX64) * stride_xc + ih * stride_xh
    mask = (iw < W)[:, None] & ok_q[None, :]
    tl.store(gx_ptr + (iw[:, None] * stride_xw + x_q[None, :]), acc.to(gx_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _dw_bwd_weight_kernel(
    # pointers
    x_ptr, gy_ptr, ws_ptr,
    # shapes
    C_OUT, D, H, W, OD, OH, OW, KD, KH, KW, MULT, ROWS, ROWS_PER_SPLIT,
    # strides
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_gn, stride_gc, stride_gd, stride_gh, stride_gw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, stride_d, pad_d, dil_d,
    # meta-parameters
    IDX64: tl.constexpr, DEPTH: tl.constexpr,
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
        if DEPTH:
            t = u // OH
            oh = u % OH
            n = t // OD
            od = t % OD
        else:
            n = u // OH
            oh = u % OH
        ok_q = (u < u_end) & (c < C_OUT)
        if DEPTH:
            g_q = n * stride_gn + _idx(c, IDX64) * stride_gc + od * stride_gd + oh * stride_gh
        else:
            g_q = n * stride_gn + _idx(c, IDX64) * stride_gc + oh * stride_gh  # u0, so n and oh: int64 there
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
                if DEPTH:
                    i_d = od * stride_d - pad_d + kd * dil_d
                    ok_d = ok_q & (i_d >= 0) & (i_d < D)
                    base_d = x_q + i_d * stride_xd
                else:
                    ok_d = ok_q
                    base_d = x_q
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


def tuned_kernels(fwd, bwd_input, bwd_weight, table: dict) -> tuple:
    """The autotuned launchers (config class -> autotuner, see ``autotuned``) of one family's three
    kernels; the keys name the depth extents too (constants 1 in the 2-D family)."""
    return (autotuned(fwd, table, ["C_OUT", "OD", "OH", "OW", "KD", "KH", "KW", "MULT", "stride_w", "stride_xc"]),
            autotuned(bwd_input, table, ["C_IN", "D", "H", "W", "KD", "KH", "KW", "MULT", "stride_w", "stride_gc"]),
            autotuned(bwd_weight, table, ["C_OUT", "OW", "KD", "KH", "KW", "ROWS_PER_SPLIT", "stride_w",
                                          "stride_xc"]))


_fwd_tuned, _bwd_input_tuned, _bwd_weight_tuned = tuned_kernels(_dw_fwd_kernel, _dw_bwd_input_kernel,
                                                                 _dw_bwd_weight_kernel, DW_CONFIGS)


# ------------------------------------------------------------------------------------ launchers
# The three launches below serve both families. ``family`` is the calling module (this one, or
# kernels.depthwise3d): its ``launch``, ``needs_int64`` and ``INTERPRET_CONFIG`` are read at each
# call, so each module's own (as a test may monkeypatch them) apply to its launches. Convolution
# arguments are (d, h, w) triples; a 2-D call has depth stride 1, padding 0, dilation 1.
def _tap_major(weight):
    """(C_out, 1, [KD,] KH, KW) -> (taps, C_out) contiguous: a tap's weights are contiguous in channels."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def _volume(t: torch.Tensor) -> tuple:
    """((N, C, D, H, W), its 5 strides) of a 5-D tensor, or of a 4-D one as a single plane: D = 1
    with depth stride 1 (any stride suits an extent of 1; 1 compiles as a constant, and the 2-D
    kernels never read it)."""
    if t.dim() == 4:
        (n, c, h, w), (sn, sc, sh, sw) = t.shape, t.stride()
        return (n, c, 1, h, w), (sn, sc, 1, sh, sw)
    return tuple(t.shape), t.stride()


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output extent along one axis (F.conv2d's / F.conv3d's formula)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _filter(weight_shape) -> tuple:
    """(C_out, KD, KH, KW) of a (C_out, 1, [KD,] KH, KW) depthwise weight (KD = 1 for 2-D)."""
    return (weight_shape[0], 1, *weight_shape[2:]) if len(weight_shape) == 4 else (weight_shape[0], *weight_shape[2:])


def _hw_then_d(stride, padding, dilation) -> tuple:
    """The kernels' convolution arguments from (d, h, w) triples: the (h, w) ones as in a 2-D
    kernel, then the depth's (a 2-D build passes 1, 0, 1 there, the last of its parameters)."""
    return (*stride[1:], *padding[1:], *dilation[1:], stride[0], padding[0], dilation[0])


def _launch_forward(family, kernel, tuned, x, weight, bias, y, stride, padding, dilation):
    """y (preallocated, (N, C_out, [OD,] OH, OW)) = depthwise conv of x (N, C_in, [D,] H, W)."""
    (N, C_in, D, H, W), x_strides = _volume(x)
    (_, C_out, OD, OH, OW), y_strides = _volume(y)
    _, KD, KH, KW = _filter(weight.shape)
    i64 = family.needs_int64(x, y, N * OD * OH * OW)
    # the flattened (od, oh) rows play the image rows (OD = 1 in 2-D)
    grid = lambda meta: (spatial_tiles(meta, N, OD * OH, OW, stride[2]), cdiv(C_out, meta["BLOCK_C"]))  # noqa: E731
    family.launch(tuned[config_class(tuned, x.dtype, idx64=i64)], kernel, grid, family.INTERPRET_CONFIG,
                  x, _tap_major(weight), bias if bias is not None else weight, y,
                  C_out, D, H, W, OD, OH, OW, KD, KH, KW, C_out // C_in,
                  *x_strides, *y_strides,
                  *_hw_then_d(stride, padding, dilation), HAS_BIAS=bias is not None, IDX64=i64, DEPTH=x.dim() == 5)


def _launch_input_grad(family, kernel, tuned, grad_output, weight, bias, gx, stride, padding, dilation):
    """gx (preallocated, (N, C_in, [D,] H, W)) = dL/dx from grad_output (N, C_out, [OD,] OH, OW)."""
    (N, C_out, OD, OH, OW), g_strides = _volume(grad_output)
    (_, C_in, D, H, W), x_strides = _volume(gx)
    _, KD, KH, KW = _filter(weight.shape)
    i64 = family.needs_int64(grad_output, gx, N * D * H * W)
    grid = lambda meta: (spatial_tiles(meta, N, D * H, W, out_tile=False), cdiv(C_in, meta["BLOCK_C"]))  # noqa: E731
    family.launch(tuned[config_class(tuned, gx.dtype, idx64=i64)], kernel, grid, family.INTERPRET_CONFIG,
                  grad_output, _tap_major(weight), bias if bias is not None else weight, gx,
                  C_in, D, H, W, OD, OH, OW, KD, KH, KW, C_out // C_in,
                  *g_strides, *x_strides,
                  *_hw_then_d(stride, padding, dilation), HAS_BIAS=bias is not None, IDX64=i64, DEPTH=gx.dim() == 5)


def weight_grad_split(rows: int, c_out: int, taps: int, sms: int) -> int:
    """How many programs share the ``rows`` output rows of a channel block in the weight gradient
    (2-D and 3-D): about 4 programs per SM over the ceil(c_out / 16) channel blocks, each at least
    8 rows; the fp32 workspace (splits x taps x c_out) stays <= 64 MiB. 1 without a GPU (sms 0)."""
    cap = max(1, (64 << 20) // (4 * taps * c_out))
    return _split_k_rule(rows, cdiv(c_out, 16), sms, min_chunk=8, programs_per_sm=4, max_splits=min(cap, 65535))


def _launch_weight_grad(family, kernel, tuned, x, grad_output, weight_shape, stride, padding, dilation, split_k):
    """dL/dweight (C_out, 1, [KD,] KH, KW), contiguous, x's dtype; ``split_k`` programs (default:
    ``weight_grad_split``) share the N * OD * OH output rows of a channel block, each into its own
    slice of an fp32 (fp64) workspace, summed here in a fixed order (deterministic)."""
    (N, C_in, D, H, W), x_strides = _volume(x)
    (_, _, OD, OH, OW), g_strides = _volume(grad_output)
    C_out, KD, KH, KW = _filter(weight_shape)
    rows, taps = N * OD * OH, KD * KH * KW
    if rows == 0 or OW == 0 or C_out == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=x.dtype)
    if split_k is None:
        split_k = weight_grad_split(rows, C_out, taps, sm_count(x.device))
    rows_per_split = cdiv(rows, split_k)
    split_k = cdiv(rows, rows_per_split)
    ws = torch.zeros((split_k, taps, C_out), device=x.device, dtype=accumulator_dtype(x.dtype))
    grid = lambda meta: (cdiv(C_out, meta["BLOCK_C"]), split_k)  # noqa: E731
    i64 = family.needs_int64(x, grad_output, ws, N * OD * OH * OW, split_k * rows_per_split)
    family.launch(tuned[config_class(tuned, x.dtype, idx64=i64)], kernel, grid, family.INTERPRET_CONFIG,
                  x, grad_output, ws,
                  C_out, D, H, W, OD, OH, OW, KD, KH, KW, C_out // C_in, rows, rows_per_split,
                  *x_strides, *g_strides,
                  *_hw_then_d(stride, padding, dilation), IDX64=i64, DEPTH=x.dim() == 5)
    # splits summed in a fixed order: deterministic
    return ws.sum(0).t().reshape(weight_shape).to(x.dtype).contiguous()


#: this module, as the ``family`` of the shared launches
_SELF = sys.modules[__name__]


def _plane(v) -> tuple:
    """A 2-D (h, w) stride / padding / dilation as the kernels' (d, h, w) triple (depth: one plane)."""
    return (1, *pair(v))


def depthwise_forward(x, weight, bias, stride, padding, dilation):
    """x: (N, C_in, H, W), NCHW or channels_last (any strides); weight: (C_in * MULT, 1, KH, KW);
    bias: (C_in * MULT,) or None -> (N, C_in * MULT, OH, OW) in x's memory format."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    y = like_layout(x, (N, C_out, _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)))
    if y.numel() == 0:
        return y
    _launch_forward(_SELF, _dw_fwd_kernel, _fwd_tuned, x, weight, bias, y,
                    _plane(stride), (0, ph, pw), _plane(dilation))
    return y


def depthwise_input_grad(grad_output, weight, input_shape, stride, padding, dilation, bias=None):
    """grad_output: (N, C_in * MULT, OH, OW) -> dL/dx (N, C_in, H, W) in grad_output's memory
    format. With ``bias`` (C_in,) this is the depthwise conv_transpose2d."""
    gx = like_layout(grad_output, tuple(input_shape))
    if gx.numel() == 0:
        return gx
    _launch_input_grad(_SELF, _dw_bwd_input_kernel, _bwd_input_tuned, grad_output, weight, bias, gx,
                       _plane(stride), (0, *pair(padding)), _plane(dilation))
    return gx


def depthwise_weight_grad(x, grad_output, weight_shape, stride, padding, dilation, split_k=None):
    """dL/dweight (C_in * MULT, 1, KH, KW), contiguous. ``split_k``: how many programs share the
    N * OH output rows of a channel block (default: enough to fill the GPU; 1 on CPU)."""
    return _launch_weight_grad(_SELF, _dw_bwd_weight_kernel, _bwd_weight_tuned, x, grad_output,
                               tuple(weight_shape), _plane(stride), (0, *pair(padding)), _plane(dilation), split_k)


AOT_SPECS = [
    KernelSpec("depthwise_fwd", _dw_fwd_kernel, DW_CONFIGS),
    KernelSpec("depthwise_bwd_input", _dw_bwd_input_kernel, DW_CONFIGS),
    KernelSpec("depthwise_bwd_weight", _dw_bwd_weight_kernel, DW_CONFIGS),
]
