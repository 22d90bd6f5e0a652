"""64-bit indexing without giant tensors (issue 13, item 4).

* The shared index helpers (``_tile_offsets``, ``_unflatten``) run in a probe kernel on the far
  tile of a flattened index past 2**32 and are compared with Python ints.
* ``far_tiles`` runs only the last programs of grid axis 0: conv2d / deform_conv2d launch with
  N * OH * OW > 2**31 on expanded inputs and an output whose batch stride is 0, and the far
  pixels are checked against a one-image reference.
* ``needs_int64`` sees flattened extents (N * OH * OW, a reduction split's end) that no tensor
  reveals; launch grids respect CUDA's per-axis limits (depthwise folds the batch into axis 0,
  other grids raise a clear error).
"""
import math

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import _common
from kernels import conv2d as gemm_kernels
from kernels import deform as deform_kernels
from kernels import depthwise as dw_kernels
from kernels._common import _tile_offsets, _unflatten

pytestmark = pytest.mark.skipif(not _common.INTERPRET, reason="far_tiles is an interpreter hook")


@triton.jit
def _index_probe(out_ptr, M, D1, D2, IDX64: tl.constexpr, BLOCK: tl.constexpr):
    offs = _tile_offsets(tl.program_id(0), BLOCK, IDX64)
    a, b, c = _unflatten(offs, D1, D2)
    row = out_ptr + tl.arange(0, BLOCK) * 5
    tl.store(row, offs.to(tl.int64))
    tl.store(row + 1, a.to(tl.int64))
    tl.store(row + 2, b.to(tl.int64))
    tl.store(row + 3, c.to(tl.int64))
    tl.store(row + 4, (offs < M).to(tl.int64))


def _probe(M, d1, d2, idx64, block=16):
    out = torch.full((block, 5), -7, dtype=torch.int64)
    with _common.far_tiles(1):
        _common.launch(None, _index_probe, lambda meta: (triton.cdiv(M, block),), {}, out, M, d1, d2,
                       IDX64=idx64, BLOCK=block)
    return out


