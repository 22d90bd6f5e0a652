"""Depthwise 2-D convolution (groups == C_in, C_out = C_in * multiplier): the memory-bound path.

Each output channel ``c`` reads one input channel ``c // MULT`` and one KH x KW filter,
so there is no channel reduction for a tensor core to exploit; the kernels stream
[BLOCK_P pixels x BLOCK_C channels] tiles and accumulate taps in registers (fp32,
fp64 for fp64). Tiles span channels too, so channels_last inputs load contiguously.

    forward      y[n, c, oh, ow]   = sum_taps x[n, c // MULT, ih, iw] * w[c, 0, kh, kw]
    input grad   dx[n, ci, ih, iw] = sum_{m < MULT} sum_taps dy[n, ci*MULT+m, oh, ow] * w[ci*MULT+m, 0, kh, kw]
    weight grad  dw[c, 0, kh, kw]  = sum_{n, oh, ow} dy[n, c, oh, ow] * x[n, c // MULT, ih, iw]
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, autotuned, cdiv, config_class, _idx, KernelSpec, launch, like_layout, needs_int64, pair, _tile_offsets,
    _unflatten, with_index64,
)


def _cfg(bp, bc, warps):
    return triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=warps, num_stages=2)


# Autotune configs per config class (kernels._common.config_class); the first of each list is the
# default, which must compile without spills in every build (python -m kernels.inspect).
_DW = [_cfg(64, 32, 4), _cfg(128, 16, 4), _cfg(32, 64, 4), _cfg(256, 8, 8), _cfg(128, 32, 8)]
# Defaults that spill in no build on triton 3.6 or 3.8 (python -m kernels.inspect, scripts/compat.sh).
DW_CONFIGS = with_index64({"fp16": [_cfg(64, 32, 8)] + _DW, "bf16": _DW, "fp32": _DW, "fp64": [_cfg(64, 16, 8)] + _DW},
                          fp16=[_cfg(64, 32, 8)], bf16=[_cfg(64, 8, 8)], fp32=[_cfg(64, 32, 8)], fp64=[_cfg(64, 16, 8)])
INTERPRET_CONFIG = {"BLOCK_P": 32, "BLOCK_C": 8}


@triton.jit
def _image_tile(P_IMG, BLOCK_P: tl.constexpr, IDX64: tl.constexpr):
    """(image n, pixel tile) of this program: grid axis 0 runs over n * tiles + tile."""
    pid = tl.program_id(0)
    tiles = tl.cdiv(P_IMG, BLOCK_P)
    return _idx(pid // tiles, IDX64), pid % tiles


def _pixel_grid(N, pixels, channels):
    """Grid of the forward / input-gradient kernels: (N * pixel tiles, channel tiles). The batch
    shares axis 0 (up to 2**31 - 1 programs) with the pixel tiles: axes 1 and 2 stop at 65535."""
    return lambda meta: (N * cdiv(pixels, meta["BLOCK_P"]), cdiv(channels, meta["BLOCK_C"]))


@triton.jit
def _dw_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    C_OUT, H, W, OH, OW, KH, KW, MULT,
    sxn, sxc, sxh, sxw,
    swo, swh, sww,
    syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # axis 0 = n * tiles + pixel tile (the batch is folded into axis 0: axes 1 and 2 stop at 65535)
    pid_c = tl.program_id(1)
    P_IMG = _idx(OH, IDX64) * OW
    n, pid_p = _image_tile(P_IMG, BLOCK_P, IDX64)
    offs_p = _tile_offsets(pid_p, BLOCK_P, IDX64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P_IMG
    mask_c = offs_c < C_OUT
    oh = offs_p // OW
    ow = offs_p % OW
    x_ch = n * sxn + _idx((offs_c // MULT), IDX64) * sxc
    w_ch = _idx(offs_c, IDX64) * swo
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for kh in range(KH):
        ih = oh * stride_h - pad_h + kh * dil_h
        ok_h = mask_p & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = ow * stride_w - pad_w + kw * dil_w
            ok = ok_h & (iw >= 0) & (iw < W)
            pix = _idx(ih, IDX64) * sxh + _idx(iw, IDX64) * sxw
            xv = tl.load(x_ptr + (pix[:, None] + x_ch[None, :]), mask=ok[:, None] & mask_c[None, :], other=0.0)
            wv = tl.load(w_ptr + (w_ch + kh * swh + kw * sww), mask=mask_c, other=0.0)
            acc += xv.to(acc.dtype) * wv.to(acc.dtype)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(acc.dtype)[None, :]
    y_off = (n * syn + _idx(oh, IDX64) * syh + _idx(ow, IDX64) * syw)[:, None] + _idx(offs_c, IDX64)[None, :] * syc
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _dw_bwd_input_kernel(
    gy_ptr, w_ptr, b_ptr, gx_ptr,
    C_IN, H, W, OH, OW, KH, KW, MULT,
    sgn, sgc, sgh, sgw,
    swo, swh, sww,
    sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(1)
    P_IMG = _idx(H, IDX64) * W
    n, pid_p = _image_tile(P_IMG, BLOCK_P, IDX64)  # axis 0 = n * tiles + pixel tile
    offs_p = _tile_offsets(pid_p, BLOCK_P, IDX64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # input channels
    mask_p = offs_p < P_IMG
    mask_c = offs_c < C_IN
    ih = offs_p // W
    iw = offs_p % W
    if gy_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    taps = KH * KW
    for t in range(MULT * taps):  # one flat loop over (multiplier slot, tap)
        co = offs_c * MULT + t // taps
        kh = (t % taps) // KW
        kw = t % KW
        th = ih + pad_h - kh * dil_h
        tw = iw + pad_w - kw * dil_w
        oh = th // stride_h
        ow = tw // stride_w
        ok = mask_p & (th >= 0) & (tw >= 0) & (th % stride_h == 0) & (tw % stride_w == 0) & (oh < OH) & (ow < OW)
        pix = _idx(oh, IDX64) * sgh + _idx(ow, IDX64) * sgw
        gv = tl.load(gy_ptr + ((n * sgn + pix)[:, None] + _idx(co, IDX64)[None, :] * sgc),
                     mask=ok[:, None] & mask_c[None, :], other=0.0)
        wv = tl.load(w_ptr + (_idx(co, IDX64) * swo + kh * swh + kw * sww), mask=mask_c, other=0.0)
        acc += gv.to(acc.dtype) * wv.to(acc.dtype)[None, :]
    if HAS_BIAS:  # conv_transpose2d's bias
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(acc.dtype)[None, :]
    x_off = (n * sxn + _idx(ih, IDX64) * sxh + _idx(iw, IDX64) * sxw)[:, None] + _idx(offs_c, IDX64)[None, :] * sxc
    tl.store(gx_ptr + x_off, acc.to(gx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _dw_bwd_weight_kernel(
    x_ptr, gy_ptr, ws_ptr,
    C_OUT, H, W, OH, OW, KH, KW, MULT, P, P_PER_SPLIT,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # One program: BLOCK_C channels x one tap, reducing over a slice of the P = N*OH*OW
    # output pixels; partial sums go to ws[split, c, tap] (summed by the launcher).
    pid_c = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    kh = tap // KW
    kw = tap % KW
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C_OUT
    gy_ch = _idx(offs_c, IDX64) * sgc
    x_ch = _idx((offs_c // MULT), IDX64) * sxc
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    p_start = _idx(split, IDX64) * P_PER_SPLIT  # int64 in the 64-bit build (so the loop is)
    p_end = tl.minimum(p_start + P_PER_SPLIT, P)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < p_end
        n, oh, ow = _unflatten(offs_p, OH, OW)
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        ok = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        gy_pix = n * sgn + _idx(oh, IDX64) * sgh + _idx(ow, IDX64) * sgw
        x_pix = n * sxn + _idx(ih, IDX64) * sxh + _idx(iw, IDX64) * sxw
        gv = tl.load(gy_ptr + (gy_pix[:, None] + gy_ch[None, :]), mask=mask_p[:, None] & mask_c[None, :], other=0.0)
        xv = tl.load(x_ptr + (x_pix[:, None] + x_ch[None, :]), mask=ok[:, None] & mask_c[None, :], other=0.0)
        acc += gv.to(acc.dtype) * xv.to(acc.dtype)
    part = tl.sum(acc, axis=0)
    taps = KH * KW
    ws_off = _idx(split, IDX64) * C_OUT * taps + _idx(offs_c, IDX64) * taps + tap
    tl.store(ws_ptr + ws_off, part, mask=mask_c)


_KEY = ["C_OUT", "OH", "OW", "KH", "KW", "stride_h", "sxc"]


_fwd_tuned = autotuned(_dw_fwd_kernel, DW_CONFIGS, _KEY)
_bwd_input_tuned = autotuned(_dw_bwd_input_kernel, DW_CONFIGS, ["C_IN", "H", "W", "KH", "KW", "MULT", "stride_h", "sgc"])
_bwd_weight_tuned = autotuned(_dw_bwd_weight_kernel, DW_CONFIGS, ["C_OUT", "P", "KH", "KW", "P_PER_SPLIT", "sxc"])


def depthwise_forward(x, weight, bias, stride, padding, dilation):
    """x: (N, C_in, H, W); weight: (C_in * MULT, 1, KH, KW); bias: (C_in * MULT,) or None."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    y = like_layout(x, (N, C_out, OH, OW))
    if y.numel() == 0:
        return y
    i64 = needs_int64(x, y, OH * OW)
    launch(_fwd_tuned[config_class(_fwd_tuned, x.dtype, idx64=i64)], _dw_fwd_kernel, _pixel_grid(N, OH * OW, C_out),
           INTERPRET_CONFIG,
           x, weight, bias if bias is not None else weight, y,
           C_out, H, W, OH, OW, KH, KW, C_out // C_in,
           *x.stride(), weight.stride(0), weight.stride(2), weight.stride(3), *y.stride(),
           sh, sw, ph, pw, dh, dw, HAS_BIAS=bias is not None, IDX64=i64)
    return y


