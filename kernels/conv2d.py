"""Implicit-GEMM 2-D convolution: forward, input gradient (= transposed conv), weight gradient.

Layouts: any strides (NCHW, channels_last, non-contiguous views, zero-stride
expanded gradients) are read in place; outputs take the input's memory format.
Per group ``g`` the three passes are GEMMs over

    forward      Y[m, co]  = sum_k X~[m, k] W[co, k]     m = (n, oh, ow), k = (kh, kw, ci)
    input grad   dX[m, ci] = sum_k dY~[m, k] W[k, ci]    m = (n, ih, iw), k = (kh, kw, co)
    weight grad  dW[co, k] = sum_m dY[m, co] X~[m, k]    reduction over m = (n, oh, ow)

where ``~`` marks the implicit im2col gather (never materialised). The K loop
walks kernel taps outermost, so the bounds mask of a tap is computed once and
the inner loop streams contiguous channels. Accumulation is fp32 (fp64 for fp64).
All pointer offsets are 64-bit, so tensors past 2**31 elements are addressed right.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, allow_tf32, autotuned, cdiv, config_class, _idx, KernelSpec, launch, like_layout, _mma, needs_int64, pair,
    _tile_offsets, _unflatten, with_index64,
)


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# Autotune configs per config class (kernels._common.config_class); the first of each list is the
# default, which must compile without spills in every build (python -m kernels.inspect).
# "fp32_ieee" (TF32 off) runs on CUDA-core FMAs: its operand fragments take more registers than
# tensor-core fragments, so its tiles are smaller and its K steps shorter.
GEMM_CONFIGS = {
    "fp16": [_cfg(64, 64, 32, 4, 4), _cfg(128, 64, 32, 8, 3), _cfg(128, 128, 32, 8, 3), _cfg(64, 32, 32, 4, 4),
             _cfg(32, 32, 16, 2, 3)],
    "fp32": [_cfg(64, 64, 32, 4, 3), _cfg(128, 64, 32, 8, 3), _cfg(64, 32, 32, 4, 4), _cfg(32, 32, 16, 2, 3)],
    "fp32_ieee": [_cfg(64, 64, 16, 4, 2), _cfg(32, 64, 16, 4, 2), _cfg(64, 32, 16, 4, 2)],
    "fp64": [_cfg(64, 32, 16, 4, 2), _cfg(32, 32, 16, 4, 2), _cfg(64, 64, 16, 8, 2)],
}
GEMM_CONFIGS["bf16"] = GEMM_CONFIGS["fp16"]
# The weight gradient keeps two more index vectors live per K step: its FMA default is narrower.
# 64-bit index builds: the pixel-index vectors double in width; 8 warps spread them (found with
# python -m kernels.inspect: the 32-bit defaults spill there, these do not).
WEIGHT_GRAD_CONFIGS = with_index64(dict(GEMM_CONFIGS, fp32_ieee=[_cfg(64, 32, 16, 4, 2), _cfg(64, 64, 16, 4, 1)]),
                                   fp16=[_cfg(64, 64, 32, 8, 2)], bf16=[_cfg(64, 64, 32, 8, 2)],
                                   fp32=[_cfg(64, 64, 32, 8, 2)])
GEMM_CONFIGS = with_index64(GEMM_CONFIGS, fp16=[_cfg(64, 64, 32, 8, 2)], bf16=[_cfg(64, 64, 32, 8, 2)],
                            fp32=[_cfg(64, 64, 32, 8, 2)], fp32_ieee=[_cfg(64, 64, 32, 8, 1)],
                            fp64=[_cfg(64, 64, 32, 8, 2)])
# Small tiles under the interpreter: numpy cost grows with tile area, not program count.
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}


# --------------------------------------------------------------------------- forward
@triton.jit
def _conv2d_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
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
    x_base = _idx(n, IDX64) * sxn + _idx((g * CIN_G), IDX64) * sxc
    co = g * COUT_G + offs_n
    w_base = _idx(co, IDX64) * swo
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat K loop over (tap, channel block) pipelines better than nested loops.
    n_cb = tl.cdiv(CIN_G, BLOCK_K)
    for kk in range(0, KH * KW * n_cb):
        tap = kk // n_cb
        c0 = (kk % n_cb) * BLOCK_K
        kh = tap // KW
        kw = tap % KW
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        offs_k = c0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < CIN_G
        x_tap = x_base + _idx(ih, IDX64) * sxh + _idx(iw, IDX64) * sxw
        a = tl.load(x_ptr + (x_tap[:, None] + _idx(offs_k[None, :], IDX64) * sxc),
                    mask=ok[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptr + (w_base[None, :] + (kh * swh + kw * sww) + _idx(offs_k[:, None], IDX64) * swi),
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=mask_n, other=0.0)
        acc += bias[None, :].to(acc.dtype)
    y_off = (_idx(n, IDX64) * syn + _idx(oh, IDX64) * syh + _idx(ow, IDX64) * syw)[:, None] \
        + _idx(co, IDX64)[None, :] * syc
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------- input grad
@triton.jit
def _conv2d_bwd_input_kernel(
    gy_ptr, w_ptr, b_ptr, gx_ptr,
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW,
    sgn, sgc, sgh, sgw,
    swo, swi, swh, sww,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # M runs over input pixels (n, ih, iw); N over the group's input channels; K over (tap, co).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = _tile_offsets(pid_m, BLOCK_M, IDX64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < CIN_G
    n, ih, iw = _unflatten(offs_m, H, W)
    gy_base = _idx(n, IDX64) * sgn + _idx((g * COUT_G), IDX64) * sgc
    ci = g * CIN_G + offs_n
    w_base = _idx((g * COUT_G), IDX64) * swo + _idx(offs_n, IDX64) * swi
    if gy_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_cb = tl.cdiv(COUT_G, BLOCK_K)
    for kk in range(0, KH * KW * n_cb):
        tap = kk // n_cb
        c0 = (kk % n_cb) * BLOCK_K
        kh = tap // KW
        kw = tap % KW
        th = ih + pad_h - kh * dil_h
        tw = iw + pad_w - kw * dil_w
        oh = th // stride_h
        ow = tw // stride_w
        # th, tw >= 0 are tested first: // and % of negatives are never used unmasked.
        ok = mask_m & (th >= 0) & (tw >= 0) & (th % stride_h == 0) & (tw % stride_w == 0) & (oh < OH) & (ow < OW)
        offs_k = c0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < COUT_G
        gy_tap = gy_base + _idx(oh, IDX64) * sgh + _idx(ow, IDX64) * sgw
        a = tl.load(gy_ptr + (gy_tap[:, None] + _idx(offs_k[None, :], IDX64) * sgc),
                    mask=ok[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptr + (w_base[None, :] + (kh * swh + kw * sww) + _idx(offs_k[:, None], IDX64) * swo),
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)
    if HAS_BIAS:  # used by conv_transpose2d, whose output is this kernel's result
        bias = tl.load(b_ptr + ci, mask=mask_n, other=0.0)
        acc += bias[None, :].to(acc.dtype)
    x_off = (_idx(n, IDX64) * sxn + _idx(ih, IDX64) * sxh + _idx(iw, IDX64) * sxw)[:, None] \
        + _idx(ci, IDX64)[None, :] * sxc
    tl.store(gx_ptr + x_off, acc.to(gx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------- weight grad
@triton.jit
def _conv2d_bwd_weight_kernel(
    x_ptr, gy_ptr, ws_ptr,
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW, M_PER_SPLIT, N_SPLIT,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Tile: BLOCK_M output channels x BLOCK_N input channels of one tap (axis 1 =
    # tap * n_tiles + tile). The reduction over output pixels is split N_SPLIT ways
    # (axis 2 = g * N_SPLIT + split) into a contiguous fp32/fp64 workspace
    # ws[split, co, ci, kh, kw] that the launcher sums: deterministic, no atomics.
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_gs = tl.program_id(2)
    g = pid_gs // N_SPLIT
    split = pid_gs % N_SPLIT
    n_tiles_n = tl.cdiv(CIN_G, BLOCK_N)
    tap = pid_t // n_tiles_n
    pid_n = pid_t % n_tiles_n
    kh = tap // KW
    kw = tap % KW
    offs_co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_co = offs_co < COUT_G
    mask_ci = offs_ci < CIN_G
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
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        gy_pix = _idx(n, IDX64) * sgn + _idx(oh, IDX64) * sgh + _idx(ow, IDX64) * sgw
        x_pix = _idx(n, IDX64) * sxn + _idx(ih, IDX64) * sxh + _idx(iw, IDX64) * sxw
        a = tl.load(gy_ptr + (gy_ch[:, None] + gy_pix[None, :]), mask=mask_co[:, None] & mask_p[None, :], other=0.0)
        b = tl.load(x_ptr + (x_pix[:, None] + x_ch[None, :]), mask=ok[:, None] & mask_ci[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32)
    taps = KH * KW
    per_split = _idx(tl.num_programs(2) // N_SPLIT, IDX64) * COUT_G * CIN_G * taps
    ws_off = (_idx(split, IDX64) * per_split
              + _idx(co, IDX64)[:, None] * (CIN_G * taps)
              + _idx(offs_ci, IDX64)[None, :] * taps + tap)
    tl.store(ws_ptr + ws_off, acc, mask=mask_co[:, None] & mask_ci[None, :])


# --------------------------------------------------------------------------- launchers
_FWD_KEY = ["M", "CIN_G", "COUT_G", "KH", "KW", "stride_h", "stride_w", "sxc"]
_fwd_tuned = autotuned(_conv2d_fwd_kernel, GEMM_CONFIGS, _FWD_KEY)
_bwd_input_tuned = autotuned(_conv2d_bwd_input_kernel, GEMM_CONFIGS, _FWD_KEY[:-1] + ["sgc"])
_bwd_weight_tuned = autotuned(_conv2d_bwd_weight_kernel, WEIGHT_GRAD_CONFIGS,
                              ["M", "CIN_G", "COUT_G", "KH", "KW", "N_SPLIT", "sxc"])


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
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(cout_g, meta["BLOCK_N"]), groups)
    tf32, i64 = allow_tf32(x.dtype), needs_int64(x, weight, y, M)
    launch(_fwd_tuned[config_class(_fwd_tuned, x.dtype, tf32, i64)], _conv2d_fwd_kernel, grid, INTERPRET_CONFIG,
           x, weight, bias if bias is not None else weight, y,
           M, H, W, OH, OW, cin_g, cout_g, KH, KW,
           *x.stride(), *weight.stride(), *y.stride(),
           sh, sw, ph, pw, dh, dw,
           HAS_BIAS=bias is not None, ALLOW_TF32=tf32, IDX64=i64)
    return y


def conv2d_input_grad(grad_output, weight, input_shape, stride, padding, dilation, groups, bias=None):
    """dL/dx of y = conv2d(x, weight): grad_output (N, C_out, OH, OW) -> (N, C_in, H, W).

    With ``bias`` (C_in,) added this is conv_transpose2d(grad_output, weight, bias)."""
    N, C_in, H, W = input_shape
    C_out, cin_g, KH, KW = weight.shape
    OH, OW = grad_output.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    gx = like_layout(grad_output, (N, C_in, H, W))
    cout_g = C_out // groups
    M = N * H * W
    if gx.numel() == 0:
        return gx
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(cin_g, meta["BLOCK_N"]), groups)
    tf32, i64 = allow_tf32(grad_output.dtype), needs_int64(grad_output, weight, gx, M)
    launch(_bwd_input_tuned[config_class(_bwd_input_tuned, grad_output.dtype, tf32, i64)], _conv2d_bwd_input_kernel,
           grid, INTERPRET_CONFIG,
           grad_output, weight, bias if bias is not None else weight, gx,
           M, H, W, OH, OW, cin_g, cout_g, KH, KW,
           *grad_output.stride(), *weight.stride(), *gx.stride(),
           sh, sw, ph, pw, dh, dw,
           HAS_BIAS=bias is not None, ALLOW_TF32=tf32,
           IDX64=i64)
    return gx


def _split_k(M: int, tiles: int, device: torch.device) -> int:
    """Split the pixel reduction so that small weight tensors still fill the GPU."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(2 * sms // max(tiles, 1), cdiv(M, 2048), 64))


