"""Deformable convolution (DCNv1 / DCNv2) and the bilinear gather it is built on.

Sampling rule (torchvision's ``deform_conv2d``): a sample at fractional pixel position
(y, x) of an H x W map is the bilinear blend of its four integer corners, where a
corner outside the image contributes 0. Hence a sample with y <= -1, y >= H, x <= -1
or x >= W is 0. Positions are clamped to [-2, H + 1] x [-2, W + 1] before the
float -> int conversion: far-away samples (1e10) stay 0 and cannot overflow. A sample with a
NaN coordinate reads no pixel and is NaN; gradients are those autograd gives through the
plain-PyTorch reference (``layers.deform._bilinear_reference``): none into the input, NaN for
the weight it meets, its mask and its other (finite, in clamp range) coordinate, 0 for the NaN
coordinate itself (the clamp's derivative).

Deformable convolution, per weight group ``g``, is the implicit GEMM

    forward      Y[m, co]        = sum_k  C[m, k] W[co, k]         m = (n, oh, ow), k = (kh, kw, ci)
    weight grad  dW[co, k]       = sum_m  dY[m, co] C[m, k]
    columns grad dC[m, k]        = sum_co dY[m, co] W[co, k]
    C[m, (kh, kw, ci)] = mask[n, og, kh, kw, oh, ow] * bilinear(x[n, ci], py, px)
    py = oh * stride_h - pad_h + kh * dil_h + offset[n, og, kh, kw, 0, oh, ow]   (px likewise, index 1)

with ``og = ci // (C_in / offset_groups)``. The columns ``C`` are never written to
memory: every K step gathers its [pixels x channels] tile from the 4 corners in
registers (``kernels._sampling``) and feeds ``tl.dot``. A segment is a run of
``SEG = gcd(C_in / groups, C_in / offset_groups)`` channels lying in one weight group and one
offset group, so each (tap, segment) needs one (dy, dx, mask) per pixel.

Forward: one program per (pixel tile, weight group); its BLOCK_N spans the group's output
channels (next_pow2, up to ``WIDE_N``: 256 on tensor cores), so each bilinear sample is gathered
once per weight group, not once per output-channel block. It loops tap -> segment (offsets, mask
and corners once per pixel tile) -> channel block (gather, ``tl.dot``).
Weight gradient: one program per (tap, segment, input-channel block, weight group, split) with
BLOCK_M spanning the group's output channels likewise; its pixel reduction is split into a
workspace summed by the launcher (deterministic).
Data gradient: one program per (pixel tile, offset group, tap) (a flat grid, taps fastest) computes
[pixels x channels] tiles of ``dC`` with ``tl.dot`` and, in registers, reduces them into grad
offset (dy, dx) and grad mask (deterministic: one program owns each output element) and scatters
them into grad input with atomic adds along channels on an fp32 (fp64) workspace. Its operands
are laid out for vector loads: grad_output channels innermost (one channels_last copy if it is
NCHW), the weight repacked K-major as (KH, KW, C_in / groups, C_out). Where the offset group lies
in one weight group and one K block covers C_out / groups (up to ``DATA_K``: 128 in 16 bit), the
program loads its grad_output tile once and holds it across the channel blocks: grad_output is
read taps * offset_groups times in all (from L2: the taps of a pixel tile run side by side), where
the previous kernel read it taps * C_in / BLOCK_N times (144 at 3x3, C_in = 256, BLOCK_N = 16).
The scatter stays atomic: a gather-form backward would need the inverse of data-dependent
sampling positions. Accumulation is fp32 (fp64 for fp64).

The kernels read x (and the data gradient accumulates grad input) in channels_last: the launchers
copy an input with another layout once per op (``_channels_last``), so the corner loads and the
atomics of a [pixels x channels] tile are contiguous along channels. ``count_samples`` (an
interpreter hook) counts the samples each kernel gathers: one per output position, tap and input
channel.

Layouts: input, offset, mask, grad_output: any strides (channels_last included);
outputs take the input's (offset's, mask's) memory format.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, alert_nondeterministic, allow_tf32, autotuned, block_config, cdiv, config_class,
    _idx, INTERPRET, KernelSpec, launch, like_layout, _mma, needs_int64, sm_count, split_k as _split_k_rule,
    _tile_offsets, _unflatten, with_index64, zeroed_workspace,
)
from ._sampling import bilinear_load, corner_dot_scatter, corner_offsets, corner_weights, deform_corners, position_grads


def _fcfg(bm, bk, warps, stages):  # forward: BLOCK_N (output channels) is set by the launcher
    return block_config(warps, stages, BLOCK_M=bm, BLOCK_K=bk)


def _wcfg(bn, bk, warps, stages):  # weight grad: BLOCK_M (output channels) is set by the launcher
    return block_config(warps, stages, BLOCK_N=bn, BLOCK_K=bk)


def _dcfg(bm, bn, warps, stages):  # data grad: BLOCK_K (output channels) is set by the launcher
    return block_config(warps, stages, BLOCK_M=bm, BLOCK_N=bn)


# The forward's BLOCK_N and the weight gradient's BLOCK_M span the weight group's output channels,
# so that every bilinear sample is gathered once per weight group (not once per output-channel
# block): the launcher sets them to next_pow2(C_out / groups), at least 16 and at most
# WIDE_N[class] (fp32 without TF32 and fp64 run on CUDA-core FMAs, whose operands also sit in
# registers). The configs hold the other block sizes, with warps sized for the widest tile
# (<= 64 accumulator registers per thread).
# Autotune configs per config class (kernels._common.config_class; "fp32_ieee" is fp32 with TF32
# off, on CUDA-core FMAs); the first of each list is the default, which compiles for sm_80 / sm_90
# without spills in every build (python -m kernels.inspect; for the forward, the first that
# _fwd_prune keeps). The gathered operand is built in fp32
# registers from 4 corner loads.
WIDE_N = {"fp16": 256, "bf16": 256, "fp32": 256, "fp32_ieee": 128, "fp64": 64}
FWD_CONFIGS = {
    "fp16": [_fcfg(64, 32, 8, 2), _fcfg(64, 16, 8, 2), _fcfg(128, 16, 8, 2)],
    # TF32: triton 3.6's ptxas caps the unaligned ("odd") 64x16 build at 128 registers and spills;
    # with .maxnreg it spills in no build on either version
    "fp32": [block_config(8, 2, maxnreg=255, BLOCK_M=64, BLOCK_K=16), _fcfg(32, 16, 4, 1), _fcfg(64, 32, 8, 2)],
    "fp32_ieee": [_fcfg(32, 16, 4, 2), _fcfg(64, 16, 8, 2)],
    "fp64": [_fcfg(16, 16, 4, 1), _fcfg(32, 16, 8, 1), _fcfg(64, 16, 8, 1)],
}
WEIGHT_CONFIGS = {
    "fp16": [_wcfg(64, 32, 8, 2), _wcfg(32, 32, 8, 2), _wcfg(64, 64, 8, 2)],
    "fp32": [_wcfg(64, 16, 8, 2), _wcfg(64, 32, 8, 2)],
    "fp32_ieee": [_wcfg(32, 16, 8, 1), _wcfg(64, 16, 8, 1)],
    "fp64": [_wcfg(32, 16, 4, 1), _wcfg(64, 16, 8, 1)],
}
# Data gradient: BLOCK_M pixels x BLOCK_N channels; the launcher sets BLOCK_K (the reduction over
# output channels) to next_pow2(C_out / groups), at least 16 and at most DATA_K[class], so that the
# grad_output tile of a weight group is loaded once per program (GY_RESIDENT) up to that width.
# Its four masked per-element atomic scatters need many registers per tile element: where the
# channel runs are not 16-element aligned (scalar accesses) tiles stay at <= 4 elements per thread
# (``_data_prune``); aligned launches also try 8, and the 16-bit default is 128 pixels x 16
# channels on 4 warps, one pixel row per thread, whose channel runs load (x, grad_output, weight)
# and scatter as 16-byte vectors (98% of load bytes vectorised on sm_80 / sm_90, no spills).
# Without a resident tile (wider groups, or an offset group spanning weight groups) BLOCK_K is at
# most DATA_K_STEP (checked at C_out / groups = 128 and 256 on the kernels.aot builds: wider
# steps spill).
DATA_K = {"fp16": 128, "bf16": 128, "fp32": 64, "fp32_ieee": 64, "fp64": 32}
DATA_K_STEP = 32
DATA_CONFIGS = {
    "fp16": [_dcfg(128, 16, 4, 2), _dcfg(64, 16, 8, 2), _dcfg(64, 16, 4, 2), _dcfg(128, 16, 8, 2),
             _dcfg(64, 32, 8, 2)],
    "fp32": [_dcfg(64, 16, 8, 2), _dcfg(128, 16, 8, 2), _dcfg(32, 32, 8, 1), _dcfg(32, 16, 4, 1)],
    # fp32 FMAs and fp64: triton 3.6's ptxas spills 8-24 B at 64x16 on 8 warps / 2 stages (fp32) and
    # 32x16 on 4 warps (fp64, sm_90)
    "fp32_ieee": [_dcfg(32, 16, 4, 1), _dcfg(64, 16, 8, 1)],
    "fp64": [_dcfg(64, 16, 8, 2), _dcfg(32, 32, 8, 1), _dcfg(64, 16, 8, 1)],
}
for _configs in (FWD_CONFIGS, WEIGHT_CONFIGS, DATA_CONFIGS):
    _configs["bf16"] = _configs["fp16"]
# 64-bit index builds whose 32-bit default spills (python -m kernels.inspect): 8 warps spread the wider
# index vectors.
FWD_CONFIGS = with_index64(FWD_CONFIGS, fp32=[_fcfg(64, 16, 8, 2)], fp32_ieee=[_fcfg(32, 16, 8, 1)],
                           fp64=[_fcfg(64, 16, 8, 1)])
# fp64 weight gradient, 64-bit index: triton 3.6's ptxas caps the unaligned build at 128 registers
# on 4 warps and spills 12 B; with .maxnreg it spills in no build
WEIGHT_CONFIGS = with_index64(WEIGHT_CONFIGS, fp64=[block_config(4, 1, maxnreg=255, BLOCK_N=32, BLOCK_K=16)])
DATA_CONFIGS = with_index64(DATA_CONFIGS, fp16=[_dcfg(64, 16, 8, 1), _dcfg(64, 16, 4, 1)],
                            bf16=[_dcfg(64, 16, 8, 1), _dcfg(64, 16, 4, 1)],
                            fp32=[_dcfg(64, 16, 8, 2)], fp32_ieee=[_dcfg(64, 16, 8, 1)],
                            # fp64 + 64-bit index: triton 3.6's ptxas spills 172-200 B at any larger tile and at
                            # its own register cap (128 at 4 warps); with .maxnreg this tile spills in no build.
                            fp64=[block_config(4, 1, maxnreg=255, BLOCK_M=16, BLOCK_N=16)])
INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16}  # data gradient
FWD_INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_K": 16}
WEIGHT_INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 16}


# --------------------------------------------------------------------------- deform conv forward
@triton.jit
def _tap_corners(off_ptr, o_pix, oc, soc, ih, iw, mask, H, W, ftype: tl.constexpr, IDX64: tl.constexpr):
    """The bilinear corners of one tap for a vector of output pixels: its (dy, dx) are channels
    oc, oc + 1 of the offset (element o_pix + channel * soc), added to the tap's integer input
    positions (ih, iw); ``deform_corners``' tuple with ``mask`` (the pixels in range) folded into
    the four read masks."""
    dy = tl.load(off_ptr + (o_pix + _idx(oc, IDX64) * soc), mask=mask, other=0.0).to(ftype)
    dx = tl.load(off_ptr + (o_pix + _idx(oc + 1, IDX64) * soc), mask=mask, other=0.0).to(ftype)
    y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, pass_y, pass_x = deform_corners(ih.to(ftype) + dy,
                                                                                   iw.to(ftype) + dx, H, W)
    return y0, x0, ey, ex, ly, lx, ok00 & mask, ok01 & mask, ok10 & mask, ok11 & mask, pass_y, pass_x


@triton.jit
def _deform_fwd_kernel(
    # pointers (cnt_ptr: the interpreter's sample counter, see count_samples)
    x_ptr, off_ptr, msk_ptr, w_ptr, b_ptr, y_ptr, cnt_ptr,
    # shapes
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW, SEG, CPOG,
    # strides: input (sx*), offset (so*), mask (sm*), weight (sw*: the K-major repack, swo is 1), output (sy*)
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    smn, smc, smh, smw,
    swo, swi, swh, sww,
    syn, syc, syh, syw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # meta-parameters
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    COUNT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Tile: BLOCK_M output pixels x BLOCK_N output channels of weight group g (axis 2). The
    # launcher makes BLOCK_N cover the group's output channels (up to WIDE_N), so axis 1 has one
    # program and every bilinear sample is gathered once per weight group. Loops: tap -> segment
    # (one offset group: offsets, mask and corners once per pixel tile, tap and segment) ->
    # channel block (the [BLOCK_M x BLOCK_K] gathered tile, fed to tl.dot).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = _tile_offsets(pid_m, BLOCK_M, IDX64)  # int64 in the 64-bit build: M may pass 2**31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < COUT_G
    n, oh, ow = _unflatten(offs_m, OH, OW)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    x_pix = _idx(n, IDX64) * sxn
    o_pix = _idx(n, IDX64) * son + _idx(oh, IDX64) * soh + _idx(ow, IDX64) * sow
    m_pix = _idx(n, IDX64) * smn + _idx(oh, IDX64) * smh + _idx(ow, IDX64) * smw
    co = g * COUT_G + offs_n
    w_base = _idx(co, IDX64) * swo
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    taps = KH * KW
    for tap in range(0, taps):
        kh = tap // KW
        kw = tap % KW
        for seg0 in range(0, CIN_G, SEG):  # first channel of the segment, within the weight group
            og = (g * CIN_G + seg0) // CPOG
            oc = og * (2 * taps) + 2 * tap
            y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, _, _ = _tap_corners(
                off_ptr, o_pix, oc, soc, ih0 + kh * dil_h, iw0 + kw * dil_w, mask_m, H, W, acc.dtype, IDX64)
            if HAS_MASK:
                mv = tl.load(msk_ptr + (m_pix + _idx(og * taps + tap, IDX64) * smc), mask=mask_m,
                             other=0.0).to(acc.dtype)
            else:
                mv = ly
            w00, w01, w10, w11 = corner_weights(ly, lx, mv, HAS_MASK)
            p00, pdx, pdy = corner_offsets(x_pix, y0, x0, ey, ex, sxh, sxw, IDX64)
            w_tap = w_base[None, :] + (kh * swh + kw * sww)
            for c0 in range(seg0, seg0 + SEG, BLOCK_K):
                offs_k = c0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < seg0 + SEG
                ch = _idx((g * CIN_G + offs_k), IDX64) * sxc
                a = bilinear_load(x_ptr, p00, pdx, pdy, ch, mask_k, ok00, ok01, ok10, ok11, w00, w01, w10, w11,
                                  acc.dtype)
                if COUNT:  # gathered (pixel, channel) samples of this tap
                    tl.atomic_add(cnt_ptr, tl.sum(tl.sum((mask_m[:, None] & mask_k[None, :]).to(tl.int32), 1), 0))
                a = a.to(x_ptr.dtype.element_ty)
                b = tl.load(w_ptr + (w_tap + _idx(offs_k[:, None], IDX64) * swi),
                            mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                acc = _mma(a, b, acc, ALLOW_TF32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=mask_n, other=0.0)
        acc += bias[None, :].to(acc.dtype)
    y_off = (_idx(n, IDX64) * syn + _idx(oh, IDX64) * syh + _idx(ow, IDX64) * syw)[:, None] \
        + _idx(co, IDX64)[None, :] * syc
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------- deform conv weight grad
@triton.jit
def _deform_bwd_weight_kernel(
    # pointers (cnt_ptr: the interpreter's sample counter, see count_samples)
    x_ptr, off_ptr, msk_ptr, gy_ptr, ws_ptr, cnt_ptr,
    # shapes
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW, SEG, CPOG, M_PER_SPLIT, N_SPLIT,
    # strides: input (sx*), offset (so*), mask (sm*), grad output (sg*)
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    smn, smc, smh, smw,
    sgn, sgc, sgh, sgw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # meta-parameters
    HAS_MASK: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr, COUNT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Tile: BLOCK_M output channels x BLOCK_N input channels (of one segment) of one tap;
    # axis 1 = (tap, segment, channel block), axis 2 = g * N_SPLIT + split. The pixel
    # reduction of this split goes to ws[split, co, ci, kh, kw] (summed by the launcher).
    # The launcher makes BLOCK_M cover the group's output channels (up to WIDE_N): axis 0 has
    # one program, so each [BLOCK_K pixels x BLOCK_N channels] gathered tile is built once.
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_gs = tl.program_id(2)
    g = pid_gs // N_SPLIT
    split = pid_gs % N_SPLIT
    n_seg = CIN_G // SEG
    n_cb = tl.cdiv(SEG, BLOCK_N)
    tap = pid_t // (n_seg * n_cb)
    rem = pid_t % (n_seg * n_cb)
    seg0 = (rem // n_cb) * SEG
    og = (g * CIN_G + seg0) // CPOG
    kh = tap // KW
    kw = tap % KW
    taps = KH * KW
    oc = og * (2 * taps) + 2 * tap
    mc = og * taps + tap
    offs_co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_ci = seg0 + (rem % n_cb) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_co = offs_co < COUT_G
    mask_ci = offs_ci < seg0 + SEG
    co = g * COUT_G + offs_co
    gy_ch = _idx(co, IDX64) * sgc
    x_ch = _idx((g * CIN_G + offs_ci), IDX64) * sxc
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    m_start = _idx(split, IDX64) * M_PER_SPLIT  # int64 in the 64-bit build (so the loop is)
    m_end = tl.minimum(m_start + M_PER_SPLIT, M)
    for m0 in range(m_start, m_end, BLOCK_K):
        offs_p = m0 + tl.arange(0, BLOCK_K)
        mask_p = offs_p < m_end
        n, oh, ow = _unflatten(offs_p, OH, OW)
        o_pix = _idx(n, IDX64) * son + _idx(oh, IDX64) * soh + _idx(ow, IDX64) * sow
        y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, _, _ = _tap_corners(
            off_ptr, o_pix, oc, soc, oh * stride_h - pad_h + kh * dil_h, ow * stride_w - pad_w + kw * dil_w, mask_p,
            H, W, acc.dtype, IDX64)
        if HAS_MASK:
            m_pix = _idx(n, IDX64) * smn + _idx(oh, IDX64) * smh + _idx(ow, IDX64) * smw
            mv = tl.load(msk_ptr + (m_pix + _idx(mc, IDX64) * smc), mask=mask_p, other=0.0).to(acc.dtype)
        else:
            mv = ly
        w00, w01, w10, w11 = corner_weights(ly, lx, mv, HAS_MASK)
        p00, pdx, pdy = corner_offsets(_idx(n, IDX64) * sxn, y0, x0, ey, ex, sxh, sxw, IDX64)
        b = bilinear_load(x_ptr, p00, pdx, pdy, x_ch, mask_ci, ok00, ok01, ok10, ok11, w00, w01, w10, w11, acc.dtype)
        if COUNT:  # gathered (pixel, channel) samples of this tap
            tl.atomic_add(cnt_ptr, tl.sum(tl.sum((mask_p[:, None] & mask_ci[None, :]).to(tl.int32), 1), 0))
        b = b.to(x_ptr.dtype.element_ty)
        gy_pix = _idx(n, IDX64) * sgn + _idx(oh, IDX64) * sgh + _idx(ow, IDX64) * sgw
        a = tl.load(gy_ptr + (gy_ch[:, None] + gy_pix[None, :]), mask=mask_co[:, None] & mask_p[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)
    per_split = _idx(tl.num_programs(2) // N_SPLIT, IDX64) * COUT_G * CIN_G * taps
    ws_off = (_idx(split, IDX64) * per_split
              + _idx(co, IDX64)[:, None] * (CIN_G * taps)
              + _idx(offs_ci, IDX64)[None, :] * taps + tap)
    tl.store(ws_ptr + ws_off, acc, mask=mask_co[:, None] & mask_ci[None, :])


# --------------------------------------------------------------------------- deform conv data grads
@triton.jit
def _deform_bwd_data_kernel(
    # pointers (cnt_ptr: the interpreter's sample counter, see count_samples)
    x_ptr, off_ptr, msk_ptr, w_ptr, gy_ptr, ws_ptr, goff_ptr, gmsk_ptr, cnt_ptr,
    # shapes
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW, SEG, CPOG, N_TAPS_OG,
    # strides: input (sx*), offset (so*), mask (sm*), weight (sw*), grad output (sg*), grad-input
    # workspace (si*), grad offset (sd*), grad mask (se*)
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    smn, smc, smh, smw,
    swo, swi, swh, sww,
    sgn, sgc, sgh, sgw,
    sin, sic, sih, siw,
    sdn, sdc, sdh, sdw,
    sen, sec, seh, sew,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # meta-parameters
    HAS_MASK: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr, COUNT: tl.constexpr,
    GY_RESIDENT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One program: BLOCK_M output pixels x one (offset group, tap). The grid is flat, with the
    # (offset group, tap) index fastest (pid = pixel_tile * N_TAPS_OG + og * taps + tap), so the
    # programs that read the same grad_output tile run side by side (L2 hits).
    # Strides: x sx*, offset so*, mask sm*, weight sw* (K-major repack: swo is 1), grad_output sg*
    # (channels_last: sgc is 1), workspace si*, grad offset sd*, grad mask se*.
    # It walks the offset group's channels in blocks of BLOCK_N (inside one segment, so in
    # one weight group); per block it forms the grad-columns tile dC = dY @ W with tl.dot
    # (reduction over the weight group's output channels in steps of BLOCK_K), reduces it
    # against the corner values into grad dy / dx / mask, and scatters dC * corner weight
    # into the grad-input workspace ws (strides sin..siw) with atomic adds.
    # GY_RESIDENT (the launcher's choice: the offset group lies in one weight group and BLOCK_K
    # covers its output channels): the [BLOCK_M x BLOCK_K] grad_output tile is loaded once and
    # held across every channel block, instead of once per channel block.
    # grad_output re-read factor (elements read / elements): taps * offset_groups with GY_RESIDENT
    # (9 at 3x3, one offset group), else taps * C_in / BLOCK_N as before this layout (144 at 3x3,
    # C_in = 256, BLOCK_N = 16); count_samples' "data_gy" counts it under the interpreter.
    pid = tl.program_id(0)
    pid_m = pid // N_TAPS_OG
    pid_t = pid % N_TAPS_OG
    taps = KH * KW
    og = pid_t // taps
    tap = pid_t % taps
    kh = tap // KW
    kw = tap % KW
    offs_m = _tile_offsets(pid_m, BLOCK_M, IDX64)
    mask_m = offs_m < M
    n, oh, ow = _unflatten(offs_m, OH, OW)
    if x_ptr.dtype.element_ty == tl.float64:
        s00 = tl.zeros((BLOCK_M,), dtype=tl.float64)
    else:
        s00 = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s01 = tl.zeros_like(s00)
    s10 = tl.zeros_like(s00)
    s11 = tl.zeros_like(s00)
    ftype = s00.dtype
    oc = og * (2 * taps) + 2 * tap
    o_pix = _idx(n, IDX64) * son + _idx(oh, IDX64) * soh + _idx(ow, IDX64) * sow
    y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, pass_y, pass_x = _tap_corners(
        off_ptr, o_pix, oc, soc, oh * stride_h - pad_h + kh * dil_h, ow * stride_w - pad_w + kw * dil_w, mask_m,
        H, W, ftype, IDX64)
    m_pix = _idx(n, IDX64) * smn + _idx(oh, IDX64) * smh + _idx(ow, IDX64) * smw
    if HAS_MASK:
        mv = tl.load(msk_ptr + (m_pix + _idx(og * taps + tap, IDX64) * smc), mask=mask_m, other=0.0).to(ftype)
    else:
        mv = tl.full((BLOCK_M,), 1.0, ftype)
    # grad input takes dC * mask * corner weight (the mask scales the weights); the corner dots
    # take dC alone (grad mask is their blend)
    w00, w01, w10, w11 = corner_weights(ly, lx, mv, HAS_MASK)
    p00, pdx, pdy = corner_offsets(_idx(n, IDX64) * sxn, y0, x0, ey, ex, sxh, sxw, IDX64)
    q00, qdx, qdy = corner_offsets(_idx(n, IDX64) * sin, y0, x0, ey, ex, sih, siw, IDX64)
    gy_pix = _idx(n, IDX64) * sgn + _idx(oh, IDX64) * sgh + _idx(ow, IDX64) * sgw
    w_tap = kh * swh + kw * sww
    if GY_RESIDENT:  # one weight group for the whole offset group: its grad_output tile, loaded once
        offs_k = tl.arange(0, BLOCK_K)
        mask_k = offs_k < COUT_G
        co_res = _idx(((og * CPOG) // CIN_G) * COUT_G + offs_k, IDX64)
        a_res = tl.load(gy_ptr + (gy_pix[:, None] + co_res[None, :] * sgc), mask=mask_m[:, None] & mask_k[None, :],
                        other=0.0)
        if COUNT:  # grad_output elements read (count_samples' "data_gy")
            tl.atomic_add(cnt_ptr + 1, tl.sum(tl.sum((mask_m[:, None] & mask_k[None, :]).to(tl.int32), 1), 0))
    n_seg = CPOG // SEG
    n_cb = tl.cdiv(SEG, BLOCK_N)
    for it in range(0, n_seg * n_cb):
        seg0 = og * CPOG + (it // n_cb) * SEG  # global first channel of the segment
        g = seg0 // CIN_G
        offs_c = seg0 + (it % n_cb) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_c = offs_c < seg0 + SEG
        # grad columns dC[m, c] = sum_co dY[m, co] W[co, c, kh, kw] over the weight group
        w_col = _idx((offs_c - g * CIN_G), IDX64) * swi + w_tap
        if GY_RESIDENT:
            b = tl.load(w_ptr + (co_res[:, None] * swo + w_col[None, :]), mask=mask_k[:, None] & mask_c[None, :],
                        other=0.0)
            gc = _mma(a_res, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=ftype), ALLOW_TF32)
        else:
            gc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ftype)
            for co0 in range(0, COUT_G, BLOCK_K):
                offs_co = co0 + tl.arange(0, BLOCK_K)
                mask_co = offs_co < COUT_G
                co = _idx((g * COUT_G + offs_co), IDX64)
                a = tl.load(gy_ptr + (gy_pix[:, None] + co[None, :] * sgc), mask=mask_m[:, None] & mask_co[None, :],
                            other=0.0)
                if COUNT:
                    tl.atomic_add(cnt_ptr + 1, tl.sum(tl.sum((mask_m[:, None] & mask_co[None, :]).to(tl.int32), 1), 0))
                b = tl.load(w_ptr + (co[:, None] * swo + w_col[None, :]), mask=mask_co[:, None] & mask_c[None, :],
                            other=0.0)
                gc = _mma(a, b, gc, ALLOW_TF32)
        # Row-wise sums s_ij = sum_c dC * v_ij per corner; the corner weights are per pixel,
        # so grad dy / dx / mask are combined from them after the loop.
        xc = _idx(offs_c, IDX64) * sxc
        ic = _idx(offs_c, IDX64) * sic
        if COUNT:  # (pixel, channel) samples whose corners this tap reads back
            tl.atomic_add(cnt_ptr, tl.sum(tl.sum((mask_m[:, None] & mask_c[None, :]).to(tl.int32), 1), 0))
        s00 += corner_dot_scatter(x_ptr, p00, xc, ws_ptr, q00, ic, mask_c, ok00, w00, gc, ftype)
        s01 += corner_dot_scatter(x_ptr, p00 + pdx, xc, ws_ptr, q00 + qdx, ic, mask_c, ok01, w01, gc, ftype)
        s10 += corner_dot_scatter(x_ptr, p00 + pdy, xc, ws_ptr, q00 + qdy, ic, mask_c, ok10, w10, gc, ftype)
        s11 += corner_dot_scatter(x_ptr, p00 + pdy + pdx, xc, ws_ptr, q00 + qdy + qdx, ic, mask_c, ok11, w11, gc,
                                  ftype)
    g_dy, g_dx, g_mk = position_grads(s00, s01, s10, s11, ly, lx)
    g_dy = mv * g_dy
    g_dx = mv * g_dx
    # 0 where the clamp stops the derivative (NaN included); a NaN in the other coordinate makes it
    # NaN (0 * NaN), as autograd through the bilinear blend does
    g_dy = tl.where(pass_y, g_dy, 0.0)
    g_dx = tl.where(pass_x, g_dx, 0.0)
    # grad offset (strides sdn..sdw) and grad mask (strides sen..sew)
    d_pix = _idx(n, IDX64) * sdn + _idx(oh, IDX64) * sdh + _idx(ow, IDX64) * sdw
    tl.store(goff_ptr + (d_pix + _idx(oc, IDX64) * sdc), g_dy.to(goff_ptr.dtype.element_ty), mask=mask_m)
    tl.store(goff_ptr + (d_pix + _idx(oc + 1, IDX64) * sdc), g_dx.to(goff_ptr.dtype.element_ty), mask=mask_m)
    if HAS_MASK:
        e_pix = _idx(n, IDX64) * sen + _idx(oh, IDX64) * seh + _idx(ow, IDX64) * sew
        tl.store(gmsk_ptr + (e_pix + _idx(og * taps + tap, IDX64) * sec), g_mk.to(gmsk_ptr.dtype.element_ty),
                 mask=mask_m)


# --------------------------------------------------------------------------- launchers
_KEY = ["M", "CIN_G", "COUT_G", "KH", "KW", "SEG", "sxc"]


def _fwd_prune(configs, named_args):
    """Configs the forward's autotuner tries: 32-channel K steps (the 16-bit default: 16-byte
    corner loads) only where a segment's channel runs are 16-element aligned (unit channel stride,
    pixel stride and segment width divisible by 16); elsewhere every corner load is scalar and the
    wider step spills in the 64-bit index build (python -m kernels.aot, build "odd,i64")."""
    aligned = named_args["sxc"] == 1 and named_args["sxw"] % 16 == 0 and named_args["SEG"] % 16 == 0
    out = [c for c in configs if aligned or c.kwargs["BLOCK_K"] <= 16]
    return out or configs[-1:]


_fwd_tuned = autotuned(_deform_fwd_kernel, FWD_CONFIGS, _KEY + ["sxw"], prune=_fwd_prune)
_bwd_weight_tuned = autotuned(_deform_bwd_weight_kernel, WEIGHT_CONFIGS, _KEY + ["N_SPLIT"])
# the data kernel accumulates into ws with atomics: reset_to_zero keeps autotuning trials from
# adding up; the launcher zeroes ws itself (zeroed_workspace) and does not rely on it
def _data_prune(configs, named_args):
    """Configs the data-gradient autotuner tries: tiles of more than 4 elements per thread (the
    16-bit default, 128 pixels x 16 channels on 4 warps: one pixel row per thread, so its channel
    run loads and scatters as 16-byte vectors) only where those runs are 16-element aligned
    (channels_last x and workspace with a row stride and segment width divisible by 16); elsewhere
    every corner access is scalar and such tiles spill (python -m kernels.aot --all-configs, build
    "odd")."""
    aligned = (named_args["sxc"] == 1 and named_args["sxw"] % 16 == 0 and named_args["SEG"] % 16 == 0
               and named_args["sic"] == 1 and named_args["siw"] % 16 == 0)
    out = [c for c in configs
           if aligned or c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 4 * 32 * c.num_warps]
    return out or configs[-1:]


_bwd_data_tuned = autotuned(_deform_bwd_data_kernel, DATA_CONFIGS, _KEY + ["CPOG", "sxw"], reset=["ws_ptr"],
                            prune=_data_prune)


def _gcd(a, b):
    """math.gcd that also takes SymInts (dynamic shapes under torch.compile)."""
    while b:
        a, b = b, a % b
    return a


def _geometry(x, offset, weight_shape):
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = weight_shape
    OH, OW = offset.shape[-2:]
    groups = C_in // cin_g
    offset_groups = offset.shape[1] // (2 * KH * KW)
    cpog = C_in // offset_groups
    return dict(N=N, C_in=C_in, H=H, W=W, C_out=C_out, cin_g=cin_g, KH=KH, KW=KW, OH=OH, OW=OW, groups=groups,
                offset_groups=offset_groups, cpog=cpog, seg=_gcd(cin_g, cpog), M=N * OH * OW)


def _mask_args(mask, offset):
    """(pointer tensor, strides) for an optional mask: a dummy pointer and zero strides when absent."""
    if mask is None:
        return offset, (0, 0, 0, 0)
    return mask, tuple(mask.stride())


#: Test hook (interpreter only), see ``count_samples``: None, or {kernel name: count}.
_SAMPLE_COUNTS = None


@contextmanager
def count_samples():
    """Interpreter test hook: the deform-conv launchers run their kernels with ``COUNT=True`` and
    the yielded dict adds up, per kernel ("fwd", "weight", "data"), the (pixel, channel) bilinear
    samples each one gathers, one per output position, tap and input channel when every sample is
    computed once per weight group (the forward and weight gradient would count it again for
    every block of output channels). "data_gy" adds up the grad_output elements the data gradient
    reads: N * OH * OW * C_out times its re-read factor (see ``_deform_bwd_data_kernel``).
    Compiled launches never count (``COUNT=False``)."""
    global _SAMPLE_COUNTS
    before, _SAMPLE_COUNTS = _SAMPLE_COUNTS, {}
    try:
        yield _SAMPLE_COUNTS
    finally:
        _SAMPLE_COUNTS = before


def _counter(like):
    """(counter tensor, COUNT) for a launch: an int32 [2] tensor (samples, grad_output elements
    read) while count_samples is active under the interpreter, else ``like`` as an unused pointer."""
    if INTERPRET and _SAMPLE_COUNTS is not None:
        return torch.zeros(2, dtype=torch.int32, device=like.device), True
    return like, False


def _record(name, cnt, on):
    if on:
        _SAMPLE_COUNTS[name] = _SAMPLE_COUNTS.get(name, 0) + int(cnt[0].item())
        if name == "data":
            _SAMPLE_COUNTS["data_gy"] = _SAMPLE_COUNTS.get("data_gy", 0) + int(cnt[1].item())


def _wide_block(cout_g, cls: str, caps=None) -> int:
    """The block spanning a weight group's output channels: next_pow2(cout_g) in [16, caps[cls]]
    (caps: WIDE_N unless given)."""
    cap = (WIDE_N if caps is None else caps)[cls.replace("_i64", "")]
    block = 16
    while block < cout_g and block < cap:
        block *= 2
    return block


def _channels_last(t):
    """``t`` with unit channel stride, so the corner loads / atomics of a [pixels x channels] tile
    are contiguous along channels (vector-wide): channels_last tensors and tensors with a zero
    (expanded) stride are used as they are, others are copied to channels_last once per op."""
    if t.numel() == 0 or t.stride(1) == 1 or 0 in t.stride():
        return t
    return t.contiguous(memory_format=torch.channels_last)


def deform_conv2d_forward(x, offset, weight, bias, mask, stride, padding, dilation):
    """x: (N, C_in, H, W); offset: (N, 2 * offset_groups * KH * KW, OH, OW) as (dy, dx) per tap;
    weight: (C_out, C_in / groups, KH, KW); bias: (C_out,) or None; mask:
    (N, offset_groups * KH * KW, OH, OW) or None. Returns (N, C_out, OH, OW) in x's memory format.
    The kernel reads x in channels_last (``_channels_last``)."""
    gm = _geometry(x, offset, weight.shape)
    y = like_layout(x, (gm["N"], gm["C_out"], gm["OH"], gm["OW"]))
    if y.numel() == 0:
        return y
    x = _channels_last(x)
    cout_g = gm["C_out"] // gm["groups"]
    m_t, m_strides = _mask_args(mask, offset)
    tf32 = allow_tf32(x.dtype, "matmul")  # as torchvision's addmm
    i64 = needs_int64(x, offset, weight, y, mask, gm["M"])
    cls = config_class(_fwd_tuned, x.dtype, tf32, i64)
    block_n = _wide_block(cout_g, cls)
    grid = lambda meta: (cdiv(gm["M"], meta["BLOCK_M"]), cdiv(cout_g, block_n), gm["groups"])
    # the weight repacked K-major as (KH, KW, C_in / groups, C_out): a tap's [input channels x
    # output channels] operand is contiguous along output channels (16-byte vector loads; OIHW
    # would read it with scalar loads KH * KW elements apart)
    w_k = weight.permute(2, 3, 1, 0).contiguous()
    cnt, count = _counter(x)
    launch(_fwd_tuned[cls], _deform_fwd_kernel, grid, FWD_INTERPRET_CONFIG,
           x, offset, m_t, w_k, bias if bias is not None else weight, y, cnt,
           gm["M"], gm["H"], gm["W"], gm["OH"], gm["OW"], gm["cin_g"], cout_g, gm["KH"], gm["KW"], gm["seg"],
           gm["cpog"],
           *x.stride(), *offset.stride(), *m_strides,
           w_k.stride(3), w_k.stride(2), w_k.stride(0), w_k.stride(1), *y.stride(),
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           HAS_MASK=mask is not None, HAS_BIAS=bias is not None, ALLOW_TF32=tf32,
           IDX64=i64, COUNT=count, BLOCK_N=block_n)
    _record("fwd", cnt, count)
    return y


def deform_conv2d_data_grad(grad_output, x, offset, weight, mask, stride, padding, dilation):
    """Gradients of deform_conv2d w.r.t. input, offset and mask: (grad_input like x,
    grad_offset like offset, grad_mask like mask, or an empty tensor when mask is None).
    The kernel reads x and accumulates grad input in channels_last (atomics contiguous along
    channels); grad input is copied back to x's memory format."""
    gm = _geometry(x, offset, weight.shape)
    acc_dtype = accumulator_dtype(x.dtype)
    x_in = x
    x = _channels_last(x)
    ws = zeroed_workspace(x, acc_dtype)  # x's (channels_last) strides when x is dense, else contiguous
    g_off = like_layout(offset, offset.shape)
    g_msk = like_layout(mask, mask.shape) if mask is not None else torch.empty(0, device=x.device, dtype=x.dtype)

    def grad_input():
        return like_layout(x_in, x_in.shape).copy_(ws)

    if gm["M"] == 0:
        g_off.zero_()
        g_msk.zero_()
        return grad_input(), g_off, g_msk
    alert_nondeterministic("convlab::deform_conv2d_data_grad (grad input)")
    cout_g = gm["C_out"] // gm["groups"]
    # grad_output channels innermost (its [pixels x output channels] tiles load vector-wide; one
    # copy if it is NCHW) and the weight repacked K-major as (KH, KW, C_in / groups, C_out), so the
    # [output channels x input channels] operand of a tap is contiguous along its reduction axis
    grad_output = _channels_last(grad_output)
    w_k = weight.permute(2, 3, 1, 0).contiguous()
    m_t, m_strides = _mask_args(mask, offset)
    gm_t = g_msk if mask is not None else g_off
    n_taps_og = gm["offset_groups"] * gm["KH"] * gm["KW"]
    grid = lambda meta: (cdiv(gm["M"], meta["BLOCK_M"]) * n_taps_og,)
    tf32 = allow_tf32(x.dtype, "matmul")  # as torchvision's addmm
    i64 = needs_int64(x, offset, weight, grad_output, ws, mask, gm["M"])
    cls = config_class(_bwd_data_tuned, x.dtype, tf32, i64)
    block_k = _wide_block(cout_g, cls, DATA_K)
    # the offset group lies in one weight group and one K block covers its output channels
    resident = cout_g <= block_k and gm["seg"] == gm["cpog"]
    if not resident:  # a K loop: narrow steps (a 128-wide step on the 128-pixel tile spills)
        block_k = min(block_k, DATA_K_STEP)
    cnt, count = _counter(x)
    launch(_bwd_data_tuned[cls], _deform_bwd_data_kernel, grid, INTERPRET_CONFIG,
           x, offset, m_t, w_k, grad_output, ws, g_off, gm_t, cnt,
           gm["M"], gm["H"], gm["W"], gm["OH"], gm["OW"], gm["cin_g"], cout_g, gm["KH"], gm["KW"], gm["seg"],
           gm["cpog"], n_taps_og,
           *x.stride(), *offset.stride(), *m_strides,
           w_k.stride(3), w_k.stride(2), w_k.stride(0), w_k.stride(1), *grad_output.stride(), *ws.stride(),
           *g_off.stride(), *(g_msk.stride() if mask is not None else m_strides),
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           HAS_MASK=mask is not None, ALLOW_TF32=tf32,
           IDX64=i64, COUNT=count, GY_RESIDENT=resident, BLOCK_K=block_k)
    _record("data", cnt, count)
    return grad_input(), g_off, g_msk