def depthwise_input_grad(grad_output, weight, input_shape, stride, padding, dilation, bias=None):
    """grad_output: (N, C_in * MULT, OH, OW) -> dL/dx (N, C_in, H, W). With ``bias`` (C_in,)
    this is the depthwise conv_transpose2d."""
    N, C_in, H, W = input_shape
    C_out, _, KH, KW = weight.shape
    OH, OW = grad_output.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    gx = like_layout(grad_output, (N, C_in, H, W))
    if gx.numel() == 0:
        return gx
    i64 = needs_int64(grad_output, gx, H * W)
    launch(_bwd_input_tuned[config_class(_bwd_input_tuned, gx.dtype, idx64=i64)], _dw_bwd_input_kernel,
           _pixel_grid(N, H * W, C_in), INTERPRET_CONFIG,
           grad_output, weight, bias if bias is not None else weight, gx,
           C_in, H, W, OH, OW, KH, KW, C_out // C_in,
           *grad_output.stride(), weight.stride(0), weight.stride(2), weight.stride(3), *gx.stride(),
           sh, sw, ph, pw, dh, dw, HAS_BIAS=bias is not None, IDX64=i64)
    return gx


def depthwise_weight_grad(x, grad_output, weight_shape, stride, padding, dilation, split_k=None):
    """dL/dweight (C_in * MULT, 1, KH, KW), contiguous."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = weight_shape
    OH, OW = grad_output.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    P = N * OH * OW
    if P == 0 or C_out == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=x.dtype)
    if split_k is None:
        split_k = 1
        if x.device.type == "cuda":
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            split_k = max(1, min(4 * sms // max(cdiv(C_out, 32) * KH * KW, 1), cdiv(P, 4096), 128))
    p_per_split = cdiv(P, split_k)
    split_k = cdiv(P, p_per_split)
    ws = torch.empty((split_k, C_out, KH * KW), device=x.device, dtype=accumulator_dtype(x.dtype))
    grid = lambda meta: (cdiv(C_out, meta["BLOCK_C"]), KH * KW, split_k)
    i64 = needs_int64(x, grad_output, ws, split_k * p_per_split)
    launch(_bwd_weight_tuned[config_class(_bwd_weight_tuned, x.dtype, idx64=i64)], _dw_bwd_weight_kernel, grid,
           INTERPRET_CONFIG,
           x, grad_output, ws,
           C_out, H, W, OH, OW, KH, KW, C_out // C_in, P, p_per_split,
           *x.stride(), *grad_output.stride(),
           sh, sw, ph, pw, dh, dw, IDX64=i64)
    return ws.sum(0).reshape(weight_shape).to(x.dtype)


AOT_SPECS = [
    KernelSpec("depthwise_fwd", _dw_fwd_kernel, DW_CONFIGS),
    KernelSpec("depthwise_bwd_input", _dw_bwd_input_kernel, DW_CONFIGS),
    KernelSpec("depthwise_bwd_weight", _dw_bwd_weight_kernel, DW_CONFIGS),
]
