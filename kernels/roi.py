"""Deformable RoI pooling (Dai et al., "Deformable Convolutional Networks", ICCV 2017, section 2.2).

RoI Align with a learned offset per output bin. For RoI ``k`` = (b, x1, y1, x2, y2) in image
coordinates, scaled by ``SCALE`` (the feature map's spatial scale, e.g. 1/16):

    roi_w = max(x2 - x1, 1), roi_h = max(y2 - y1, 1)        (torchvision's aligned=False rule)
    bin_w = roi_w / PW, bin_h = roi_h / PH
    grid  = (SR, SR) when SR > 0, else (ceil(roi_h / PH), ceil(roi_w / PW))   (per RoI)
    out[k, c, ph, pw] = 1 / (gh * gw) * sum_{iy, ix} bilinear(x[b, c],
            y1 + ph * bin_h + GAMMA * roi_h * offset[k, 1, ph, pw] + (iy + 0.5) * bin_h / gh,
            x1 + pw * bin_w + GAMMA * roi_w * offset[k, 0, ph, pw] + (ix + 0.5) * bin_w / gw)

i.e. offset channel 0 is the normalised x (width) shift and channel 1 the y (height) shift of a
bin: bin offset = GAMMA * offset * (roi_w, roi_h) as in the paper. Without an offset this is
exactly ``torchvision.ops.roi_align(..., aligned=False)`` (average of the samples of a bin).

Sampling rule: torchvision's RoI Align rule, *not* the deformable-convolution rule of
``kernels._sampling.deform_corners`` (which zero-pads every corner outside the map). RoI Align returns 0
for a sample with y < -1, y > H, x < -1 or x > W, clamps y, x in [-1, 0) to 0, and samples the
border row / column (replicated) for y >= H - 1 / x >= W - 1. ``kernels._sampling.roi_corners``
implements that rule; it also returns where the position is not clamped, so the offset gradient is the exact
derivative of the piecewise-bilinear function (0 where a coordinate is clamped).

NaN: a NaN offset makes its bin's output NaN and reads no pixel (the bin's samples are moved to
-inf, see ``_bin_grid``; NaN box coordinates are not specified). Gradients are those autograd gives through the
plain-PyTorch reference (``layers.roi._roi_bilinear_reference``): none into the input, 0 for the
NaN coordinate (the clamp's derivative), NaN for the other one if its derivative passes at any of
the bin's samples.

Batch index: a RoI whose batch index is not an integer in [0, N) (NaN included) reads nothing: its
output is 0 and it gets and gives no gradient (``layers.roi`` raises a ValueError for it instead
where checking costs no device sync).

Kernels: forward, one program per (RoI, block of bins, block of channels), looping over the RoI's
sampling grid (a runtime bound: adaptive grids differ per RoI). Backward in two kernels, so
neither carries the other's registers (no build spills, triton 3.6 and 3.8): the grad input, the
forward's transpose, one program per (RoI, block of bins, block of channels) scattering its
grad-output tile to each sample's four corners with atomic adds into an fp32 (fp64) workspace;
and, with an offset, the grad offset, one program per (RoI, block of bins) looping over the
samples and, inside, over all channels, reducing the four corner dot products in registers
(deterministic). Boxes get no gradient. Accumulation in fp32 (fp64 for fp64).

Layouts: input any strides (channels_last included); rois (K, 5) any strides; offset
(K, 2, PH, PW) any strides; output (K, C, PH, PW) contiguous. ``SCALE`` and ``GAMMA`` are
constexprs (one compilation per value; a detector uses one of each).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, alert_nondeterministic, autotuned, block_config, cdiv, config_class, _idx, KernelSpec, launch,
    needs_int64, with_index64, zeroed_workspace,
)
from ._sampling import (
    bilinear_accumulate, corner_dot, corner_offsets, corner_scatter, corner_weights, position_grads, roi_corners,
)


def _cfg(bp, bc, warps):
    return block_config(warps, 1, BLOCK_P=bp, BLOCK_C=bc)


# 7 x 7 = 49 bins: one 64-bin block covers a RoI. The first config of each list is the default.
# Every config listed compiles without spills in every build, triton 3.6 and 3.8 (python -m kernels.inspect
# --all-configs); fp64 runs the 32 x 16 tile with 8 warps: with 4 (and in the 64-bin tiles) its sm_80
# nchw build spills. The 32-channel fp16 / bf16 tile is 16 x 32: 32 x 32 (4 warps) and 64 x 32 (8)
# spill on sm_80 nhwc with triton 3.8.
_FWD = [_cfg(64, 16, 4), _cfg(32, 16, 4), _cfg(16, 32, 4)]
FWD_CONFIGS = {"fp16": _FWD, "bf16": _FWD, "fp32": [_cfg(64, 16, 4), _cfg(32, 32, 4)],
               "fp64": [_cfg(32, 16, 8), _cfg(32, 8, 4)]}
# backward, grad input: the forward's tile, each element scattered to four corners with atomic adds
_BWD = [_cfg(64, 16, 8), _cfg(32, 16, 4), _cfg(64, 16, 4), _cfg(32, 8, 4)]
BWD_CONFIGS = {"fp16": _BWD, "bf16": _BWD, "fp32": _BWD, "fp64": [_cfg(64, 16, 8), _cfg(32, 16, 4)]}
# backward, grad offset: four corner loads and dot products per sample, one tile element per thread:
# the tiles free of spills in every build on both triton 3.6 and 3.8 (python -m kernels.inspect)
_BWD_OFF = [_cfg(32, 4, 4)]
BWD_OFFSET_CONFIGS = {"fp16": _BWD_OFF, "bf16": _BWD_OFF, "fp32": _BWD_OFF, "fp64": [_cfg(32, 4, 4), _cfg(64, 8, 8)]}
BWD_OFFSET_CONFIGS = with_index64(BWD_OFFSET_CONFIGS, fp64=[_cfg(64, 8, 8)])
# 64-bit index builds whose 32-bit default spills (python -m kernels.inspect)
FWD_CONFIGS = with_index64(FWD_CONFIGS, fp16=[_cfg(64, 8, 8)], bf16=[_cfg(64, 8, 8)], fp32=[_cfg(64, 8, 8)],
                           fp64=[_cfg(32, 8, 8)])
INTERPRET_CONFIG = {"BLOCK_P": 16, "BLOCK_C": 8}


@triton.jit
def _any_passes(start, step, n, L):
    """Per bin: whether autograd through the reference passes a derivative to the coordinate at
    any of its n samples start + (i + 0.5) * step (an axis of length L): inside the clamp [0, L + 1]
    and not on the replicated border, i.e. 0 <= p < L - 1 (see _bin_grid for its use)."""
    res = tl.zeros(start.shape, dtype=tl.int1)
    for i in range(0, n):
        p = start + (i + 0.5) * step
        res = res | ((p >= 0.0) & (p < L - 1.0))
    return res


@triton.jit
def _bin_block(pid_p, PH, PW, BLOCK_P: tl.constexpr):
    """The bins of program pid_p's block of the PH x PW flattened bins: (mask, ph, pw), [BLOCK_P]."""
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return offs_p < PH * PW, offs_p // PW, offs_p % PW