def _split_k(M: int, tiles: int, device: torch.device) -> int:
    """Split the pixel reduction of the weight gradient so that small weights still fill the GPU."""
    return _split_k_rule(M, tiles, sm_count(device), min_chunk=2048)


def deform_conv2d_weight_grad(grad_output, x, offset, mask, weight_shape, stride, padding, dilation, split_k=None):
    """dL/dweight of deform_conv2d: (C_out, C_in / groups, KH, KW), contiguous. The kernel reads x
    in channels_last (``_channels_last``)."""
    gm = _geometry(x, offset, weight_shape)
    cout_g = gm["C_out"] // gm["groups"]
    if gm["M"] == 0 or gm["C_out"] == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=x.dtype)
    x = _channels_last(x)
    n_seg, seg = gm["cin_g"] // gm["seg"], gm["seg"]
    if split_k is None:
        split_k = _split_k(gm["M"], cdiv(cout_g, 64) * cdiv(gm["cin_g"], 64) * gm["KH"] * gm["KW"] * gm["groups"],
                           x.device)
    m_per_split = cdiv(gm["M"], split_k)
    split_k = cdiv(gm["M"], m_per_split)
    ws = torch.empty((split_k, *weight_shape), device=x.device, dtype=accumulator_dtype(x.dtype))
    m_t, m_strides = _mask_args(mask, offset)
    tf32 = allow_tf32(x.dtype, "matmul")  # as torchvision's addmm
    i64 = needs_int64(x, offset, grad_output, ws, mask, split_k * m_per_split)
    cls = config_class(_bwd_weight_tuned, x.dtype, tf32, i64)
    block_m = _wide_block(cout_g, cls)
    grid = lambda meta: (cdiv(cout_g, block_m), gm["KH"] * gm["KW"] * n_seg * cdiv(seg, meta["BLOCK_N"]),
                         gm["groups"] * split_k)
    cnt, count = _counter(x)
    launch(_bwd_weight_tuned[cls], _deform_bwd_weight_kernel, grid, WEIGHT_INTERPRET_CONFIG,
           x, offset, m_t, grad_output, ws, cnt,
           gm["M"], gm["H"], gm["W"], gm["OH"], gm["OW"], gm["cin_g"], cout_g, gm["KH"], gm["KW"], seg,
           gm["cpog"], m_per_split, split_k,
           *x.stride(), *offset.stride(), *m_strides, *grad_output.stride(),
           stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
           HAS_MASK=mask is not None, ALLOW_TF32=tf32,
           IDX64=i64, COUNT=count, BLOCK_M=block_m)
    _record("weight", cnt, count)
    return (ws.sum(0) if split_k > 1 else ws[0]).to(x.dtype)


AOT_SPECS = [
    KernelSpec("deform_fwd", _deform_fwd_kernel, FWD_CONFIGS, gemm=True, prune=_fwd_prune),
    KernelSpec("deform_bwd_weight", _deform_bwd_weight_kernel, WEIGHT_CONFIGS, gemm=True),
    KernelSpec("deform_bwd_data", _deform_bwd_data_kernel, DATA_CONFIGS, gemm=True, prune=_data_prune),
]
