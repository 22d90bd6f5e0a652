"""Bilinear gather: sample a feature map at arbitrary fractional positions.

``bilinear_gather``: input (N, C, H, W), positions (N, P, 2) as (y, x) pixel coordinates ->
(N, C, P). As a GEMM it is a sparse one, Y[n, c, p] = sum_(h, w) S[n, p, (h, w)] X[n, c, (h, w)],
with four non-zeros per row of S (the corner weights), so it runs as a gather, not tl.dot.

Sampling rule: deformable convolution's (torchvision's ``deform_conv2d``; ``kernels._sampling``'s
``deform_corners``, the helpers every sampling kernel shares):
a corner outside the image contributes 0, so a sample with y <= -1, y >= H, x <= -1 or x >= W
is 0; a NaN coordinate reads no pixel and gives a NaN sample.

Kernels: forward, one program per (block of samples, block of channels). Backward, one program
per block of samples, looping over all channels: the position gradient is reduced in registers
(deterministic), the feature gradient is scattered with atomic adds into an fp32 (fp64)
workspace. Accumulation in fp32 (fp64 for fp64).

Layouts: input any strides (channels_last included); positions (N, P, 2) any strides; output
(N, C, P) contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    accumulator_dtype, alert_nondeterministic, autotuned, block_config, cdiv, config_class, _idx, KernelSpec, launch,
    needs_int64, _tile_offsets, with_index64, zeroed_workspace,
)
from ._sampling import (
    bilinear_load, corner_dot_scatter, corner_offsets, corner_weights, deform_corners, position_grads,
)


def _gcfg(bp, bc, warps):
    return block_config(warps, 1, BLOCK_P=bp, BLOCK_C=bc)


_GATHER_FWD = [_gcfg(64, 32, 4), _gcfg(128, 16, 4), _gcfg(32, 64, 4), _gcfg(128, 32, 8)]
GATHER_CONFIGS = {"fp16": _GATHER_FWD, "bf16": _GATHER_FWD, "fp32": _GATHER_FWD,
                  "fp64": [_gcfg(64, 32, 4), _gcfg(128, 32, 8)]}
# backward: per-element atomic scatters, <= 4 tile elements per thread. Every config listed compiles
# without spills in every build, triton 3.6 and 3.8 (python -m kernels.inspect --all-configs).
_GATHER_BWD = [_gcfg(32, 32, 8), _gcfg(64, 16, 8), _gcfg(32, 16, 4)]
GATHER_BWD_CONFIGS = {"fp16": _GATHER_BWD[1:], "bf16": _GATHER_BWD[1:],
                      "fp32": _GATHER_BWD, "fp64": [_gcfg(64, 8, 8)] + _GATHER_BWD}
GATHER_CONFIGS = with_index64(GATHER_CONFIGS, fp64=[_gcfg(64, 32, 8)])
GATHER_BWD_CONFIGS = with_index64(GATHER_BWD_CONFIGS, fp16=[_gcfg(32, 8, 8)], bf16=[_gcfg(32, 8, 8), _gcfg(32, 16, 8)],
                                  fp32=[_gcfg(32, 8, 8), _gcfg(32, 16, 8)], fp64=[_gcfg(32, 32, 8)])
GATHER_INTERPRET_CONFIG = {"BLOCK_P": 16, "BLOCK_C": 8}


@triton.jit
def _gather_fwd_kernel(
    # pointers
    x_ptr, pos_ptr, y_ptr,
    # shapes
    MP, P, C, H, W,
    # strides: input (sx*), positions (sp*), output (sy*)
    sxn, sxc, sxh, sxw,
    spn, spp, spk,
    syn, syc, syp,
    # meta-parameters
    IDX64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Tile: BLOCK_P samples (flattened (n, p)) x BLOCK_C channels; y[n, c, p].
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs = _tile_offsets(pid_p, BLOCK_P, IDX64)  # int64 in the 64-bit build: N * P may pass 2**31
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs < MP
    mask_c = offs_c < C
    p = offs % P
    n = offs // P
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    pos = _idx(n, IDX64) * spn + _idx(p, IDX64) * spp
    py = tl.load(pos_ptr + pos, mask=mask_p, other=0.0).to(acc.dtype)
    px = tl.load(pos_ptr + (pos + spk), mask=mask_p, other=0.0).to(acc.dtype)
    y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, pass_y, pass_x = deform_corners(py, px, H, W)
    w00, w01, w10, w11 = corner_weights(ly, lx, 0.0, False)
    p00, dx, dy = corner_offsets(_idx(n, IDX64) * sxn, y0, x0, ey, ex, sxh, sxw, IDX64)
    acc += bilinear_load(x_ptr, p00, dx, dy, _idx(offs_c, IDX64) * sxc, mask_c, mask_p & ok00, mask_p & ok01,
                         mask_p & ok10, mask_p & ok11, w00, w01, w10, w11, acc.dtype)
    mc = mask_c[None, :]
    y_off = (_idx(n, IDX64) * syn + _idx(p, IDX64) * syp)[:, None] + _idx(offs_c, IDX64)[None, :] * syc
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mc)


@triton.jit
def _gather_bwd_kernel(
    # pointers
    x_ptr, pos_ptr, gy_ptr, ws_ptr, gpos_ptr,
    # shapes
    MP, P, C, H, W,
    # strides: input (sx*), positions (sp*), grad output (sg*), grad-input workspace (si*),
    # grad positions (sd*)
    sxn, sxc, sxh, sxw,
    spn, spp, spk,
    sgn, sgc, sgp,
    sin, sic, sih, siw,
    sdn, sdp, sdk,
    # meta-parameters
    IDX64: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # One program: BLOCK_P samples, looping over all channels: the position gradient is
    # reduced in registers (deterministic); the feature gradient is scattered with atomic
    # adds into the fp32 (fp64) workspace ws (strides sin..siw); grad positions: sdn..sdk.
    pid_p = tl.program_id(0)
    offs = _tile_offsets(pid_p, BLOCK_P, IDX64)
    mask_p = offs < MP
    p = offs % P
    n = offs // P
    if x_ptr.dtype.element_ty == tl.float64:
        s00 = tl.zeros((BLOCK_P,), dtype=tl.float64)
    else:
        s00 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    s01 = tl.zeros_like(s00)
    s10 = tl.zeros_like(s00)
    s11 = tl.zeros_like(s00)
    ftype = s00.dtype
    pos = _idx(n, IDX64) * spn + _idx(p, IDX64) * spp
    py = tl.load(pos_ptr + pos, mask=mask_p, other=0.0).to(ftype)
    px = tl.load(pos_ptr + (pos + spk), mask=mask_p, other=0.0).to(ftype)
    y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, pass_y, pass_x = deform_corners(py, px, H, W)
    w00, w01, w10, w11 = corner_weights(ly, lx, 0.0, False)
    ok00 = mask_p & ok00
    ok01 = mask_p & ok01
    ok10 = mask_p & ok10
    ok11 = mask_p & ok11
    p00, dx, dy = corner_offsets(_idx(n, IDX64) * sxn, y0, x0, ey, ex, sxh, sxw, IDX64)
    q00, qx, qy = corner_offsets(_idx(n, IDX64) * sin, y0, x0, ey, ex, sih, siw, IDX64)
    g_pix = _idx(n, IDX64) * sgn + _idx(p, IDX64) * sgp
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        gv = tl.load(gy_ptr + (g_pix[:, None] + _idx(offs_c, IDX64)[None, :] * sgc), mask=mask_p[:, None] & mc[None, :],
                     other=0.0).to(ftype)
        xc = _idx(offs_c, IDX64) * sxc
        ic = _idx(offs_c, IDX64) * sic
        s00 += corner_dot_scatter(x_ptr, p00, xc, ws_ptr, q00, ic, mc, ok00, w00, gv, ftype)
        s01 += corner_dot_scatter(x_ptr, p00 + dx, xc, ws_ptr, q00 + qx, ic, mc, ok01, w01, gv, ftype)
        s10 += corner_dot_scatter(x_ptr, p00 + dy, xc, ws_ptr, q00 + qy, ic, mc, ok10, w10, gv, ftype)
        s11 += corner_dot_scatter(x_ptr, p00 + dy + dx, xc, ws_ptr, q00 + qy + qx, ic, mc, ok11, w11, gv, ftype)
    g_y, g_x, _ = position_grads(s00, s01, s10, s11, ly, lx)
    g_y = tl.where(pass_y, g_y, 0.0)
    g_x = tl.where(pass_x, g_x, 0.0)
    d_pos = _idx(n, IDX64) * sdn + _idx(p, IDX64) * sdp
    tl.store(gpos_ptr + d_pos, g_y.to(gpos_ptr.dtype.element_ty), mask=mask_p)
    tl.store(gpos_ptr + (d_pos + sdk), g_x.to(gpos_ptr.dtype.element_ty), mask=mask_p)


# --------------------------------------------------------------------------- launchers
_gather_fwd_tuned = autotuned(_gather_fwd_kernel, GATHER_CONFIGS, ["MP", "C", "sxc"])
# the backward accumulates into ws with atomics: reset_to_zero keeps autotuning trials from adding up
_gather_bwd_tuned = autotuned(_gather_bwd_kernel, GATHER_BWD_CONFIGS, ["MP", "C", "sxc"], reset=["ws_ptr"])


def bilinear_gather_forward(x, positions):
    """x: (N, C, H, W); positions: (N, P, 2) as (y, x) pixel coordinates -> (N, C, P), contiguous."""
    N, C, H, W = x.shape
    P = positions.shape[1]
    y = torch.empty((N, C, P), device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    MP = N * P
    grid = lambda meta: (cdiv(MP, meta["BLOCK_P"]), cdiv(C, meta["BLOCK_C"]))
    i64 = needs_int64(x, positions, y, MP)
    launch(_gather_fwd_tuned[config_class(_gather_fwd_tuned, x.dtype, idx64=i64)], _gather_fwd_kernel, grid,
           GATHER_INTERPRET_CONFIG, x, positions, y, MP, P, C, H, W, *x.stride(), *positions.stride(), *y.stride(),
           IDX64=i64)
    return y


def bilinear_gather_backward(grad_output, x, positions):
    """Gradients of bilinear_gather: (grad input like x, grad positions (N, P, 2))."""
    N, C, H, W = x.shape
    P = positions.shape[1]
    ws = zeroed_workspace(x, accumulator_dtype(x.dtype))
    g_pos = torch.empty((N, P, 2), device=x.device, dtype=x.dtype)
    MP = N * P
    if MP == 0 or C == 0:
        return ws.to(x.dtype), g_pos.zero_()
    alert_nondeterministic("convlab::bilinear_gather_backward (grad input)")
    grid = lambda meta: (cdiv(MP, meta["BLOCK_P"]),)
    i64 = needs_int64(x, positions, grad_output, ws, MP)
    launch(_gather_bwd_tuned[config_class(_gather_bwd_tuned, x.dtype, idx64=i64)], _gather_bwd_kernel, grid,
           GATHER_INTERPRET_CONFIG,
           x, positions, grad_output, ws, g_pos, MP, P, C, H, W,
           *x.stride(), *positions.stride(), *grad_output.stride(), *ws.stride(), *g_pos.stride(),
           IDX64=i64)
    return ws.to(x.dtype), g_pos


AOT_SPECS = [
    KernelSpec("bilinear_gather_fwd", _gather_fwd_kernel, GATHER_CONFIGS),
    KernelSpec("bilinear_gather_bwd", _gather_bwd_kernel, GATHER_BWD_CONFIGS),
]