def conv2d_weight_grad(x, grad_output, weight_shape, stride, padding, dilation, groups, split_k=None):
    """dL/dweight of y = conv2d(x, weight): -> (C_out, C_in/groups, KH, KW), contiguous.

    ``split_k`` (default: chosen from the shape) splits the reduction over output pixels."""
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = weight_shape
    OH, OW = grad_output.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    cout_g = C_out // groups
    M = N * OH * OW
    acc_dtype = accumulator_dtype(x.dtype)
    if M == 0 or C_out == 0 or cin_g == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=x.dtype)
    if split_k is None:
        split_k = _split_k(M, cdiv(cout_g, 64) * cdiv(cin_g, 64) * KH * KW * groups, x.device)
    m_per_split = cdiv(M, split_k)
    split_k = cdiv(M, m_per_split)
    ws = torch.empty((split_k, C_out, cin_g, KH, KW), device=x.device, dtype=acc_dtype)
    grid = lambda meta: (cdiv(cout_g, meta["BLOCK_M"]), cdiv(cin_g, meta["BLOCK_N"]) * KH * KW, groups * split_k)
    tf32, i64 = allow_tf32(x.dtype), needs_int64(x, grad_output, ws, split_k * m_per_split)
    launch(_bwd_weight_tuned[config_class(_bwd_weight_tuned, x.dtype, tf32, i64)], _conv2d_bwd_weight_kernel, grid,
           INTERPRET_CONFIG,
           x, grad_output, ws,
           M, H, W, OH, OW, cin_g, cout_g, KH, KW, m_per_split, split_k,
           *x.stride(), *grad_output.stride(),
           sh, sw, ph, pw, dh, dw,
           ALLOW_TF32=tf32, IDX64=i64)
    return (ws.sum(0) if split_k > 1 else ws[0]).to(x.dtype)


AOT_SPECS = [
    KernelSpec("conv2d_fwd", _conv2d_fwd_kernel, GEMM_CONFIGS, gemm=True),
    KernelSpec("conv2d_bwd_input", _conv2d_bwd_input_kernel, GEMM_CONFIGS, gemm=True),
    KernelSpec("conv2d_bwd_weight", _conv2d_bwd_weight_kernel, WEIGHT_GRAD_CONFIGS, gemm=True),
]
