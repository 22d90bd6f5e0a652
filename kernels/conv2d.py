"""Implicit-GEMM 2-D convolution: forward, input gradient (= transposed conv), weight gradient.

Per group ``g`` the three passes are GEMMs over

    forward      Y[m, co]  = sum_k X~[m, k] W[k, co]     m = (n, oh, ow), k = (kh, kw, ci)
    input grad   dX[m, ci] = sum_k dY~[m, k] W[k, ci]    m = (n, ih, iw), k = (kh, kw, co)
    weight grad  dW[co, k] = sum_m dY[m, co] X~[m, k]    reduction over m = (n, oh, ow)

where ``~`` marks the implicit im2col gather (never materialised). Accumulation is fp32 (fp64
for fp64).

Layouts. The GEMM operands are read along their contiguous axis, so every K step is a set of
16-byte (vectorised, cp.async-pipelined) loads:

* activations (x, dY) are read channels-innermost: a tensor whose channel stride is not 1
  (NCHW) is copied to channels_last once per call at the op boundary (``_channels_inner``;
  broadcast dimensions stay broadcast). channels_last input is read in place.
* the weight is repacked once per call into the GEMM's K-major order
  ``(G, KH, KW, K_CH, N_LD)`` (``_pack_weight``): rows k = (kh, kw, k_ch), columns the GEMM's N
  channels, padded with zeros to a multiple of 16 so every row starts 16-byte aligned.
* outputs are written in place in the memory format of the op's input (any strides).

The K loop walks kernel taps outermost and channels inside (one flat loop, which Triton
pipelines), so a tap's bounds mask is computed once per channel block. Tiles are scheduled in
groups of ``GROUP_SIZE_M`` row tiles (Triton's matmul tutorial) so consecutive programs share
weight tiles in L2.

Strided input gradient. dX[ih] gathers dY[oh] over the taps with ih + pad - kh * dil =
oh * stride; for a fixed phase r = (ih + pad) mod stride only the taps with kh * dil = r
(mod stride) contribute, and they form an arithmetic progression. The input gradient is thus
stride_h * stride_w dense implicit GEMMs (one launch per phase, ``_phases``), none with masked,
wasted taps, as cuDNN does.

Narrow groups (ResNeXt's 4 channels per group) would fill a 16-wide tile with masked lanes and read
8-byte rows. ``_group_pack`` packs P neighbouring groups into one GEMM whose weight is
block-diagonal (``_block_diagonal``): the same convolution with groups / P groups of P times the
channels, 16-byte rows and P times denser tiles (the off-diagonal zeros are the price).

All pointer offsets are 64-bit in the 64-bit index build (``IDX64``), so tensors past 2**31
elements are addressed right.
"""
from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl

from . import _common
from ._common import (
    accumulator_dtype, allow_tf32, autotuned, cdiv, config_class, fit_blocks, gemm_config, _idx, KernelSpec, launch,
    like_layout, _mma, needs_int64, pair, sm_count, split_k as _split_k_rule, _tile_offsets, _unflatten, with_index64,
    use_tma,
)
from ._igemm import _weight_grad_tile


_cfg = gemm_config  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)


# Autotune configs per config class (kernels._common.config_class); the first of each list is the
# default, which must compile without spills in every build (python -m kernels.inspect, with the
# ptxas of triton 3.8 and of triton 3.6). 16-bit types take 64-deep K steps (128-byte rows).
# "fp32_ieee" (TF32 off) runs on CUDA-core FMAs: its operand fragments take more registers than
# tensor-core fragments, so its tiles are smaller and its K steps shorter.
# The 128 x 128 and 128 x 256 16-bit tiles run 8 warps: on sm_90 two warp groups issue wgmma on
# 64-row halves. python -m kernels.aot --problems wide --all-configs (256 channels, so these tiles are
# not pruned) compiles them without spills for sm_80 and sm_90 on triton 3.8 and 3.6; a 256 x 128
# tile spills on sm_80 with triton 3.6 (72-84 B), so it is not shipped.
GEMM_CONFIGS = {
    "fp16": [_cfg(128, 64, 64, 4, 3), _cfg(128, 128, 64, 8, 3), _cfg(64, 128, 64, 4, 3), _cfg(64, 64, 64, 4, 4),
             _cfg(128, 256, 64, 8, 3), _cfg(32, 64, 32, 2, 4)],
    "fp32": [_cfg(64, 64, 32, 8, 3), _cfg(128, 64, 32, 8, 3), _cfg(128, 128, 32, 8, 3), _cfg(64, 32, 32, 4, 4),
             _cfg(32, 32, 16, 2, 3)],
    "fp32_ieee": [_cfg(64, 64, 16, 4, 2), _cfg(32, 32, 16, 4, 2)],
    "fp64": [_cfg(64, 32, 16, 4, 2), _cfg(32, 32, 16, 4, 2), _cfg(64, 64, 16, 8, 2)],
}
GEMM_CONFIGS["bf16"] = GEMM_CONFIGS["fp16"]
# The weight gradient keeps two more index vectors live per K step: its FMA and fp64 tiles are narrower.
# 64-bit index builds: the pixel-index vectors double in width; 8 warps spread them (found with
# python -m kernels.inspect: the 32-bit defaults spill there, these do not).
WEIGHT_GRAD_CONFIGS = with_index64(dict(GEMM_CONFIGS, fp32_ieee=[_cfg(64, 32, 16, 4, 2)],
                                        fp64=[_cfg(64, 32, 16, 4, 2), _cfg(32, 32, 16, 4, 2)]),
                                   fp16=[_cfg(64, 64, 32, 8, 2)], bf16=[_cfg(64, 64, 32, 8, 2)],
                                   fp32=[_cfg(64, 64, 32, 8, 2)], fp32_ieee=[_cfg(32, 32, 16, 2, 2)],
                                   fp64=[_cfg(32, 32, 16, 8, 2)])
_I64 = dict(fp16=[_cfg(64, 64, 64, 8, 3)], bf16=[_cfg(64, 64, 64, 8, 3)], fp32=[_cfg(64, 64, 32, 8, 2)],
            fp32_ieee=[_cfg(64, 64, 32, 8, 1)])
# The input gradient's TF32-off tiles and 64-bit fp64 default spill (with triton 3.6's or 3.8's
# ptxas) at the forward's sizes. Every config here was compiled in every build (--all-configs).
INPUT_GRAD_CONFIGS = with_index64(dict(GEMM_CONFIGS, fp32=GEMM_CONFIGS["fp32"][:3], fp32_ieee=[_cfg(32, 32, 16, 4, 2)]),
                                  **_I64, fp64=[_cfg(32, 32, 16, 4, 2)])
