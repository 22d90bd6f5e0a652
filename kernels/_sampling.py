"""Bilinear sampling, shared by every kernel that reads a feature map at fractional positions
(deformable convolution, the bilinear gather, deformable RoI pooling).

A sample at (py, px) of an H x W map is the blend of its four integer corners

    v = w00 * x[y0, x0] + w01 * x[y0, x1] + w10 * x[y1, x0] + w11 * x[y1, x1]
    w00 = hy * hx, w01 = hy * lx, w10 = ly * hx, w11 = ly * lx     (hy = 1 - ly, hx = 1 - lx)

and two position rules decide the corners, which are read and which pass a derivative:

* ``deform_corners``: torchvision's ``deform_conv2d`` rule. A corner outside the map contributes
  0 (so a sample with y <= -1, y >= H, x <= -1 or x >= W is 0). Positions are clamped to
  [-2, H + 1] x [-2, W + 1] before the float -> int conversion (far samples stay 0, no overflow);
  a NaN coordinate reads no corner and has NaN weights (the sample is NaN). The derivative
  passes where the clamp does not act (not for NaN).
* ``roi_corners``: torchvision's RoI Align rule. A sample with y < -1, y > H, x < -1 or x > W is
  0; y, x in [-1, 0) are clamped to 0; from y >= H - 1 (x >= W - 1) on the border row (column) is
  replicated (y1 = y0 = H - 1, ly = 0). The derivative of a coordinate passes where it is valid
  and not clamped at 0.

Both return the same tuple, so everything after them is shared:

    y0, x0, ey, ex, ly, lx, ok00, ok01, ok10, ok11, pass_y, pass_x = *_corners(py, px, H, W)

(int32 top-left corner, the steps to the second row / column (y1 = y0 + ey), fractional parts,
the per-corner read masks and whether the derivative of y / x passes). ``corner_weights`` turns (ly, lx) and an optional per-sample scale
(the DCNv2 mask) into the four weights; ``corner_offsets`` turns the corners into element offsets
from a per-sample base and the row / column strides; ``bilinear_load`` reads and blends a
[samples x channels] tile given per-channel element offsets, so NCHW (channel stride H * W) and
NHWC (channel stride 1: vector-wide loads along channels) callers use the same code;
``bilinear_accumulate`` adds the same four weighted corners into an accumulator tile.
For backward passes, ``corner_dot_scatter`` reduces an upstream [samples x channels] gradient
against one corner over the channels and adds the gradient times the corner weight into a
workspace with atomics (``corner_scatter`` only adds, ``corner_dot`` only reduces), and ``position_grads`` combines the corner dots into d/dy, d/dx (and the
blend of the dots, the derivative w.r.t. a per-sample scale).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _idx


@triton.jit
def deform_corners(py, px, H, W):
    """Deformable-convolution rule (see the module docstring). py, px: [S] float positions."""
    ny = py != py
    nx = px != px
    # tl.minimum / tl.maximum may drop a NaN: place it at -2 (every corner outside), keep NaN as
    # its fractional part so every corner weight (and the sample) is NaN
    py_c = tl.where(ny, -2.0, tl.minimum(tl.maximum(py, -2.0), H + 1.0))
    px_c = tl.where(nx, -2.0, tl.minimum(tl.maximum(px, -2.0), W + 1.0))
    fy = tl.floor(py_c)
    fx = tl.floor(px_c)
    ly = tl.where(ny, py, py_c - fy)
    lx = tl.where(nx, px, px_c - fx)
    y0 = fy.to(tl.int32)
    x0 = fx.to(tl.int32)
    vy0 = (y0 >= 0) & (y0 < H)
    vy1 = (y0 >= -1) & (y0 < H - 1)
    vx0 = (x0 >= 0) & (x0 < W)
    vx1 = (x0 >= -1) & (x0 < W - 1)
    # where the derivative passes the clamp to [-2, H + 1] (autograd's: not outside it, not for NaN)
    pass_y = (py >= -2.0) & (py <= H + 1.0)
    pass_x = (px >= -2.0) & (px <= W + 1.0)
    return y0, x0, 1, 1, ly, lx, vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1, pass_y, pass_x


@triton.jit
def roi_corners(py, px, H, W):
    """RoI Align rule (see the module docstring). py, px: [S] float positions."""
    valid = (py >= -1.0) & (py <= H) & (px >= -1.0) & (px <= W)
    gy = (py >= 0.0) & valid
    gx = (px >= 0.0) & valid
    py = tl.minimum(tl.maximum(py, 0.0), H + 1.0)  # upper clamp: only invalid samples, safe int cast
    px = tl.minimum(tl.maximum(px, 0.0), W + 1.0)
    y0 = py.to(tl.int32)
    x0 = px.to(tl.int32)
    top_y = y0 >= H - 1
    top_x = x0 >= W - 1
    y0 = tl.where(top_y, H - 1, y0)
    x0 = tl.where(top_x, W - 1, x0)
    ly = tl.where(top_y, 0.0, py - y0.to(py.dtype))
    lx = tl.where(top_x, 0.0, px - x0.to(px.dtype))
    # on the replicated border the second corner is the first
    ey = tl.where(top_y, 0, 1)
    ex = tl.where(top_x, 0, 1)
    return y0, x0, ey, ex, ly, lx, valid, valid, valid, valid, gy, gx


@triton.jit
def corner_weights(ly, lx, scale, HAS_SCALE: tl.constexpr):
    """(w00, w01, w10, w11) from the fractional parts, times ``scale`` (e.g. the DCNv2 mask) when
    HAS_SCALE (the scale multiplies the row weights, so it is applied once per sample)."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    if HAS_SCALE:
        hy = hy * scale
        ly = ly * scale
    return hy * hx, hy * lx, ly * hx, ly * lx


