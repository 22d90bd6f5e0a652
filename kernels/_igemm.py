"""Implicit-GEMM kernel bodies written once for 2-D and 3-D convolution (``kernels.conv2d``,
``kernels.conv3d``).

The body is written for (depth, height, width). A 2-D kernel calls it with depth 1: extent 1,
kernel 1, stride / dilation 1, padding 0 and activation depth stride 0, passed as literal
constants. Triton specialises a ``@triton.jit`` callee on constant arguments, so the depth
arithmetic (``// 1``, ``% 1``, ``* 0``) folds away: with the workspace addressing unchanged, the
2-D builds compiled to the registers of the former 2-D-only body in every build
``python -m kernels.inspect`` checks.

The launchers around it (split-K workspace, group packing, the input gradient's stride phases)
are ``kernels.conv2d._weight_grad`` / ``_input_grad``, written for any number of spatial axes.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _idx, _mma, _unflatten


@triton.jit
def _unflatten3(offs, D1, D2, D3):
    """Flattened ``offs = ((a * D1 + b) * D2 + c) * D3 + e`` -> ``(a, b, c, e)``, e.g. the pixel
    index m -> (n, od, oh, ow); no product of extents is formed (it may pass int32)."""
    ab, c, e = _unflatten(offs, D2, D3)
    return ab // D1, ab % D1, c, e


@triton.jit
def _weight_grad_tile(
    # pointers: x (N, C_in, D, H, W) and dY (N, C_out, OD, OH, OW), both with channel stride 1;
    # workspace (N_SPLIT, KD * KH * KW, C_out, CIN_G) contiguous, fp32 / fp64
    x_ptr, gy_ptr, ws_ptr,
    # shapes (M = N * OD * OH * OW, reduced in N_SPLIT splits of M_PER_SPLIT pixels)
    M, D, H, W, OD, OH, OW, CIN_G, COUT_G, KD, KH, KW, M_PER_SPLIT, N_SPLIT,
    # strides
    stride_xn, stride_xd, stride_xh, stride_xw,
    stride_gn, stride_gd, stride_gh, stride_gw,
    # convolution
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # meta-parameters
    ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One BLOCK_M (output channels) x BLOCK_N (input channels) tile of one tap of the weight
    gradient, summed over this program's split of the output pixels: the body of conv2d's and
    conv3d's weight-gradient kernels.

    Grid: axis 0 output-channel tiles, axis 1 = tap * n_tiles + input-channel tile, axis 2 =
    g * N_SPLIT + split. The partial tile goes to the workspace slab ws[split, tap], which the
    launcher sums over the splits (deterministic, no atomics). Both operands are read along
    channels (stride 1): dY^T tiles [co, pixel] and X tiles [pixel, ci]."""
    pid_gs = tl.program_id(2)
    g = pid_gs // N_SPLIT
    split = pid_gs % N_SPLIT
    n_tiles_n = tl.cdiv(CIN_G, BLOCK_N)
    tap = tl.program_id(1) // n_tiles_n
    pid_n = tl.program_id(1) % n_tiles_n
    # tap = (kd * KH + kh) * KW + kw; ``% KD`` makes kd the constant 0 in the 2-D build (KD = 1),
    # so its bounds test and address terms fold away there (kd < KD holds anyway)
    t = tap // KW
    kw = tap % KW
    kd = (t // KH) % KD
    kh = t - kd * KH
    offs_co = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_co = offs_co < COUT_G
    mask_ci = offs_ci < CIN_G
    co = g * COUT_G + offs_co
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    m_start = _idx(split, IDX64) * M_PER_SPLIT  # int64 in the 64-bit build (so the loop is)
    m_end = tl.minimum(m_start + M_PER_SPLIT, M)
    for m0 in range(m_start, m_end, BLOCK_K):
        offs_p = m0 + tl.arange(0, BLOCK_K)
        mask_p = offs_p < m_end
        n, od, oh, ow = _unflatten3(offs_p, OD, OH, OW)
        id_ = od * stride_d - pad_d + kd * dil_d
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        ok = mask_p & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        gy_pix = (_idx(n, IDX64) * stride_gn + _idx(od, IDX64) * stride_gd + _idx(oh, IDX64) * stride_gh
                  + _idx(ow, IDX64) * stride_gw)
        x_pix = (_idx(n, IDX64) * stride_xn + _idx(id_, IDX64) * stride_xd + _idx(ih, IDX64) * stride_xh
                 + _idx(iw, IDX64) * stride_xw)
        a = tl.load(gy_ptr + (_idx(co, IDX64)[:, None] + gy_pix[None, :]), mask=mask_co[:, None] & mask_p[None, :],
                    other=0.0)
        b = tl.load(x_ptr + (x_pix[:, None] + _idx(g * CIN_G + offs_ci, IDX64)[None, :]),
                    mask=ok[:, None] & mask_ci[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)
    # The partial tile is stored contiguously along ci (a [co, ci] block of the slab ws[split, tap]),
    # so its stores are vectorised; the launcher moves the taps last after summing the splits.
    c_out = (tl.num_programs(2) // N_SPLIT) * COUT_G
    slab = (_idx(split, IDX64) * (KD * KH * KW) + tap) * c_out * CIN_G
    ws_off = slab + _idx(co, IDX64)[:, None] * CIN_G + _idx(offs_ci, IDX64)[None, :]
    tl.store(ws_ptr + ws_off, acc, mask=mask_co[:, None] & mask_ci[None, :])