GEMM_CONFIGS = with_index64(GEMM_CONFIGS, **_I64, fp64=[_cfg(64, 32, 16, 8, 2)])

# The forward's TMA variant (sm_90 only; USE_TMA): the packed weight's [BLOCK_K, BLOCK_N] tiles come
# through a host-side tensor descriptor (TMA bulk copies into shared memory, zero-filled past a
# group's K_CH rows) instead of pointer loads. Whether it wins cannot be told without a GPU, so the
# autotuner measures it: on sm_90 the forward's autotuner is the one of TMA_GEMM_CONFIGS, the pointer
# configs of GEMM_CONFIGS (USE_TMA=False, still the default) plus these. The descriptor's block shape
# is fixed per launch (torch.compile's Inductor runs no config pre_hooks that could reset it), so
# all TMA configs of a class share BLOCK_K and BLOCK_N (_TMA_BLOCKS) and differ in BLOCK_M, warps and
# stages. fp64 (no wgmma), TF32-off fp32 (CUDA-core FMAs read the tile from shared memory anyway) and
# the 64-bit index builds have none. The activations stay pointer loads: the implicit im2col gather
# (padding masks, strides) is not a box a tiled descriptor can describe.
_TMA_BLOCKS = {"fp16": (64, 128), "bf16": (64, 128), "fp32": (32, 128)}  # (BLOCK_K, BLOCK_N)


def _tma_cfg(bm: int, cls: str, warps: int, stages: int) -> triton.Config:
    bk, bn = _TMA_BLOCKS[cls]
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, USE_TMA=True), num_warps=warps, num_stages=stages)


TMA_CONFIGS = {
    "fp16": [_tma_cfg(128, "fp16", 8, 3), _tma_cfg(128, "fp16", 8, 4), _tma_cfg(64, "fp16", 4, 4)],
    "fp32": [_tma_cfg(128, "fp32", 8, 3), _tma_cfg(64, "fp32", 4, 3)],
}
TMA_CONFIGS["bf16"] = [_tma_cfg(c.kwargs["BLOCK_M"], "bf16", c.num_warps, c.num_stages) for c in TMA_CONFIGS["fp16"]]


def _pointer_cfg(cfg: triton.Config) -> triton.Config:
    return triton.Config(dict(cfg.kwargs, USE_TMA=False), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


#: the forward's autotune table on sm_90 (see above): the pointer configs first (the default stays
#: the default), then the TMA configs
TMA_GEMM_CONFIGS = {cls: [_pointer_cfg(c) for c in GEMM_CONFIGS[cls]] + TMA_CONFIGS[cls] for cls in TMA_CONFIGS}
# Small tiles under the interpreter: numpy cost grows with tile area, not program count.
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}
#: row tiles per group of the grouped tile order (L2 reuse of the weight tiles)
GROUP_SIZE_M = 8
#: the packed weight's rows are padded to a multiple of this many elements (16-byte aligned rows)
_ROW_ALIGN = 16