@pytest.mark.parametrize("M, d1, d2", [(2**32 + 7 * 13 * 5 + 3, 7, 13), (3 * 2**31 + 100, 1000, 1)])
def test_index_helpers_far_tile_past_int32(M, d1, d2):
    block = 16
    pid = triton.cdiv(M, block) - 1  # the last tile: pid * block > 2**32
    expected = []
    for lane in range(block):
        m = pid * block + lane
        expected.append([m, m // (d1 * d2), (m // d2) % d1, m % d2, int(m < M)])
    expected = torch.tensor(expected, dtype=torch.int64)
    assert pid * block > 2**32 and expected[:, 4].sum() not in (0, block)  # a partial tile
    torch.testing.assert_close(_probe(M, d1, d2, True), expected, rtol=0, atol=0)
    # the probe does see overflow: the 32-bit build gets these indices wrong
    assert not torch.equal(_probe(M, d1, d2, False), expected)


def test_needs_int64_flattened_extents():
    small = torch.empty(4)
    assert not _common.needs_int64(small, 1000)
    assert _common.needs_int64(small, 2**31)
    assert _common.needs_int64(2**31 - 2**10)  # a tile past the end passes int32
    assert not _common.needs_int64(2**31 - 2 * _common.INDEX_MARGIN)
    assert _common.needs_int64(torch.empty(1).expand(2**31))  # expanded: no storage, huge offsets
    assert _common.needs_int64(None, torch.empty(1).expand(3, 2**30))


def _record_launch(monkeypatch, module):
    calls = []
    monkeypatch.setattr(module, "launch", lambda tuned, plain, grid, icfg, *args, **kw: calls.append((grid, kw)))
    return calls


def test_launchers_pick_int64_for_flattened_index(monkeypatch):
    """N * OH * OW within a tile of 2**31 although no tensor passes it (C_in = C_out = 1)."""
    calls = _record_launch(monkeypatch, gemm_kernels)
    x = torch.empty(32768, 1, 255, 257, device="meta")  # M = 2**31 - 2**15
    w = torch.empty(1, 1, 1, 1, device="meta")
    assert x.numel() < 2**31 - 1
    gemm_kernels.conv2d_forward(x, w, None, 1, 0, 1, 1)
    gemm_kernels.conv2d_input_grad(x, w, x.shape, 1, 0, 1, 1)
    assert [kw["IDX64"] for _, kw in calls] == [True, True]
    calls.clear()
    gemm_kernels.conv2d_weight_grad(x, x, (1, 1, 1, 1), 1, 0, 1, 1, split_k=3)
    assert calls[0][1]["IDX64"]
    # 1.5e9 pixels in 2 splits stay on the 32-bit build (the splits end at M)
    calls.clear()
    x = torch.empty(22889, 1, 256, 256, device="meta")
    gemm_kernels.conv2d_weight_grad(x, x, (1, 1, 1, 1), 1, 0, 1, 1, split_k=2)
    assert not calls[0][1]["IDX64"]


def test_depthwise_grid_folds_batch(monkeypatch):
    calls = _record_launch(monkeypatch, dw_kernels)
    N, C, H, W = 70000, 3, 5, 4
    x = torch.empty(N, C, H, W, device="meta")
    w = torch.empty(2 * C, 1, 3, 3, device="meta")
    dw_kernels.depthwise_forward(x, w, None, 1, 1, 1)
    dw_kernels.depthwise_input_grad(torch.empty(N, 2 * C, H, W, device="meta"), w, x.shape, 1, 1, 1)
    assert len(calls) == 2
    for grid, _ in calls:
        shipped = [c for cfgs in dw_kernels.DW_CONFIGS.values() for c in cfgs]
        for cfg in shipped + [triton.Config(dw_kernels.INTERPRET_CONFIG)]:
            dims = grid(cfg.kwargs)
            assert all(d <= 65535 for d in dims[1:]), dims
            assert dims[0] == N * triton.cdiv(H, cfg.kwargs["BLOCK_H"]) * triton.cdiv(W, cfg.kwargs["BLOCK_W"])


def test_grid_past_cuda_limits_is_a_clear_error():
    groups = 70000  # grid axis 2 of the grouped GEMM kernels
    x = torch.empty(1, groups, 2, 2, device="meta")
    w = torch.empty(groups, 1, 1, 1, device="meta")
    with pytest.raises(ValueError, match="axis 2 has 70000 programs"):
        gemm_kernels.conv2d_forward(x, w, None, 1, 0, 1, groups)
    assert _common.check_grid((2**31 - 1, 65535, 65535)) == (2**31 - 1, 65535, 65535)
    with pytest.raises(ValueError, match="axis 0"):
        _common.check_grid((2**31, 1, 1))


def _zero_batch_stride_output(monkeypatch, module):
    """Outputs of one image's storage (NaN-filled) broadcast over the batch: every image writes there."""
    def like_layout(ref, shape):
        return torch.full((1, *shape[1:]), float("nan"), dtype=ref.dtype).expand(shape)

    monkeypatch.setattr(module, "like_layout", like_layout)


def test_conv2d_far_tiles_past_int32(monkeypatch):
    img = torch.randn(1, 2, 5, 3)
    N = 2**31 // 15 + 1000  # M = N * 5 * 3 > 2**31
    x = img.expand(N, -1, -1, -1)
    w = torch.randn(3, 2, 3, 3)
    b = torch.randn(3)
    _zero_batch_stride_output(monkeypatch, gemm_kernels)
    with _common.far_tiles(2):  # the last 2 x 32 pixels: the last image, whole
        y = gemm_kernels.conv2d_forward(x, w, b, 1, 1, 1, 1)
    assert y.shape == (N, 3, 5, 3) and y.stride(0) == 0
    torch.testing.assert_close(y[-1], F.conv2d(img, w, b, 1, 1)[0], atol=1e-5, rtol=1e-5)


def test_deform_far_tiles_past_int32(monkeypatch):
    img = torch.randn(1, 2, 5, 3)
    off = 0.7 * torch.randn(1, 2 * 9, 5, 3)
    msk = torch.rand(1, 9, 5, 3)
    w = torch.randn(3, 2, 3, 3)
    ref = deform_kernels.deform_conv2d_forward(img, off, w, None, msk, (1, 1), (1, 1), (1, 1))
    N = 2**31 // 15 + 1000
    expand = lambda t: t.expand(N, -1, -1, -1)  # noqa: E731
    _zero_batch_stride_output(monkeypatch, deform_kernels)
    with _common.far_tiles(3):  # the last 3 x 16 pixels
        y = deform_kernels.deform_conv2d_forward(expand(img), expand(off), w, None, expand(msk), (1, 1), (1, 1),
                                                 (1, 1))
    torch.testing.assert_close(y[-1], ref[0], atol=1e-5, rtol=1e-5)


def test_depthwise_far_tiles_batch_past_axis_limit(monkeypatch):
    """N = 70000 images through the folded grid: the last program writes exactly the last image."""
    img = torch.randn(1, 2, 3, 3)
    w = torch.randn(4, 1, 3, 3)
    N = 70000
    monkeypatch.setattr(dw_kernels, "like_layout",
                        lambda ref, shape: torch.full(shape, float("nan"), dtype=ref.dtype))
    with _common.far_tiles(1):
        y = dw_kernels.depthwise_forward(img.expand(N, -1, -1, -1), w, None, 1, 1, 1)
    torch.testing.assert_close(y[-1], F.conv2d(img, w, None, 1, 1, 1, 2)[0], atol=1e-5, rtol=1e-5)
    assert torch.isnan(y[:-1]).all()
    assert math.prod(y.shape) == N * 4 * 9