@triton.jit
def _bin_offset(k, ph, pw, s_k, s_h, s_w, IDX64: tl.constexpr):
    """Element offset ([P]) of bins (ph, pw) of RoI k in a (K, 2 or C, PH, PW) tensor with strides
    (s_k, ., s_h, s_w): the offset, the output, its gradient and the offset gradient."""
    return _idx(k, IDX64) * s_k + _idx(ph, IDX64) * s_h + _idx(pw, IDX64) * s_w


@triton.jit
def _sample_corners(ystart, xstart, step_h, step_w, iy, ix, H, W):
    """``roi_corners`` of sample (iy, ix) of each bin's grid (see _bin_grid), at
    (ystart + (iy + 0.5) * step_h, xstart + (ix + 0.5) * step_w)."""
    return roi_corners(ystart + (iy + 0.5) * step_h, xstart + (ix + 0.5) * step_w, H, W)


@triton.jit
def _roi_geometry(roi_ptr, k, srk, src, N, PH, PW, SR, SCALE: tl.constexpr, ftype: tl.constexpr):
    rb = roi_ptr + k.to(tl.int64) * srk
    bf = tl.load(rb).to(tl.float32)
    # a batch index that is not an integer in [0, N) (or NaN): image 0, and no samples below
    b_ok = (bf >= 0.0) & (bf < N) & (bf == tl.floor(bf))
    b = tl.where(b_ok, bf, 0.0).to(tl.int32)
    x1 = tl.load(rb + src).to(ftype) * SCALE
    y1 = tl.load(rb + 2 * src).to(ftype) * SCALE
    x2 = tl.load(rb + 3 * src).to(ftype) * SCALE
    y2 = tl.load(rb + 4 * src).to(ftype) * SCALE
    roi_w = tl.maximum(x2 - x1, 1.0)
    roi_h = tl.maximum(y2 - y1, 1.0)
    bin_h = roi_h / PH
    bin_w = roi_w / PW
    gh = tl.ceil(roi_h / PH).to(tl.int32)
    gw = tl.ceil(roi_w / PW).to(tl.int32)
    if SR > 0:
        gh = SR
        gw = SR
    gh = tl.where(b_ok, gh, 0)
    gw = tl.where(b_ok, gw, 0)
    return b, x1, y1, roi_w, roi_h, bin_h, bin_w, gh, gw


