"""Implicit-GEMM 3-D convolution: forward, input gradient (= transposed conv), weight gradient.

The 3-D generalisation of ``kernels.conv2d`` (read its module docstring first): per group ``g``

    forward      Y[m, co]  = sum_k X~[m, k] W[k, co]     m = (n, od, oh, ow), k = (kd, kh, kw, ci)
    input grad   dX[m, ci] = sum_k dY~[m, k] W[k, ci]    m = (n, id, ih, iw), k = (kd, kh, kw, co)
    weight grad  dW[co, k] = sum_m dY[m, co] X~[m, k]    reduction over m = (n, od, oh, ow)

with ``~`` the implicit im2col gather (never materialised) and fp32 accumulation (fp64 for fp64).

What is shared with conv2d, by import rather than by copy:

* the config tables' builder and the autotune plumbing (``kernels._common``), the grouped tile
  order (``conv2d._grouped_tile``), the row-count bucket of the autotune key (``conv2d._m_key``);
* the K-major weight repack and the block-diagonal packing of narrow groups: a 3-D weight
  (C_out, CIN_G, KD, KH, KW) is handed to conv2d's helpers as the 2-D weight
  (C_out, CIN_G, KD * KH, KW), whose packed form (G, KD * KH, KW, K_CH, N_LD) is, byte for byte,
  the 3-D one (G, KD, KH, KW, K_CH, N_LD);
* the gradient launchers (``conv2d._input_grad``, ``conv2d._weight_grad``, written for any number
  of spatial axes): the stride-phase decomposition of the input gradient (``conv2d._phases`` per
  axis: stride_d * stride_h * stride_w dense implicit GEMMs, none with masked taps), the split-K
  heuristic of the weight gradient (``conv2d._weight_grad_split``) and its workspace sum;
* the weight-gradient tile (``kernels._igemm._weight_grad_tile``, written for (d, h, w); conv2d
  runs it with depth 1).

What is 3-D here: the implicit-GEMM tile of the forward and the input gradient (pixel rows
(n, d, h, w), taps (td, th, tw)), and the layout helpers for channels_last_3d
(``_channels_inner3d``, ``like_layout3d``). Activations are read channels-innermost (16-byte loads
along C): NCDHW input is copied to channels_last_3d once per call; channels_last_3d input is read
in place and gives channels_last_3d output, as conv2d does for channels_last.

All pointer offsets are 64-bit in the 64-bit index build (``IDX64``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    allow_tf32, autotuned, cdiv, config_class, fit_blocks, _idx, KernelSpec, launch, _mma, needs_int64,
    _tile_offsets, with_index64,
)
from .conv2d import GEMM_CONFIGS as _GEMM_2D, INPUT_GRAD_CONFIGS as _INPUT_GRAD_2D
from .conv2d import WEIGHT_GRAD_CONFIGS as _WEIGHT_GRAD_2D
from .conv2d import (
    GROUP_SIZE_M, INTERPRET_CONFIG, _block_diagonal, _cfg, _group_pack, _grouped_tile, _input_grad, _m_key,
    _pack_weight, _weight_grad,
)
from ._igemm import _unflatten3, _weight_grad_tile

# Config tables, named as conv2d's (benchmarks/roofline.py reads them by these names): conv2d's,
# with the builds that the fourth index vector (depth) pushes over the register file replaced
# (found with python -m kernels.aot --all-configs on triton 3.8 and 3.6: conv2d's TF32-off forward
# tiles, its fp64 and 64-bit-index weight-gradient tiles and its 64-bit fp64 input-gradient tile
# spilled there; every config listed here compiles without spills).
GEMM_CONFIGS = dict(_GEMM_2D, fp32_ieee=[_cfg(32, 32, 16, 4, 2)])
INPUT_GRAD_CONFIGS = with_index64(_INPUT_GRAD_2D, fp64=[_cfg(32, 32, 16, 8, 2), _cfg(32, 32, 16, 4, 1)])
WEIGHT_GRAD_CONFIGS = with_index64(dict(_WEIGHT_GRAD_2D, fp64=[_cfg(32, 32, 16, 4, 2), _cfg(64, 32, 16, 8, 2)]),
                                   fp64=[_cfg(32, 32, 16, 8, 2), _cfg(64, 32, 16, 8, 2)],
                                   fp16=[_cfg(64, 64, 32, 4, 2)], bf16=[_cfg(64, 64, 32, 4, 2)],
                                   fp32_ieee=[_cfg(32, 32, 16, 8, 2)])


def triple(v) -> tuple:
    """int or triple -> (d, h, w)."""
    return (v, v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------- helpers
@triton.jit
def _implicit_gemm_tile3d(
    # pointers: source activations (channel stride 1), packed weight (G, KD, KH, KW, K_CH, N_LD), bias, output
    src_ptr, w_ptr, b_ptr, dst_ptr,
    # shapes: GEMM rows M = N * GD * GH * GW output pixels on a GD x GH x GW grid; source extent
    # SD x SH x SW; K_CH channels per tap and group, N_CH output channels per group (N_LD: packed
    # row length); TD x TH x TW taps, the packed weight has KD x KH x KW
    M, GD, GH, GW, SD, SH, SW, K_CH, N_CH, N_LD, TD, TH, TW, KD, KH, KW,
    # strides: source (channel stride 1), output
    stride_sn, stride_sd, stride_sh, stride_sw,
    stride_on, stride_oc, stride_od, stride_oh, stride_ow,
    # geometry per axis: source row of pixel a and tap t = a * src_step + src_first + t * src_tap;
    # the weight's tap k = k0 + t * k_step; the output row of pixel a = a * dst_step + dst_first
    src_step_d, src_step_h, src_step_w, src_first_d, src_first_h, src_first_w, src_tap_d, src_tap_h, src_tap_w,
    kd0, kh0, kw0, kd_step, kh_step, kw_step,
    dst_step_d, dst_step_h, dst_step_w, dst_first_d, dst_first_h, dst_first_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):
    """One BLOCK_M x BLOCK_N output tile of group program_id(2): the body shared by the forward
    and the (phase of the) input gradient; conv2d's ``_implicit_gemm_tile`` with a depth axis."""
    g = tl.program_id(2)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N_CH, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
    offs_m = _tile_offsets(pid_m, BLOCK_M, IDX64)  # int64 in the 64-bit build: M may pass 2**31
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    n, a, b, c = _unflatten3(offs_m, GD, GH, GW)
    sd0 = a * src_step_d + src_first_d
    sh0 = b * src_step_h + src_first_h
    sw0 = c * src_step_w + src_first_w
    # the row base address (may point before the tensor for padded taps: those are masked)
    src_row = (_idx(n, IDX64) * stride_sn + _idx(sd0, IDX64) * stride_sd + _idx(sh0, IDX64) * stride_sh
               + _idx(sw0, IDX64) * stride_sw + _idx(g * K_CH, IDX64))
    w_g = w_ptr + _idx(g, IDX64) * KD * KH * KW * K_CH * N_LD
    # loads are masked to the padded row length: a mask constant over 16 columns keeps them vectorised
    mask_n_ld = offs_n < N_LD
    if src_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat K loop over (tap, channel block) pipelines better than nested loops.
    n_cb = tl.cdiv(K_CH, BLOCK_K)
    for kk in range(0, TD * TH * TW * n_cb):
        tap = kk // n_cb
        c0 = (kk - tap * n_cb) * BLOCK_K
        t_dh = tap // TW
        tw = tap - t_dh * TW
        td = t_dh // TH
        th = t_dh - td * TH
        dd = td * src_tap_d
        dh = th * src_tap_h
        dw = tw * src_tap_w
        ok = (mask_m & (sd0 + dd >= 0) & (sd0 + dd < SD) & (sh0 + dh >= 0) & (sh0 + dh < SH)
              & (sw0 + dw >= 0) & (sw0 + dw < SW))
        offs_k = c0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K_CH
        src_tap = src_row + (_idx(dd, IDX64) * stride_sd + _idx(dh, IDX64) * stride_sh + _idx(dw, IDX64) * stride_sw)
        x = tl.load(src_ptr + (src_tap[:, None] + offs_k[None, :]), mask=ok[:, None] & mask_k[None, :], other=0.0)
        w_row = (((kd0 + td * kd_step) * KH + (kh0 + th * kh_step)) * KW + (kw0 + tw * kw_step)) * K_CH
        w = tl.load(w_g + ((w_row + offs_k)[:, None] * N_LD + offs_n[None, :]),
                    mask=mask_k[:, None] & mask_n_ld[None, :], other=0.0)
        acc = _mma(x, w, acc, ALLOW_TF32)
    co = g * N_CH + offs_n
    mask_n = offs_n < N_CH
    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=mask_n, other=0.0)
        acc += bias[None, :].to(acc.dtype)
    # the pixel indices again (not kept live through the K loop)
    n, a, b, c = _unflatten3(offs_m, GD, GH, GW)
    dst_off = (_idx(n, IDX64) * stride_on + _idx(a * dst_step_d + dst_first_d, IDX64) * stride_od
               + _idx(b * dst_step_h + dst_first_h, IDX64) * stride_oh
               + _idx(c * dst_step_w + dst_first_w, IDX64) * stride_ow)[:, None] + _idx(co, IDX64)[None, :] * stride_oc
    tl.store(dst_ptr + dst_off, acc.to(dst_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# --------------------------------------------------------------------------- forward
@triton.jit
def _conv3d_fwd_kernel(
    # pointers: x (N, C_in, D, H, W) with channel stride 1; weight packed (G, KD, KH, KW, CIN_G, COUT_LD);
    # bias (C_out,); y (N, C_out, OD, OH, OW), any strides
    x_ptr, w_ptr, b_ptr, y_ptr,
    # shapes (M = N * OD * OH * OW; M_KEY = its next power of two, the autotune key; unused here)
    M, D, H, W, OD, OH, OW, CIN_G, COUT_G, COUT_LD, KD, KH, KW, M_KEY,
    # strides
    stride_xn, stride_xd, stride_xh, stride_xw,
    stride_yn, stride_yc, stride_yd, stride_yh, stride_yw,
    # convolution
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):
    _implicit_gemm_tile3d(x_ptr, w_ptr, b_ptr, y_ptr,
                          M, OD, OH, OW, D, H, W, CIN_G, COUT_G, COUT_LD, KD, KH, KW, KD, KH, KW,
                          stride_xn, stride_xd, stride_xh, stride_xw,
                          stride_yn, stride_yc, stride_yd, stride_yh, stride_yw,
                          stride_d, stride_h, stride_w, -pad_d, -pad_h, -pad_w, dil_d, dil_h, dil_w,
                          0, 0, 0, 1, 1, 1,
                          1, 1, 1, 0, 0, 0,
                          HAS_BIAS, ALLOW_TF32, IDX64, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SIZE_M)


# --------------------------------------------------------------------------- input grad
@triton.jit
def _conv3d_bwd_input_kernel(
    # pointers: dY (N, C_out, OD, OH, OW) with channel stride 1; weight packed (G, KD, KH, KW, COUT_G, CIN_LD);
    # bias (C_in,) (conv_transpose3d); dX (N, C_in, D, H, W), any strides
    gy_ptr, w_ptr, b_ptr, gx_ptr,
    # shapes: this phase's M = N * DJ * HJ * WJ input pixels, TD x TH x TW taps (M_KEY: autotune key, unused)
    M, DJ, HJ, WJ, OD, OH, OW, CIN_G, COUT_G, CIN_LD, TD, TH, TW, KD, KH, KW, M_KEY,
    # strides
    stride_gn, stride_gd, stride_gh, stride_gw,
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    # the phase: input row id = id0 + j * stride_d reads dY row od = j + od0 - t * dod through the
    # weight tap kd = kd0 + t * kd_step (and the same for rows and columns)
    id0, ih0, iw0, stride_d, stride_h, stride_w, od0, oh0, ow0, dod, doh, dow,
    kd0, kh0, kw0, kd_step, kh_step, kw_step,
    # meta-parameters
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):
    _implicit_gemm_tile3d(gy_ptr, w_ptr, b_ptr, gx_ptr,
                          M, DJ, HJ, WJ, OD, OH, OW, COUT_G, CIN_G, CIN_LD, TD, TH, TW, KD, KH, KW,
                          stride_gn, stride_gd, stride_gh, stride_gw,
                          stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
                          1, 1, 1, od0, oh0, ow0, -dod, -doh, -dow,
                          kd0, kh0, kw0, kd_step, kh_step, kw_step,
                          stride_d, stride_h, stride_w, id0, ih0, iw0,
                          HAS_BIAS, ALLOW_TF32, IDX64, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SIZE_M)


# --------------------------------------------------------------------------- weight grad
@triton.jit
def _conv3d_bwd_weight_kernel(
    # pointers: x (N, C_in, D, H, W) and dY (N, C_out, OD, OH, OW), both with channel stride 1;
    # workspace (N_SPLIT, KD * KH * KW, C_out, CIN_G) contiguous, fp32 / fp64 (see _weight_grad_tile)
    x_ptr, gy_ptr, ws_ptr,
    # shapes (M = N * OD * OH * OW, reduced in N_SPLIT splits of M_PER_SPLIT; M_KEY: autotune key, unused)
    M, D, H, W, OD, OH, OW, CIN_G, COUT_G, KD, KH, KW, M_PER_SPLIT, N_SPLIT, M_KEY,
    # strides
    stride_xn, stride_xd, stride_xh, stride_xw,
    stride_gn, stride_gd, stride_gh, stride_gw,
    # convolution
    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
    # meta-parameters
    ALLOW_TF32: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    _weight_grad_tile(x_ptr, gy_ptr, ws_ptr,
                      M, D, H, W, OD, OH, OW, CIN_G, COUT_G, KD, KH, KW, M_PER_SPLIT, N_SPLIT,
                      stride_xn, stride_xd, stride_xh, stride_xw,
                      stride_gn, stride_gd, stride_gh, stride_gw,
                      stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,
                      ALLOW_TF32, IDX64, BLOCK_M, BLOCK_N, BLOCK_K)


# --------------------------------------------------------------------------- launchers
# Autotune keys as conv2d's: the pixel count bucketed (M_KEY), channels, kernel and stride exact;
# tiles cut to the channel counts (fit_blocks).
_FWD_KEY = ["M_KEY", "CIN_G", "COUT_G", "KD", "KH", "KW", "stride_d", "stride_h", "stride_w"]
_fwd_prune = fit_blocks(BLOCK_K="CIN_G", BLOCK_N="COUT_G")
_bwd_input_prune = fit_blocks(BLOCK_K="COUT_G", BLOCK_N="CIN_G")
_bwd_weight_prune = fit_blocks(BLOCK_M="COUT_G", BLOCK_N="CIN_G")
_fwd_tuned = autotuned(_conv3d_fwd_kernel, GEMM_CONFIGS, _FWD_KEY, prune=_fwd_prune)
_bwd_input_tuned = autotuned(_conv3d_bwd_input_kernel, INPUT_GRAD_CONFIGS,
                             ["M_KEY", "CIN_G", "COUT_G", "TD", "TH", "TW"], prune=_bwd_input_prune)
_bwd_weight_tuned = autotuned(_conv3d_bwd_weight_kernel, WEIGHT_GRAD_CONFIGS,
                              ["M_KEY", "CIN_G", "COUT_G", "KD", "KH", "KW", "N_SPLIT"], prune=_bwd_weight_prune)


def is_channels_last_3d(t: torch.Tensor) -> bool:
    """True for a 5-D tensor in channels_last_3d (NDHWC) memory order that is not also contiguous
    NCDHW (a tensor with one channel, or one pixel, is both: it counts as NCDHW)."""
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()


def like_layout3d(ref: torch.Tensor, shape) -> torch.Tensor:
    """Empty tensor of the 5-D ``shape`` in ``ref``'s memory format (channels_last_3d stays
    channels_last_3d, anything else is contiguous NCDHW)."""
    fmt = torch.channels_last_3d if is_channels_last_3d(ref) else torch.contiguous_format
    return torch.empty(shape, device=ref.device, dtype=ref.dtype, memory_format=fmt)


def _channels_inner3d(t: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, D, H, W) with channel stride 1: ``t`` itself when it has one, else a
    channels_last_3d copy; broadcast (stride-0) batch / spatial dimensions stay broadcast (only
    one slice is copied: an expanded gradient is not materialised)."""
    if t.shape[1] <= 1 or t.stride(1) == 1:
        return t
    src = t
    for d in (0, 2, 3, 4):
        if t.stride(d) == 0 and t.shape[d] > 1:
            src = src.narrow(d, 0, 1)
    return src.contiguous(memory_format=torch.channels_last_3d).expand(t.shape)


def _as_2d(w: torch.Tensor) -> torch.Tensor:
    """(C_out, CIN_G, KD, KH, KW) -> (C_out, CIN_G, KD * KH, KW): the view conv2d's weight helpers take."""
    return w.reshape(w.shape[0], w.shape[1], w.shape[2] * w.shape[3], w.shape[4])


def _pack_weight3d(w: torch.Tensor, groups: int, transpose: bool) -> tuple[torch.Tensor, int]:
    """The weight (C_out, CIN_G, KD, KH, KW) as the K-major GEMM operand (G, KD, KH, KW, K_CH, N_LD)
    (rows zero-padded to 16 elements), via conv2d's repack of the (KD * KH, KW) view."""
    return _pack_weight(_as_2d(w), groups, transpose)


def _narrow_groups(weight: torch.Tensor, groups: int, k_ch: int, n_ch: int):
    """(weight, groups, pack): narrow groups packed into block-diagonal GEMMs (conv2d._group_pack)."""
    pack = _group_pack(groups, k_ch, n_ch)
    if pack > 1:
        weight = _block_diagonal(_as_2d(weight), groups, pack).reshape(
            weight.shape[0], weight.shape[1] * pack, *weight.shape[2:])
        groups //= pack
    return weight, groups, pack


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv3d_forward(x, weight, bias, stride, padding, dilation, groups):
    """y = conv3d(x, weight, bias). x: (N, C_in, D, H, W), NCDHW or channels_last_3d;
    weight: (C_out, C_in / groups, KD, KH, KW); bias: (C_out,) or None; stride / padding /
    dilation: ints or triples. Returns (N, C_out, OD, OH, OW) in x's memory format."""
    N, C_in, D, H, W = x.shape
    C_out, cin_g, KD, KH, KW = weight.shape
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = triple(stride), triple(padding), triple(dilation)
    OD, OH, OW = _out_size(D, KD, sd, pd, dd), _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    y = like_layout3d(x, (N, C_out, OD, OH, OW))
    if y.numel() == 0:
        return y
    weight, groups, pack = _narrow_groups(weight, groups, cin_g, C_out // groups)
    cin_g, cout_g = weight.shape[1], C_out // groups
    M = N * OD * OH * OW
    xc = _channels_inner3d(x)
    wp, cout_ld = _pack_weight3d(weight, groups, transpose=False)
    grid = lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(cout_g, meta["BLOCK_N"]), 1, groups)
    tf32, i64 = allow_tf32(x.dtype), needs_int64(xc, wp, y, M)
    launch(_fwd_tuned[config_class(_fwd_tuned, x.dtype, tf32, i64)], _conv3d_fwd_kernel, grid, INTERPRET_CONFIG,
           xc, wp, bias if bias is not None else weight, y,
           M, D, H, W, OD, OH, OW, cin_g, cout_g, cout_ld, KD, KH, KW, _m_key(M),
           xc.stride(0), xc.stride(2), xc.stride(3), xc.stride(4), *y.stride(),
           sd, sh, sw, pd, ph, pw, dd, dh, dw,
           HAS_BIAS=bias is not None, ALLOW_TF32=tf32, IDX64=i64, GROUP_SIZE_M=GROUP_SIZE_M)
    return y


def conv3d_input_grad(grad_output, weight, input_shape, stride, padding, dilation, groups, bias=None):
    """dL/dx of y = conv3d(x, weight): grad_output (N, C_out, OD, OH, OW) -> (N, C_in, D, H, W), in
    grad_output's memory format. One dense implicit GEMM per stride phase (conv2d's ``_phases``
    on each axis). With ``bias`` (C_in,) added this is conv_transpose3d(grad_output, weight, bias)."""
    gx = like_layout3d(grad_output, tuple(input_shape))
    if gx.numel() > 0:
        _input_grad(_conv3d_bwd_input_kernel, _bwd_input_tuned, _channels_inner3d(grad_output), weight, gx,
                    triple(stride), triple(padding), triple(dilation), groups, bias)
    return gx


def conv3d_weight_grad(x, grad_output, weight_shape, stride, padding, dilation, groups, split_k=None):
    """dL/dweight of y = conv3d(x, weight): x (N, C_in, D, H, W), grad_output (N, C_out, OD, OH, OW)
    -> (C_out, C_in / groups, KD, KH, KW), contiguous. ``split_k`` (default: chosen from the
    shape, by conv2d's rule with the (KD * KH, KW) taps) splits the reduction over output pixels
    into partial sums added at the end."""
    return _weight_grad(_conv3d_bwd_weight_kernel, _bwd_weight_tuned, _channels_inner3d(x),
                        _channels_inner3d(grad_output), weight_shape, triple(stride), triple(padding),
                        triple(dilation), groups, split_k)


AOT_SPECS = [
    KernelSpec("conv3d_fwd", _conv3d_fwd_kernel, GEMM_CONFIGS, gemm=True, prune=_fwd_prune),
    KernelSpec("conv3d_bwd_input", _conv3d_bwd_input_kernel, INPUT_GRAD_CONFIGS, gemm=True, prune=_bwd_input_prune),
    KernelSpec("conv3d_bwd_weight", _conv3d_bwd_weight_kernel, WEIGHT_GRAD_CONFIGS, gemm=True,
               prune=_bwd_weight_prune),
]