@triton.jit
def corner_offsets(base, y0, x0, ey, ex, s_h, s_w, IDX64: tl.constexpr):
    """(p00, dx, dy): the top-left corner's element offset base + y0 * s_h + x0 * s_w ([S]) and the
    steps to the other column / row (ex * s_w, ey * s_h: scalars under the deform rule, where
    ex = ey = 1). Corners: p00, p00 + dx, p00 + dy, p00 + dy + dx; one offset vector stays live
    instead of four (64-bit in the IDX64 build)."""
    p00 = base + _idx(y0, IDX64) * s_h + _idx(x0, IDX64) * s_w
    return p00, ex * s_w, ey * s_h  # ex, ey in {0, 1}: no overflow in the stride's own type


@triton.jit
def _corner_term(ptr, p, ch, cm, ok, w, ftype: tl.constexpr):
    """w[s] * x[p[s] + ch[0, c]] for one corner ([S, C] in ``ftype``); ch, cm: [1, C] channel offsets
    and mask, ok: [S] read mask. A corner not read is 0 * w."""
    return tl.load(ptr + (p[:, None] + ch), mask=ok[:, None] & cm, other=0.0).to(ftype) * w[:, None]


@triton.jit
def _add_corners(v, ptr, p00, dx, dy, ch, cm, ok01, ok10, ok11, w01, w10, w11, ftype: tl.constexpr):
    """v + t01 + t10 + t11, the corners after the first (``_corner_term``), added in that order."""
    v += _corner_term(ptr, p00 + dx, ch, cm, ok01, w01, ftype)
    v += _corner_term(ptr, p00 + dy, ch, cm, ok10, w10, ftype)
    v += _corner_term(ptr, p00 + dy + dx, ch, cm, ok11, w11, ftype)
    return v