# --------------------------------------------------------------------------- helpers
@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_SIZE_M: tl.constexpr):
    """Program id -> (row tile, column tile), GROUP_SIZE_M row tiles at a time down each column
    band, so programs that run together read the same weight tiles (Triton's matmul tutorial)."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _implicit_gemm_tile(
    # pointers: source activations (channel stride 1), packed weight (G, KH, KW, K_CH, N_LD), bias, output
    src_ptr, w_ptr, b_ptr, dst_ptr,
    # shapes: GEMM rows M = N * A * B output pixels on an A x B grid; source spatial extent SH x SW;
    # K_CH channels per tap and group, N_CH output channels per group (N_LD: packed row length);
    # TH x TW taps, the packed weight has KH x KW
    M, A, B, SH, SW, K_CH, N_CH, N_LD, TH, TW, KH, KW,
    # strides: source (channel stride 1), output
    stride_sn, stride_sh, stride_sw,
    stride_dn, stride_dc, stride_dh, stride_dw,
    # geometry per axis: source row of pixel a and tap t = a * src_step + src_first + t * src_tap;
    # the weight's tap kh = kh0 + t * kh_step; the output row of pixel a = a * dst_step + dst_first
    src_step_h, src_step_w, src_first_h, src_first_w, src_tap_h, src_tap_w,
    kh0, kw0, kh_step, kw_step, dst_step_h, dst_step_w, dst_first_h, dst_first_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
    SHUFFLE_R: tl.constexpr = 1, STORE_VEC: tl.constexpr = 1, W_DESC=None, USE_TMA: tl.constexpr = False,
):
    """One BLOCK_M x BLOCK_N output tile of group program_id(2): the body shared by the forward
    and the (phase of the) input gradient. ``SHUFFLE_R`` > 1 fuses a pixel shuffle into the store
    (sub-pixel convolution, one group; see ``_conv2d_fwd_kernel``); ``STORE_VEC`` > 1 asserts that
    the shuffled store offsets are contiguous in runs of that many channels (channels_last).
    ``USE_TMA``: the weight tiles are read through ``W_DESC``, a tensor descriptor of the packed
    weight viewed as (G * KH * KW, K_CH, N_LD) with block [1, BLOCK_K, BLOCK_N] (forward only)."""
    g = tl.program_id(2)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N_CH, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    offs_m = _tile_offsets(pid_m, BLOCK_M, IDX64)  # int64 in the 64-bit build: M may pass 2**31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    n, a, b = _unflatten(offs_m, A, B)
    sh0 = a * src_step_h + src_first_h
    sw0 = b * src_step_w + src_first_w
    # the row base address (may point before the tensor for padded taps: those are masked)
    src_row = _idx(n, IDX64) * stride_sn + _idx(sh0, IDX64) * stride_sh + _idx(sw0, IDX64) * stride_sw \
        + _idx(g * K_CH, IDX64)
    w_g = w_ptr + _idx(g, IDX64) * KH * KW * K_CH * N_LD
    # loads are masked to the padded row length: a mask constant over 16 columns keeps them vectorised
    mask_n_ld = offs_n < N_LD
    if src_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat K loop over (tap, channel block) pipelines better than nested loops.
    n_cb = tl.cdiv(K_CH, BLOCK_K)
    for kk in range(0, TH * TW * n_cb):
        tap = kk // n_cb
        c0 = (kk - tap * n_cb) * BLOCK_K
        th = tap // TW
        tw = tap - th * TW
        dh = th * src_tap_h
        dw = tw * src_tap_w
        ok = mask_m & (sh0 + dh >= 0) & (sh0 + dh < SH) & (sw0 + dw >= 0) & (sw0 + dw < SW)
        offs_k = c0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K_CH
        src_tap = src_row + (_idx(dh, IDX64) * stride_sh + _idx(dw, IDX64) * stride_sw)
        x = tl.load(src_ptr + (src_tap[:, None] + offs_k[None, :]), mask=ok[:, None] & mask_k[None, :], other=0.0)
        if USE_TMA:
            # rows past K_CH (the next tap's) and columns past N_LD come back as zeros: the descriptor's
            # middle axis ends at K_CH, its last at N_LD
            w_tap = g * (KH * KW) + (kh0 + th * kh_step) * KW + (kw0 + tw * kw_step)
            w = W_DESC.load([w_tap, c0, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
        else:
            w_row = ((kh0 + th * kh_step) * KW + (kw0 + tw * kw_step)) * K_CH
            w = tl.load(w_g + ((w_row + offs_k)[:, None] * N_LD + offs_n[None, :]),
                        mask=mask_k[:, None] & mask_n_ld[None, :], other=0.0)
        acc = _mma(x, w, acc, ALLOW_TF32)
    co = g * N_CH + offs_n
    mask_n = offs_n < N_CH
    # the pixel indices again (not kept live through the K loop)
    n, a, b = _unflatten(offs_m, A, B)
    dst_h = a * dst_step_h + dst_first_h
    dst_w = b * dst_step_w + dst_first_w
    if SHUFFLE_R == 1:
        b_idx = co
        dst_col = _idx(co, IDX64) * stride_dc
    else:
        # Fused pixel shuffle. The launcher orders the GEMM columns sub-pixel-major,
        # co = (i * R + j) * C + c, so a tile's columns are runs of consecutive shuffled channels c
        # for one sub-pixel (i, j); the conv channel (PyTorch's order) is c * R^2 + i * R + j and
        # lands at dst[n, c, oh * R + i, ow * R + j]. In channels_last output c is the innermost
        # axis, so each run is one contiguous, vectorisable store; in NCHW output no tile axis is
        # contiguous (neighbouring ow land R apart; the j between them is in another column run),
        # so those stores are scalar, as NCHW stores are at r = 1 too (the pixel axis is contiguous
        # only within an output row, which the compiler cannot prove through the div/mod).
        c_sub = N_CH // (SHUFFLE_R * SHUFFLE_R)
        ij = co // c_sub
        c = co - ij * c_sub
        b_idx = c * (SHUFFLE_R * SHUFFLE_R) + ij
        dst_h = dst_h * SHUFFLE_R
        dst_w = dst_w * SHUFFLE_R
        dst_col = _idx(c, IDX64) * stride_dc + _idx(ij // SHUFFLE_R, IDX64) * stride_dh \
            + _idx(ij % SHUFFLE_R, IDX64) * stride_dw
        if STORE_VEC > 1:
            dst_col = tl.max_contiguous(tl.multiple_of(dst_col, STORE_VEC), STORE_VEC)
    if HAS_BIAS:
        bias = tl.load(b_ptr + b_idx, mask=mask_n, other=0.0)
        acc += bias[None, :].to(acc.dtype)
    dst_off = (_idx(n, IDX64) * stride_dn + _idx(dst_h, IDX64) * stride_dh
               + _idx(dst_w, IDX64) * stride_dw)[:, None] + dst_col[None, :]
    tl.store(dst_ptr + dst_off, acc.to(dst_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------- forward
@triton.jit
def _conv2d_fwd_kernel(
    # pointers: x (N, C_in, H, W) with channel stride 1; weight packed (G, KH, KW, CIN_G, COUT_LD), and
    # its tensor descriptor (G * KH * KW, CIN_G, COUT_LD) for USE_TMA, else None; bias (C_out,);
    # y (N, C_out, OH, OW), any strides
    x_ptr, w_ptr, w_desc, b_ptr, y_ptr,
    # shapes (M = N * OH * OW; M_KEY = its next power of two, the autotune key; unused here)
    M, H, W, OH, OW, CIN_G, COUT_G, COUT_LD, KH, KW, M_KEY,
    # strides
    stride_xn, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yh, stride_yw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # meta-parameters (SHUFFLE_R > 1: sub-pixel convolution, y is (N, C_out / R^2, OH * R, OW * R);
    # STORE_VEC: see _implicit_gemm_tile; USE_TMA: the weight comes through w_desc, see TMA_CONFIGS)
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
    SHUFFLE_R: tl.constexpr, STORE_VEC: tl.constexpr, USE_TMA: tl.constexpr,
):
    # The output is not stored through TMA: a tile is stored once, after KH * KW * CIN_G / BLOCK_K K
    # steps of loads, and its channels_last stores are already 16-byte vectors; a TMA store would need
    # a BLOCK_M x BLOCK_N staging buffer in shared memory (32 KB at 128 x 128 fp16, a pipeline stage's
    # worth), fits only channels_last output with COUT_G a multiple of BLOCK_N (a box clips at the
    # tensor's bounds, not at a group's), and could not fuse the pixel shuffle's scattered rows.
    _implicit_gemm_tile(x_ptr, w_ptr, b_ptr, y_ptr,
                        M, OH, OW, H, W, CIN_G, COUT_G, COUT_LD, KH, KW, KH, KW,
                        stride_xn, stride_xh, stride_xw, stride_yn, stride_yc, stride_yh, stride_yw,
                        stride_h, stride_w, -pad_h, -pad_w, dil_h, dil_w,
                        0, 0, 1, 1, 1, 1, 0, 0,
                        HAS_BIAS, ALLOW_TF32, IDX64, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SIZE_M, SHUFFLE_R, STORE_VEC,
                        w_desc, USE_TMA)


# --------------------------------------------------------------------------- input grad
@triton.jit
def _conv2d_bwd_input_kernel(
    # pointers: dY (N, C_out, OH, OW) with channel stride 1; weight packed (G, KH, KW, COUT_G, CIN_LD);
    # bias (C_in,) (conv_transpose2d); dX (N, C_in, H, W), any strides
    gy_ptr, w_ptr, b_ptr, gx_ptr,
    # shapes: this phase's M = N * HJ * WJ input pixels, TH x TW taps (M_KEY: autotune key, unused)
    M, HJ, WJ, OH, OW, CIN_G, COUT_G, CIN_LD, TH, TW, KH, KW, M_KEY,
    # strides
    stride_gn, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xh, stride_xw,
    # the phase: input row ih = ih0 + j * stride_h reads dY row oh = j + oh0 - t * doh through the
    # weight tap kh = kh0 + t * kh_step (and the same for columns)
    ih0, iw0, stride_h, stride_w, oh0, ow0, doh, dow, kh0, kw0, kh_step, kw_step,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):
    _implicit_gemm_tile(gy_ptr, w_ptr, b_ptr, gx_ptr,
                        M, HJ, WJ, OH, OW, COUT_G, CIN_G, CIN_LD, TH, TW, KH, KW,
                        stride_gn, stride_gh, stride_gw, stride_xn, stride_xc, stride_xh, stride_xw,
                        1, 1, oh0, ow0, -doh, -dow,
                        kh0, kw0, kh_step, kw_step, stride_h, stride_w, ih0, iw0,
                        HAS_BIAS, ALLOW_TF32, IDX64, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SIZE_M)


# --------------------------------------------------------------------------- weight grad
@triton.jit
def _conv2d_bwd_weight_kernel(
    # pointers: x (N, C_in, H, W) and dY (N, C_out, OH, OW), both with channel stride 1;
    # workspace (N_SPLIT, KH * KW, C_out, CIN_G) contiguous, fp32 / fp64
    x_ptr, gy_ptr, ws_ptr,
    # shapes (M = N * OH * OW, reduced in N_SPLIT splits of M_PER_SPLIT; M_KEY: autotune key, unused)
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW, M_PER_SPLIT, N_SPLIT, M_KEY,
    # strides
    stride_xn, stride_xh, stride_xw,
    stride_gn, stride_gh, stride_gw,
    # convolution
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # meta-parameters
    ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # conv3d's weight-gradient tile with depth 1 (constants Triton folds away)
    _weight_grad_tile(x_ptr, gy_ptr, ws_ptr,
                      M, 1, H, W, 1, OH, OW, CIN_G, COUT_G, 1, KH, KW, M_PER_SPLIT, N_SPLIT,
                      stride_xn, 0, stride_xh, stride_xw,
                      stride_gn, 0, stride_gh, stride_gw,
                      1, stride_h, stride_w, 0, pad_h, pad_w, 1, dil_h, dil_w,
                      ALLOW_TF32, IDX64, BLOCK_M, BLOCK_N, BLOCK_K)


# --------------------------------------------------------------------------- launchers
# Autotune keys: the pixel count bucketed to its next power of two (M_KEY), so a new batch size or
# resolution reuses the tuning of its bucket; channel counts, kernel and stride exact.
# Tiles are cut to the channel counts (fit_blocks): narrow layers (3 input channels, 8 per group)
# do not pay for 64-wide K steps or 128-wide channel tiles of masked lanes.
_FWD_KEY = ["M_KEY", "CIN_G", "COUT_G", "KH", "KW", "stride_h", "stride_w", "SHUFFLE_R"]
_fwd_fit = fit_blocks(BLOCK_K="CIN_G", BLOCK_N="COUT_G")


def _fwd_prune(configs, named_args):
    """The forward's configs for a launch: blocks cut to the channel counts (``fit_blocks``); TMA
    configs only where the launch passes a descriptor (``w_desc``) whose block is their
    [1, BLOCK_K, BLOCK_N] (the pointer configs ignore it). Under ``force_tma`` (tests) a launch with a
    descriptor tries only the TMA configs, so a GPU test runs the TMA variant whatever is faster."""
    desc = named_args.get("w_desc")
    block = None if desc is None else list(desc.block_shape)
    only_tma = block is not None and _common._TMA_FORCE is True
    return [c for c in _fwd_fit(configs, named_args)
            if (block == [1, c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"]] if c.kwargs.get("USE_TMA") else not only_tma)]


_bwd_input_prune = fit_blocks(BLOCK_K="COUT_G", BLOCK_N="CIN_G")
_bwd_weight_prune = fit_blocks(BLOCK_M="COUT_G", BLOCK_N="CIN_G")
_fwd_tuned = autotuned(_conv2d_fwd_kernel, GEMM_CONFIGS, _FWD_KEY, prune=_fwd_prune)
#: sm_90 launches that pass a weight descriptor tune over TMA_GEMM_CONFIGS (a tuner of their own, so
#: no tuning cache entry is shared between launches with and without a descriptor)
_fwd_tma_tuned = autotuned(_conv2d_fwd_kernel, TMA_GEMM_CONFIGS, _FWD_KEY, prune=_fwd_prune)
_bwd_input_tuned = autotuned(_conv2d_bwd_input_kernel, INPUT_GRAD_CONFIGS, ["M_KEY", "CIN_G", "COUT_G", "TH", "TW"],
                             prune=_bwd_input_prune)
_bwd_weight_tuned = autotuned(_conv2d_bwd_weight_kernel, WEIGHT_GRAD_CONFIGS,
                              ["M_KEY", "CIN_G", "COUT_G", "KH", "KW", "N_SPLIT"], prune=_bwd_weight_prune)


def _m_key(m: int) -> int:
    """The autotune bucket of a GEMM's row count: its next power of two."""
    return triton.next_power_of_2(max(int(m), 1))