@triton.jit
def _bin_grid(roi_ptr, off_ptr, k, ph, pw, mask_p, srk, src, sok, soc, soh, sow, N, PH, PW, SR,
              SCALE: tl.constexpr, GAMMA: tl.constexpr, HAS_OFFSET: tl.constexpr, IDX64: tl.constexpr,
              ftype: tl.constexpr):
    """Sampling grid of bins (ph, pw) of RoI k: where the grid origin's y / x is NaN (ny, nx), image
    b, the grid origin (ystart, xstart) shifted by the bin's offset (gamma * offset * RoI size),
    the step between samples, samples per bin (gh, gw) and the RoI size (roi_w, roi_h) in
    feature-map pixels. A NaN origin coordinate is moved to -inf, so every sample of the bin is
    invalid and reads nothing; after their loops the kernels make the bin's output NaN and the
    other coordinate's gradient NaN where autograd through the reference has 0 * NaN."""
    b, x1, y1, roi_w, roi_h, bin_h, bin_w, gh, gw = _roi_geometry(roi_ptr, k, srk, src, N, PH, PW, SR, SCALE,
                                                                  ftype)
    ystart = y1 + ph.to(ftype) * bin_h
    xstart = x1 + pw.to(ftype) * bin_w
    if HAS_OFFSET:
        o_pix = _bin_offset(k, ph, pw, sok, soh, sow, IDX64)
        ox = tl.load(off_ptr + o_pix, mask=mask_p, other=0.0).to(ftype)
        oy = tl.load(off_ptr + (o_pix + soc), mask=mask_p, other=0.0).to(ftype)
        ystart += GAMMA * roi_h * oy
        xstart += GAMMA * roi_w * ox
    ny = ystart != ystart
    nx = xstart != xstart
    ystart = tl.where(ny, float("-inf"), ystart)
    xstart = tl.where(nx, float("-inf"), xstart)
    # gh = gw = 0 only for a box with a bad batch index (no samples): keep the step finite
    step_h = bin_h / tl.maximum(gh, 1).to(ftype)
    step_w = bin_w / tl.maximum(gw, 1).to(ftype)
    return ny, nx, b, ystart, xstart, step_h, step_w, gh, gw, roi_w, roi_h