@triton.jit
def bilinear_load(ptr, p00, dx, dy, ch, ch_mask, ok00, ok01, ok10, ok11, w00, w01, w10, w11,
                  ftype: tl.constexpr):
    """The blended [S, C] tile sum_ij w_ij[s] * x[p_ij[s] + ch[c]] in ``ftype``. p00, dx, dy: the
    corners as ``corner_offsets`` gives them, ch: [C] channel offsets (channel index times the channel stride), ok_ij: [S] read
    masks (sample validity included), ch_mask: [C]. Corners not read contribute 0 * w."""
    cm = ch_mask[None, :]
    ch = ch[None, :]
    v = _corner_term(ptr, p00, ch, cm, ok00, w00, ftype)
    return _add_corners(v, ptr, p00, dx, dy, ch, cm, ok01, ok10, ok11, w01, w10, w11, ftype)


@triton.jit
def bilinear_accumulate(acc, ptr, p00, dx, dy, ch, ch_mask, ok00, ok01, ok10, ok11, w00, w01, w10, w11,
                        ftype: tl.constexpr):
    """``acc`` ([S, C], ``ftype``) plus the four weighted corners of ``bilinear_load``, added one at a
    time (acc + t00 + t01 + t10 + t11): no blended temporary tile, for a caller that sums samples
    into an accumulator (the nchw RoI forward: about 30 registers fewer than acc += bilinear_load)."""
    cm = ch_mask[None, :]
    ch = ch[None, :]
    acc += _corner_term(ptr, p00, ch, cm, ok00, w00, ftype)
    return _add_corners(acc, ptr, p00, dx, dy, ch, cm, ok01, ok10, ok11, w01, w10, w11, ftype)


@triton.jit
def corner_dot_scatter(x_ptr, p, x_ch, ws_ptr, q, ws_ch, ch_mask, ok, w, g, ftype: tl.constexpr):
    """One corner of a backward pass, g: [S, C] upstream gradient in ``ftype``. Returns
    sum_c g[s, c] * x[p[s] + x_ch[c]] ([S], the reduction the position / scale gradients are built
    from, see ``position_grads``) and adds w[s] * g[s, c] into ws[q[s] + ws_ch[c]] with relaxed
    atomics (the transpose of ``bilinear_load``). One corner at a time keeps one tile live."""
    m = ok[:, None] & ch_mask[None, :]
    v = tl.load(x_ptr + (p[:, None] + x_ch[None, :]), mask=m, other=0.0).to(ftype)
    tl.atomic_add(ws_ptr + (q[:, None] + ws_ch[None, :]), g * w[:, None], mask=m, sem="relaxed")
    return tl.sum(g * v, axis=1)


@triton.jit
def corner_dot(x_ptr, p, x_ch, m, g, ftype: tl.constexpr):
    """sum_c g[s, c] * x[p[s] + x_ch[0, c]] ([S]) for one corner, without a scatter; x_ch: [1, C]
    channel offsets, m: [S, C] read mask, g: [S, C] in ``ftype`` (for a pass that loops over
    channel blocks and scatters nothing)."""
    return tl.sum(g * tl.load(x_ptr + (p[:, None] + x_ch), mask=m, other=0.0).to(ftype), axis=1)


@triton.jit
def corner_scatter(ws_ptr, q, ws_ch, ch_mask, ok, w, g):
    """ws[q[s] + ws_ch[c]] += w[s] * g[s, c] for one corner (relaxed atomics); for backward passes
    that need no position gradient."""
    tl.atomic_add(ws_ptr + (q[:, None] + ws_ch[None, :]), g * w[:, None], mask=ok[:, None] & ch_mask[None, :],
                  sem="relaxed")


@triton.jit
def position_grads(s00, s01, s10, s11, ly, lx):
    """From the corner dots s_ij = <g, x_ij>: (d/dy, d/dx, blend) of <g, v> for the unscaled
    weights; blend = sum_ij w_ij s_ij is the derivative w.r.t. a per-sample scale."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    g_y = (s10 - s00) * hx + (s11 - s01) * lx
    g_x = (s01 - s00) * hy + (s11 - s10) * ly
    blend = (s00 * hx + s01 * lx) * hy + (s10 * hx + s11 * lx) * ly
    return g_y, g_x, blend