def _channels_inner(t: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, H, W) with channel stride 1: ``t`` itself when it has one (channels_last, or a
    single channel), else a channels_last copy. Broadcast (stride-0) batch / spatial dimensions stay
    broadcast: only one slice of them is copied (an expanded gradient is not materialised)."""
    if t.shape[1] <= 1 or t.stride(1) == 1:
        return t
    src = t
    for d in (0, 2, 3):
        if t.stride(d) == 0 and t.shape[d] > 1:
            src = src.narrow(d, 0, 1)
    return src.contiguous(memory_format=torch.channels_last).expand(t.shape)


#: narrow groups are packed up to this many channels per GEMM (one 16-wide tile)
_PACK_WIDTH = 16


def _group_pack(groups: int, k_ch: int, n_ch: int) -> int:
    """How many neighbouring groups one GEMM computes (block-diagonal weight): the largest divisor P
    of ``groups`` with P * max(k_ch, n_ch) <= _PACK_WIDTH; 1 when groups are 16 channels or wider,
    and for one channel per group on either side (depthwise shapes: layers route those to
    kernels.depthwise)."""
    widest = max(k_ch, n_ch)
    if min(k_ch, n_ch) < 2 or widest * 2 > _PACK_WIDTH:
        return 1
    return max(p for p in range(1, min(groups, _PACK_WIDTH // widest) + 1) if groups % p == 0)


def _block_diagonal(w: torch.Tensor, groups: int, pack: int) -> torch.Tensor:
    """The weight (C_out, CIN_G, KH, KW) of a ``groups``-group convolution as the weight
    (C_out, pack * CIN_G, KH, KW) of the same convolution with groups // pack groups: each new
    group's filters are zero outside the input channels of their original group."""
    c_out, cin_g, kh, kw = w.shape
    wg = w.reshape(groups // pack, pack, c_out // groups, cin_g, kh, kw)
    dense = w.new_zeros((groups // pack, pack, c_out // groups, pack, cin_g, kh, kw))
    for p in range(pack):
        dense[:, p, :, p] = wg[:, p]
    return dense.reshape(c_out, pack * cin_g, kh, kw)


def _pack_weight(w: torch.Tensor, groups: int, transpose: bool) -> tuple[torch.Tensor, int]:
    """The weight (C_out, CIN_G, KH, KW) as the K-major GEMM operand of one group per slice:
    forward (``transpose=False``) (G, KH, KW, CIN_G, COUT_LD), input gradient (G, KH, KW, COUT_G,
    CIN_LD), contiguous, its rows zero-padded to ``_ROW_ALIGN`` elements; returns it and the row
    length. Done once per call; it is small next to the activations."""
    c_out, cin_g, kh, kw = w.shape
    wg = w.reshape(groups, c_out // groups, cin_g, kh, kw)
    wg = wg.permute(0, 3, 4, 1, 2) if transpose else wg.permute(0, 3, 4, 2, 1)
    n_ch = wg.shape[-1]
    n_ld = cdiv(max(n_ch, 1), _ROW_ALIGN) * _ROW_ALIGN
    packed = w.new_zeros((*wg.shape[:-1], n_ld))
    packed[..., :n_ch] = wg
    return packed, n_ld


def _weight_descriptor(wp: torch.Tensor, cls: str, cin_g: int, cout_g: int, *traced: torch.Tensor):
    """The TMA descriptor of the forward's packed weight ``wp`` (G, KH, KW, CIN_G, COUT_LD), viewed as
    (G * KH * KW, CIN_G, COUT_LD) with block [1, BLOCK_K, BLOCK_N] (the TMA configs' blocks of config
    class ``cls``, cut to the channel counts as the pruner cuts them; under the interpreter
    INTERPRET_CONFIG's), or None where the TMA variant does not apply: not on an sm_90 GPU (see
    ``use_tma``), a class without TMA configs (fp64, TF32-off fp32, 64-bit index), or a weight TMA
    cannot address (16-byte aligned base and strides, coordinates within int32)."""
    if cls not in TMA_CONFIGS or not use_tma(wp.device, wp, *traced):
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    esize = wp.element_size()
    if wp.data_ptr() % 16 or (wp.shape[-1] * esize) % 16 or wp.numel() >= 2**31:
        return None
    if _common.INTERPRET:
        bk, bn = INTERPRET_CONFIG["BLOCK_K"], INTERPRET_CONFIG["BLOCK_N"]
    else:
        fitted = _fwd_fit(TMA_CONFIGS[cls][:1], {"CIN_G": cin_g, "COUT_G": cout_g})[0].kwargs
        bk, bn = fitted["BLOCK_K"], fitted["BLOCK_N"]
    return TensorDescriptor.from_tensor(wp.view(-1, wp.shape[-2], wp.shape[-1]), [1, bk, bn])


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y = conv2d(x, weight, bias). x: (N, C_in, H, W); weight: (C_out, C_in/groups, KH, KW);
    bias: (C_out,) or None. Returns (N, C_out, OH, OW) in x's memory format."""
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    y = like_layout(x, (N, C_out, OH, OW))
    cout_g = C_out // groups
    M = N * OH * OW
    if y.numel() == 0:
        return y
    pack = _group_pack(groups, cin_g, cout_g)
    if pack > 1:
        weight, groups, cin_g, cout_g = _block_diagonal(weight, groups, pack), groups // pack, cin_g * pack, cout_g * pack
    xc = _channels_inner(x)
    wp, cout_ld = _pack_weight(weight, groups, transpose=False)
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(cout_g, meta["BLOCK_N"]), 1, groups)
    tf32, i64 = allow_tf32(x.dtype), needs_int64(xc, wp, y, M)
    cls = config_class(_fwd_tuned, x.dtype, tf32, i64)
    w_desc = _weight_descriptor(wp, cls, cin_g, cout_g, xc, y)
    # with a descriptor the TMA tuner's configs say USE_TMA (the interpreter runs the TMA variant)
    tuned, interp, tma = ((_fwd_tma_tuned[cls], dict(INTERPRET_CONFIG, USE_TMA=True), {}) if w_desc is not None
                          else (_fwd_tuned[cls], INTERPRET_CONFIG, {"USE_TMA": False}))
    launch(tuned, _conv2d_fwd_kernel, grid, interp,
           xc, wp, w_desc, bias if bias is not None else weight, y,
           M, H, W, OH, OW, cin_g, cout_g, cout_ld, KH, KW, _m_key(M),
           xc.stride(0), xc.stride(2), xc.stride(3), *y.stride(),
           sh, sw, ph, pw, dh, dw,
           HAS_BIAS=bias is not None, ALLOW_TF32=tf32, IDX64=i64, GROUP_SIZE_M=GROUP_SIZE_M, SHUFFLE_R=1, STORE_VEC=1,
           **tma)
    return y


def _phases(size: int, k: int, s: int, p: int, d: int) -> list:
    """The sub-convolutions of one axis of the input gradient: for each phase r = (i + p) mod s
    whose input rows exist, (i0, rows, oh0, doh, kh0, kh_step, taps): rows i = i0 + j * s
    (j < rows) gather output rows oh = j + oh0 - t * doh through taps kh = kh0 + t * kh_step
    (t < taps). A phase may have no taps (its rows get zero / the bias)."""
    out = []
    kh_step = s // math.gcd(s, d)
    for r in range(s):
        i0 = (r - p) % s
        rows = cdiv(size - i0, s) if size > i0 else 0
        if rows == 0:
            continue
        taps = [kh for kh in range(min(k, kh_step)) if (kh * d) % s == r]
        if not taps:
            out.append((i0, rows, 0, 0, 0, 1, 0))
            continue
        kh0 = taps[0]
        n_taps = cdiv(k - kh0, kh_step)
        # (i0 + p - kh0 * d) is a multiple of s: both sides are r modulo s
        out.append((i0, rows, (i0 + p - kh0 * d) // s, kh_step * d // s, kh0, kh_step, n_taps))
    return out


def _input_grad(kernel, tuned, gy, weight, gx, stride, padding, dilation, groups, bias):
    """Writes dL/dx into ``gx`` for any number of spatial axes: the body of conv2d_input_grad and
    conv3d_input_grad. gy (N, C_out, *O) with channel stride 1; weight (C_out, CIN_G, *K);
    gx (N, C_in, *S), any strides; stride / padding / dilation: one int per axis.

    One dense implicit GEMM per stride phase, the phases of all axes combined (``_phases``).
    ``kernel`` takes conv2d's input-gradient arguments with one entry per axis wherever conv2d's
    have an (h, w) pair, in (d, h, w) order."""
    c_out, cin_g, *ks = weight.shape
    cout_g = c_out // groups
    # conv2d's weight helpers take a 3-D weight as (C_out, CIN_G, KD * KH, KW): its packed form
    # (G, KD * KH, KW, COUT_G, CIN_LD) is, byte for byte, the (G, KD, KH, KW, COUT_G, CIN_LD) one
    w2d = weight.reshape(c_out, cin_g, -1, ks[-1])
    pack = _group_pack(groups, cout_g, cin_g)
    if pack > 1:
        w2d, groups, cin_g, cout_g = _block_diagonal(w2d, groups, pack), groups // pack, cin_g * pack, cout_g * pack
    wp, cin_ld = _pack_weight(w2d, groups, transpose=True)
    n = gx.shape[0]
    tf32, i64 = allow_tf32(gy.dtype), needs_int64(gy, wp, gx, n * math.prod(gx.shape[2:]))
    tuned = tuned[config_class(tuned, gy.dtype, tf32, i64)]
    for phase in itertools.product(*map(_phases, gx.shape[2:], ks, stride, padding, dilation)):
        i0, rows, o0, do, k0, k_step, taps = zip(*phase)  # each one entry per axis
        M = n * math.prod(rows)
        grid = lambda meta, M=M: (cdiv(M, meta["BLOCK_M"]) * cdiv(cin_g, meta["BLOCK_N"]), 1, groups)
        launch(tuned, kernel, grid, INTERPRET_CONFIG,
               gy, wp, bias if bias is not None else weight, gx,
               M, *rows, *gy.shape[2:], cin_g, cout_g, cin_ld, *taps, *ks, _m_key(M),
               gy.stride(0), *gy.stride()[2:], *gx.stride(),
               *i0, *stride, *o0, *do, *k0, *k_step,
               HAS_BIAS=bias is not None, ALLOW_TF32=tf32, IDX64=i64, GROUP_SIZE_M=GROUP_SIZE_M)


def conv2d_input_grad(grad_output, weight, input_shape, stride, padding, dilation, groups, bias=None):
    """dL/dx of y = conv2d(x, weight): grad_output (N, C_out, OH, OW) -> (N, C_in, H, W), in
    grad_output's memory format. One dense implicit GEMM per stride phase (see the module doc).

    With ``bias`` (C_in,) added this is conv_transpose2d(grad_output, weight, bias)."""
    gx = like_layout(grad_output, tuple(input_shape))
    if gx.numel() > 0:
        _input_grad(_conv2d_bwd_input_kernel, _bwd_input_tuned, _channels_inner(grad_output), weight, gx,
                    pair(stride), pair(padding), pair(dilation), groups, bias)
    return gx


#: weight-gradient split-K: programs per SM the splits aim at, the largest share of a split's memory
#: traffic its fp32 partial tile may take, and the cap on the partials' workspace (bytes)
_WG_PROGRAMS_PER_SM = 2
_WG_PARTIAL_SHARE = 1 / 8
_WG_WORKSPACE_CAP = 64 << 20


def _weight_grad_split(M: int, cout_g: int, cin_g: int, KH: int, KW: int, groups: int, dtype: torch.dtype,
                       sms: int, tf32: bool | None = None) -> int:
    """How many ways the weight gradient splits its reduction over the M = N * OH * OW output pixels.

    The gradient has ``tiles = ceil(COUT_G / BLOCK_M) * ceil(CIN_G / BLOCK_N) * KH * KW * groups``
    output tiles (block sizes: the default config of the dtype's table, cut to the channel counts as
    the autotuner's pruner cuts them). With M huge and the channel counts small, ``tiles`` is far
    below the GPU's SM count and an unsplit launch leaves most SMs idle, so the reduction is split
    until ``tiles * splits`` reaches ``_WG_PROGRAMS_PER_SM`` programs per SM
    (``splits = 2 * sms // tiles``). Each split costs a partial tile: BLOCK_M * BLOCK_N fp32 values
    stored and read back by the sum, 2 * BM * BN * 4 bytes, against the chunk * (BM + BN) * e
    operand bytes (e: element size) its ``chunk`` pixels load; a split gets at least
    ``chunk = 2 * BM * BN * 4 / ((BM + BN) * e * share)`` pixels, so the partials stay within
    ``share`` = 1/8 of its traffic (64 x 64 fp16: 1024 pixels = 16 K steps of 64). The workspace
    holds splits x the weight in fp32, at most 2 * sms tiles' worth (132 SMs, 128 x 64 tiles: 8.7 MB);
    it is capped at 64 MiB and the grid's axis 2 (groups * splits) at 65535 all the same. On an
    H100 / H200 (132 SMs), fp16:

    * 1x1, 64 -> 64 channels, N 32 at 56 x 56 (M = 100352): 1 tile; 98 splits (M / 1024).
    * 3x3, 256 -> 256, N 32 at 14 x 14 (M = 6272): 128 x 64 tiles, 2 * 4 * 9 = 72; 3 splits, 216
      programs.
    * 7x7 stem, 3 -> 64, N 32 at 112 x 112 (M = 401408): 64 x 16 tiles, 49; 5 splits, 245 programs.
    * 1x1, 16 -> 16, N 32 at 112 x 112 (M = 401408): 1 tile; 264 splits (two per SM).

    ``sms == 0`` (no GPU) gives 1. The splits are summed in a fixed order: deterministic. ``tf32``
    (default: as the launch, ``allow_tf32``) picks the fp32 table, for callers modelling a launch.
    """
    cls = config_class(WEIGHT_GRAD_CONFIGS, dtype, allow_tf32(dtype) if tf32 is None else tf32)
    blocks = _bwd_weight_prune(WEIGHT_GRAD_CONFIGS[cls][:1], {"COUT_G": cout_g, "CIN_G": cin_g})[0].kwargs
    bm, bn = blocks["BLOCK_M"], blocks["BLOCK_N"]
    tiles = cdiv(cout_g, bm) * cdiv(cin_g, bn) * KH * KW * groups
    acc_bytes = accumulator_dtype(dtype).itemsize
    elem = dtype.itemsize
    chunk = math.ceil(2 * bm * bn * acc_bytes / ((bm + bn) * elem * _WG_PARTIAL_SHARE))
    weight_bytes = groups * cout_g * cin_g * KH * KW * acc_bytes
    max_splits = max(1, min(65535 // groups, _WG_WORKSPACE_CAP // max(weight_bytes, 1)))
    return _split_k_rule(M, tiles, sms, min_chunk=chunk, programs_per_sm=_WG_PROGRAMS_PER_SM,
                         max_splits=max_splits)


def _weight_grad(kernel, tuned, x, gy, weight_shape, stride, padding, dilation, groups, split_k):
    """dL/dweight (C_out, CIN_G, *K), contiguous, for any number of spatial axes: the body of
    conv2d_weight_grad and conv3d_weight_grad. x (N, C_in, *S) and gy (N, C_out, *O) with channel
    stride 1; stride / padding / dilation: one int per axis; ``split_k`` as conv2d_weight_grad's.

    ``kernel`` takes conv2d's weight-gradient arguments with one entry per axis wherever conv2d's
    have an (h, w) pair, in (d, h, w) order, and writes the workspace (splits, taps, C_out, CIN_G)
    (``kernels._igemm._weight_grad_tile``)."""
    c_out, cin_g, *ks = weight_shape
    cout_g = c_out // groups
    M = gy.shape[0] * math.prod(gy.shape[2:])
    if M == 0 or c_out == 0 or cin_g == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=x.dtype)
    pack = _group_pack(groups, cin_g, cout_g)
    if pack > 1:  # the block-diagonal gradient of groups // pack groups; its diagonal blocks are kept
        dw = _weight_grad(kernel, tuned, x, gy, (c_out, cin_g * pack, *ks), stride, padding, dilation,
                          groups // pack, split_k)
        blocks = dw.reshape(groups // pack, pack, cout_g, pack, cin_g, *ks).diagonal(dim1=1, dim2=3)
        return blocks.movedim(-1, 1).reshape(weight_shape)
    taps = math.prod(ks)
    if split_k is None:  # the rule counts taps only: a 3-D kernel passes as KD * KH x KW
        split_k = _weight_grad_split(M, cout_g, cin_g, taps // ks[-1], ks[-1], groups, x.dtype, sm_count(x.device))
    m_per_split = cdiv(M, split_k)
    split_k = cdiv(M, m_per_split)
    ws = torch.empty((split_k, taps, c_out, cin_g), device=x.device, dtype=accumulator_dtype(x.dtype))
    grid = lambda meta: (cdiv(cout_g, meta["BLOCK_M"]), cdiv(cin_g, meta["BLOCK_N"]) * taps, groups * split_k)
    tf32, i64 = allow_tf32(x.dtype), needs_int64(x, gy, ws, split_k * m_per_split)
    launch(tuned[config_class(tuned, x.dtype, tf32, i64)], kernel, grid, INTERPRET_CONFIG,
           x, gy, ws,
           M, *x.shape[2:], *gy.shape[2:], cin_g, cout_g, *ks, m_per_split, split_k, _m_key(M),
           x.stride(0), *x.stride()[2:], gy.stride(0), *gy.stride()[2:],
           *stride, *padding, *dilation,
           ALLOW_TF32=tf32, IDX64=i64)
    partial = ws.sum(0) if split_k > 1 else ws[0]  # (taps, C_out, CIN_G), splits summed in order
    dw = torch.empty(weight_shape, device=x.device, dtype=x.dtype)
    dw.view(c_out, cin_g, taps).copy_(partial.permute(1, 2, 0))  # taps last, cast: one pass
    return dw


def conv2d_weight_grad(x, grad_output, weight_shape, stride, padding, dilation, groups, split_k=None):
    """dL/dweight of y = conv2d(x, weight): -> (C_out, C_in/groups, KH, KW), contiguous.

    ``split_k`` (default: chosen from the shape) splits the reduction over output pixels."""
    return _weight_grad(_conv2d_bwd_weight_kernel, _bwd_weight_tuned, _channels_inner(x), _channels_inner(grad_output),
                        weight_shape, pair(stride), pair(padding), pair(dilation), groups, split_k)


# --------------------------------------------------------------------------- sub-pixel convolution
# y = pixel_shuffle(conv2d(x, weight, bias, stride 1, padding), r) with the shuffle fused into the
# forward's store (SHUFFLE_R): the (N, C * r^2, OH, OW) convolution output is never materialised.
# ``padding`` is (top, bottom, left, right): PyTorch's 'same' for even kernels is asymmetric, and
# the kernels only need the top/left offset (the bottom/right padding is the bounds mask).

#: below this many shuffled channels the input gradient unshuffles grad_output first (see below)
_SUBPIXEL_FUSED_MIN_CHANNELS = 16


def _subpixel_sizes(input_shape, weight_shape, r, padding):
    """(C, OH, OW): shuffled channels and the convolution's output size (before the shuffle)."""
    (pt, pb, pl, pr), (KH, KW) = padding, weight_shape[-2:]
    return weight_shape[0] // (r * r), input_shape[2] + pt + pb - KH + 1, input_shape[3] + pl + pr - KW + 1


def subpixel_conv2d_forward(x, weight, bias, r, padding):
    """y = pixel_shuffle(conv2d(x, weight, bias, padding), r) in one launch.

    x: (N, C_in, H, W); weight: (C * r^2, C_in, KH, KW); bias: (C * r^2,) or None (conv channel
    order, as F.conv2d's); padding: (top, bottom, left, right). Returns (N, C, OH * r, OW * r) in
    x's memory format, OH = H + top + bottom - KH + 1.
    """
    N, C_in, H, W = x.shape
    KH, KW = weight.shape[-2:]
    C, OH, OW = _subpixel_sizes(x.shape, weight.shape, r, padding)
    y = like_layout(x, (N, C, OH * r, OW * r))
    M = N * OH * OW
    if y.numel() == 0:
        return y
    xc = _channels_inner(x)
    # GEMM columns sub-pixel-major, (i, j, c), so the epilogue stores runs of consecutive c
    w_sub = weight.reshape(C, r * r, C_in, KH, KW).transpose(0, 1).reshape(weight.shape)
    wp, cout_ld = _pack_weight(w_sub, 1, transpose=False)
    # Store-vector hint: valid when c is the innermost axis (stride 1) and every stride and C are
    # multiples of the run length, so each run starts aligned (a fresh channels_last y: strides are
    # multiples of C). Otherwise 1 (no hint).
    vec = 1
    if y.stride(1) == 1:
        vec = math.gcd(C, 16)
        vec = vec if all(y.stride(d) % vec == 0 for d in (0, 2, 3)) else 1
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(C * r * r, meta["BLOCK_N"]), 1, 1)
    tf32, i64 = allow_tf32(x.dtype), needs_int64(xc, wp, y, M)
    launch(_fwd_tuned[config_class(_fwd_tuned, x.dtype, tf32, i64)], _conv2d_fwd_kernel, grid, INTERPRET_CONFIG,
           xc, wp, None, bias if bias is not None else weight, y,
           M, H, W, OH, OW, C_in, C * r * r, cout_ld, KH, KW, _m_key(M),
           xc.stride(0), xc.stride(2), xc.stride(3), *y.stride(),
           1, 1, padding[0], padding[2], 1, 1,
           HAS_BIAS=bias is not None, ALLOW_TF32=tf32, IDX64=i64, GROUP_SIZE_M=GROUP_SIZE_M,
           SHUFFLE_R=r, STORE_VEC=vec, USE_TMA=False)
    return y


def _unshuffle_channels_last(t, r):
    """F.pixel_unshuffle(t, r) (N, C, H * r, W * r) -> (N, C * r^2, H, W), written once, directly
    channels_last (the layout the GEMM kernels read)."""
    N, C, Hr, Wr = t.shape
    u = t.reshape(N, C, Hr // r, r, Wr // r, r).permute(0, 2, 4, 1, 3, 5).contiguous()
    return u.reshape(N, Hr // r, Wr // r, C * r * r).permute(0, 3, 1, 2)


def subpixel_conv2d_input_grad(grad_output, weight, input_shape, r, padding):
    """dL/dx of subpixel_conv2d_forward: grad_output (N, C, OH * r, OW * r) -> (N, C_in, H, W), in
    grad_output's memory format.

    The shuffle's adjoint is fused into the loads: dX[ih] = sum over (kh, i) of
    dY[(ih + top - kh) * r + i] W[c r^2 + i r + j, kh], i.e. a stride-r convolution of the shuffled
    dY itself with the (KH * r) x (KW * r) kernel Wa[ci, c, (KH-1-kh) r + i, (KW-1-kw) r + j] and
    padding (KH - 1 - top) * r: the forward kernel runs it, its K loop reading dY's channels in
    place (16-byte loads), with the same K = KH * KW * C * r^2 as the unfused input gradient.
    Under ``_SUBPIXEL_FUSED_MIN_CHANNELS`` shuffled channels its K steps would be mostly masked lanes
    (C = 3: 3 of 16 per tap); there dY is unshuffled once (one extra read and write of dY) and the
    input-gradient kernel runs with C * r^2 channels per tap.
    """
    N, C_in, H, W = input_shape
    KH, KW = weight.shape[-2:]
    C, OH, OW = _subpixel_sizes(input_shape, weight.shape, r, padding)
    if C < _SUBPIXEL_FUSED_MIN_CHANNELS:
        return conv2d_input_grad(_unshuffle_channels_last(grad_output, r), weight, input_shape, 1,
                                 (padding[0], padding[2]), 1, 1)
    gx = like_layout(grad_output, (N, C_in, H, W))
    M = N * H * W
    if gx.numel() == 0:
        return gx
    gy = _channels_inner(grad_output)
    wa = weight.reshape(C, r, r, C_in, KH, KW).flip(4, 5).permute(3, 0, 4, 1, 5, 2).reshape(C_in, C, KH * r, KW * r)
    wp, cin_ld = _pack_weight(wa, 1, transpose=False)
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(C_in, meta["BLOCK_N"]), 1, 1)
    tf32, i64 = allow_tf32(grad_output.dtype), needs_int64(gy, wp, gx, M)
    launch(_fwd_tuned[config_class(_fwd_tuned, grad_output.dtype, tf32, i64)], _conv2d_fwd_kernel, grid,
           INTERPRET_CONFIG,
           gy, wp, None, weight, gx,
           M, OH * r, OW * r, H, W, C, C_in, cin_ld, KH * r, KW * r, _m_key(M),
           gy.stride(0), gy.stride(2), gy.stride(3), *gx.stride(),
           r, r, (KH - 1 - padding[0]) * r, (KW - 1 - padding[2]) * r, 1, 1,
           HAS_BIAS=False, ALLOW_TF32=tf32, IDX64=i64, GROUP_SIZE_M=GROUP_SIZE_M, SHUFFLE_R=1, STORE_VEC=1,
           USE_TMA=False)
    return gx


def subpixel_conv2d_weight_grad(x, grad_output, weight_shape, r, padding):
    """dL/dweight of subpixel_conv2d_forward -> (C * r^2, C_in, KH, KW), contiguous.

    grad_output is unshuffled once (one extra read and write of it, straight into channels_last),
    then the weight-gradient kernel runs: its [channel, pixel] tiles read a conv channel's pixels
    at stride 1 only in the unshuffled layout. The bottom/right padding is the bounds mask."""
    return conv2d_weight_grad(x, _unshuffle_channels_last(grad_output, r), weight_shape, 1,
                              (padding[0], padding[2]), 1, 1)


AOT_SPECS = [
    KernelSpec("conv2d_fwd", _conv2d_fwd_kernel, GEMM_CONFIGS, gemm=True, prune=_fwd_prune, tma_configs=TMA_CONFIGS),
    KernelSpec("conv2d_bwd_input", _conv2d_bwd_input_kernel, INPUT_GRAD_CONFIGS, gemm=True, prune=_bwd_input_prune),
    KernelSpec("conv2d_bwd_weight", _conv2d_bwd_weight_kernel, WEIGHT_GRAD_CONFIGS, gemm=True,
               prune=_bwd_weight_prune),
]