@triton.jit
def _roi_fwd_kernel(
    # pointers
    x_ptr, roi_ptr, off_ptr, y_ptr,
    # shapes
    N, C, H, W, PH, PW, SR,
    # strides: input, rois, offset, output
    sxn, sxc, sxh, sxw,
    srk, src,
    sok, soc, soh, sow,
    syk, syc, syh, syw,
    # meta-parameters
    SCALE: tl.constexpr, GAMMA: tl.constexpr, HAS_OFFSET: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    k = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_c = tl.program_id(2)
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    ftype = acc.dtype
    mask_p, ph, pw = _bin_block(pid_p, PH, PW, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    ny, nx, b, ystart, xstart, step_h, step_w, gh, gw, roi_w, roi_h = _bin_grid(
        roi_ptr, off_ptr, k, ph, pw, mask_p, srk, src, sok, soc, soh, sow, N, PH, PW, SR,
        SCALE, GAMMA, HAS_OFFSET, IDX64, ftype)
    x_img = _idx(b, IDX64) * sxn
    xc = _idx(offs_c, IDX64) * sxc
    for iy in range(0, gh):
        for ix in range(0, gw):
            y0, x0, ey, ex, ly, lx, ok, ok01, ok10, ok11, gyok, gxok = _sample_corners(ystart, xstart, step_h, step_w,
                                                                                       iy, ix, H, W)
            ok = mask_p & ok  # the RoI Align rule reads all four corners or none
            w00, w01, w10, w11 = corner_weights(ly, lx, 0.0, False)
            p00, dx, dy = corner_offsets(x_img, y0, x0, ey, ex, sxh, sxw, IDX64)
            acc = bilinear_accumulate(acc, x_ptr, p00, dx, dy, xc, mask_c, ok, ok, ok, ok, w00, w01, w10, w11, ftype)
    acc = acc / tl.maximum(gh * gw, 1).to(ftype)
    acc = tl.where((ny | nx)[:, None], float("nan"), acc)  # a NaN sample position (see _bin_grid)
    y_off = _bin_offset(k, ph, pw, syk, syh, syw, IDX64)[:, None] + _idx(offs_c, IDX64)[None, :] * syc
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _roi_bwd_kernel(
    # pointers
    roi_ptr, off_ptr, gy_ptr, ws_ptr,
    # shapes
    N, C, H, W, PH, PW, SR,
    # strides: rois, offset, grad output, grad-input workspace
    srk, src,
    sok, soc, soh, sow,
    sgk, sgc, sgh, sgw,
    sin, sic, sih, siw,
    # meta-parameters
    SCALE: tl.constexpr, GAMMA: tl.constexpr, HAS_OFFSET: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Grad input, the transpose of the forward: one program per (RoI, block of bins, block of
    # channels) loads its grad-output tile once and scatters it, times each sample's four corner
    # weights, into the fp32 (fp64) workspace with atomic adds. No channel loop and no reduction:
    # the offset gradient is _roi_bwd_offset_kernel's, so neither kernel carries the other's
    # registers (every build spill-free, python -m kernels.inspect, triton 3.6 and 3.8).
    k = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_c = tl.program_id(2)
    if ws_ptr.dtype.element_ty == tl.float64:
        ftype: tl.constexpr = tl.float64
    else:
        ftype: tl.constexpr = tl.float32
    mask_p, ph, pw = _bin_block(pid_p, PH, PW, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    ny, nx, b, ystart, xstart, step_h, step_w, gh, gw, roi_w, roi_h = _bin_grid(
        roi_ptr, off_ptr, k, ph, pw, mask_p, srk, src, sok, soc, soh, sow, N, PH, PW, SR,
        SCALE, GAMMA, HAS_OFFSET, IDX64, ftype)
    inv_count = 1.0 / tl.maximum(gh * gw, 1).to(ftype)
    g_pix = _bin_offset(k, ph, pw, sgk, sgh, sgw, IDX64)
    gv = tl.load(gy_ptr + (g_pix[:, None] + _idx(offs_c, IDX64)[None, :] * sgc), mask=mask_p[:, None] & mc[None, :],
                 other=0.0).to(ftype) * inv_count
    w_img = _idx(b, IDX64) * sin
    ic = _idx(offs_c, IDX64) * sic
    for iy in range(0, gh):
        for ix in range(0, gw):
            y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, gyok, gxok = _sample_corners(ystart, xstart, step_h,
                                                                                         step_w, iy, ix, H, W)
            w00, w01, w10, w11 = corner_weights(ly, lx, 0.0, False)
            q00, qx, qy = corner_offsets(w_img, y0, x0, ey, ex, sih, siw, IDX64)
            corner_scatter(ws_ptr, q00, ic, mc, mask_p & ok00, w00, gv)
            corner_scatter(ws_ptr, q00 + qx, ic, mc, mask_p & ok01, w01, gv)
            corner_scatter(ws_ptr, q00 + qy, ic, mc, mask_p & ok10, w10, gv)
            corner_scatter(ws_ptr, q00 + qy + qx, ic, mc, mask_p & ok11, w11, gv)


@triton.jit
def _roi_bwd_offset_kernel(
    # pointers
    x_ptr, roi_ptr, off_ptr, gy_ptr, goff_ptr,
    # shapes
    N, C, H, W, PH, PW, SR,
    # strides: input, rois, offset, grad output, grad offset
    sxn, sxc, sxh, sxw,
    srk, src,
    sok, soc, soh, sow,
    sgk, sgc, sgh, sgw,
    sdk, sdc, sdh, sdw,
    # meta-parameters
    SCALE: tl.constexpr, GAMMA: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Grad offset: one program per (RoI, block of bins) loops over all channels and reduces, per
    # sample, grad output against the four corners in registers (deterministic, no atomics).
    k = tl.program_id(0)
    pid_p = tl.program_id(1)
    if x_ptr.dtype.element_ty == tl.float64:
        g_y = tl.zeros((BLOCK_P,), dtype=tl.float64)
    else:
        g_y = tl.zeros((BLOCK_P,), dtype=tl.float32)
    g_x = tl.zeros_like(g_y)
    ftype = g_y.dtype
    mask_p, ph, pw = _bin_block(pid_p, PH, PW, BLOCK_P)
    ny, nx, b, ystart, xstart, step_h, step_w, gh, gw, roi_w, roi_h = _bin_grid(
        roi_ptr, off_ptr, k, ph, pw, mask_p, srk, src, sok, soc, soh, sow, N, PH, PW, SR,
        SCALE, GAMMA, True, IDX64, ftype)
    x_img = _idx(b, IDX64) * sxn
    g_pix = _bin_offset(k, ph, pw, sgk, sgh, sgw, IDX64)
    # samples outer (one flat loop over the bin's grid), channels inner: each sample's corners
    # once, the four corner dot products reduced over all channels in registers
    for s in range(0, gh * gw):
        iy = s // gw
        ix = s - iy * gw
        y0, x0, ey, ex, ly, lx, ok, ok01, ok10, ok11, gyok, gxok = _sample_corners(ystart, xstart, step_h, step_w,
                                                                                   iy, ix, H, W)
        ok = mask_p & ok  # the RoI Align rule reads all four corners or none
        p00, dx, dy = corner_offsets(x_img, y0, x0, ey, ex, sxh, sxw, IDX64)
        u00 = tl.zeros_like(g_y)
        u01 = tl.zeros_like(g_y)
        u10 = tl.zeros_like(g_y)
        u11 = tl.zeros_like(g_y)
        for c_start in range(0, C, BLOCK_C):
            offs_c = c_start + tl.arange(0, BLOCK_C)
            okc = ok[:, None] & (offs_c < C)[None, :]
            gv = tl.load(gy_ptr + (g_pix[:, None] + _idx(offs_c, IDX64)[None, :] * sgc), mask=okc,
                         other=0.0).to(ftype)
            xc = _idx(offs_c, IDX64)[None, :] * sxc
            u00 += corner_dot(x_ptr, p00, xc, okc, gv, ftype)
            u01 += corner_dot(x_ptr, p00 + dx, xc, okc, gv, ftype)
            u10 += corner_dot(x_ptr, p00 + dy, xc, okc, gv, ftype)
            u11 += corner_dot(x_ptr, p00 + dy + dx, xc, okc, gv, ftype)
        d_y, d_x, _ = position_grads(u00, u01, u10, u11, ly, lx)
        g_y += tl.where(gyok, d_y, 0.0)
        g_x += tl.where(gxok, d_x, 0.0)
    inv_count = 1.0 / tl.maximum(gh * gw, 1).to(ftype)
    # a NaN origin coordinate: NaN gradient for the other one where its derivative passes
    g_y = tl.where(nx & _any_passes(ystart, step_h, gh, H), float("nan"), g_y * inv_count)
    g_x = tl.where(ny & _any_passes(xstart, step_w, gw, W), float("nan"), g_x * inv_count)
    d_pix = _bin_offset(k, ph, pw, sdk, sdh, sdw, IDX64)
    tl.store(goff_ptr + d_pix, (g_x * (GAMMA * roi_w)).to(goff_ptr.dtype.element_ty), mask=mask_p)
    tl.store(goff_ptr + (d_pix + sdc), (g_y * (GAMMA * roi_h)).to(goff_ptr.dtype.element_ty), mask=mask_p)


# --------------------------------------------------------------------------- launchers
_KEY = ["C", "PH", "PW", "SR", "sxc"]
_fwd_tuned = autotuned(_roi_fwd_kernel, FWD_CONFIGS, _KEY)
# the backward accumulates into ws with atomics: reset_to_zero keeps autotuning trials from adding
# up; the launcher zeroes ws itself (zeroed_workspace) and does not rely on it
_bwd_tuned = autotuned(_roi_bwd_kernel, BWD_CONFIGS, _KEY, reset=["ws_ptr"])
_bwd_off_tuned = autotuned(_roi_bwd_offset_kernel, BWD_OFFSET_CONFIGS, _KEY)


def deform_roi_pool_forward(x, rois, offset, spatial_scale: float, pooled_h: int, pooled_w: int,
                            sampling_ratio: int, gamma: float):
    """x (N, C, H, W); rois (K, 5) as (batch index, x1, y1, x2, y2); offset (K, 2, PH, PW) as
    normalised (dx, dy) or None -> (K, C, PH, PW), contiguous."""
    N, C, H, W = x.shape
    K = rois.shape[0]
    y = torch.empty((K, C, pooled_h, pooled_w), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    o_t = offset if offset is not None else rois
    o_strides = tuple(offset.stride()) if offset is not None else (0, 0, 0, 0)
    grid = lambda meta: (K, cdiv(pooled_h * pooled_w, meta["BLOCK_P"]), cdiv(C, meta["BLOCK_C"]))
    i64 = needs_int64(x, rois, offset, y)
    launch(_fwd_tuned[config_class(_fwd_tuned, x.dtype, idx64=i64)], _roi_fwd_kernel, grid, INTERPRET_CONFIG,
           x, rois, o_t, y, N, C, H, W, pooled_h, pooled_w, sampling_ratio,
           *x.stride(), *rois.stride(), *o_strides, *y.stride(),
           SCALE=float(spatial_scale), GAMMA=float(gamma), HAS_OFFSET=offset is not None,
           IDX64=i64)
    return y


def deform_roi_pool_backward(grad_output, x, rois, offset, spatial_scale: float, pooled_h: int, pooled_w: int,
                             sampling_ratio: int, gamma: float):
    """(grad input like x, grad offset (K, 2, PH, PW) or an empty tensor when offset is None)."""
    N, C, H, W = x.shape
    K = rois.shape[0]
    ws = zeroed_workspace(x, accumulator_dtype(x.dtype))
    g_off = (torch.zeros((K, 2, pooled_h, pooled_w), device=x.device, dtype=x.dtype) if offset is not None
             else torch.empty(0, device=x.device, dtype=x.dtype))
    if K == 0 or C == 0 or pooled_h * pooled_w == 0:
        return ws.to(x.dtype), g_off
    alert_nondeterministic("convlab::deform_roi_pool_backward (grad input)")
    o_t = offset if offset is not None else rois
    o_strides = tuple(offset.stride()) if offset is not None else (0, 0, 0, 0)
    bins = pooled_h * pooled_w
    i64 = needs_int64(x, rois, offset, grad_output, ws)
    grid = lambda meta: (K, cdiv(bins, meta["BLOCK_P"]), cdiv(C, meta["BLOCK_C"]))
    launch(_bwd_tuned[config_class(_bwd_tuned, x.dtype, idx64=i64)], _roi_bwd_kernel, grid, INTERPRET_CONFIG,
           rois, o_t, grad_output, ws, N, C, H, W, pooled_h, pooled_w, sampling_ratio,
           *rois.stride(), *o_strides, *grad_output.stride(), *ws.stride(),
           SCALE=float(spatial_scale), GAMMA=float(gamma), HAS_OFFSET=offset is not None,
           IDX64=i64)
    if offset is not None:
        grid = lambda meta: (K, cdiv(bins, meta["BLOCK_P"]))
        launch(_bwd_off_tuned[config_class(_bwd_off_tuned, x.dtype, idx64=i64)], _roi_bwd_offset_kernel, grid,
               INTERPRET_CONFIG, x, rois, offset, grad_output, g_off, N, C, H, W, pooled_h, pooled_w, sampling_ratio,
               *x.stride(), *rois.stride(), *offset.stride(), *grad_output.stride(), *g_off.stride(),
               SCALE=float(spatial_scale), GAMMA=float(gamma), IDX64=i64)
    return ws.to(x.dtype), g_off


AOT_SPECS = [
    KernelSpec("deform_roi_pool_fwd", _roi_fwd_kernel, FWD_CONFIGS),
    KernelSpec("deform_roi_pool_bwd", _roi_bwd_kernel, BWD_CONFIGS),
    KernelSpec("deform_roi_bwd_offset", _roi_bwd_offset_kernel, BWD_OFFSET_CONFIGS),
]
