"""Depthwise kernels (kernels/depthwise.py) against F.conv2d(groups=C_in): the output and all
gradients, over kernel size (1x1 to 31 taps wide: more taps than one input segment holds),
stride, padding, dilation, channel multiplier, layout (NCHW, channels_last, non-contiguous),
batch 0, every dtype; float64 gradcheck; the 64-bit index build; the weight gradient's splits.

References are computed in float64 from the same (rounded) inputs; tolerances scale with the
reference's magnitude and are stated per dtype in _helpers.TOL. Shapes are tiny (CPU interpreter).
"""
import pytest
import torch
import torch.nn.functional as F

import layers
from _helpers import assert_close, check_against_reference, index64_launches
from kernels import _common
from kernels import depthwise as dw


@pytest.fixture(autouse=True)
def _triton_backend():
    with layers.use_backend("triton"):
        yield


def make_inputs(N, C, mult, H, W, k, dtype, layout, device="cpu"):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(N, C, H, W, device=device).to(dtype)
    w = torch.randn(C * mult, 1, kh, kw, device=device).to(dtype)
    b = torch.randn(C * mult, device=device).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":  # every other column of a wider tensor; weight a transposed view
        x = torch.randn(N, C, H, 2 * W, device=device).to(dtype)[..., ::2]
        w = torch.randn(C * mult, 1, kw, kh, device=device).to(dtype).transpose(2, 3)
        assert not x.is_contiguous() and not w.is_contiguous()
    return x, w, b


def check_depthwise(device, dtype, N, C, mult, H, W, k, stride=1, padding=0, dilation=1, layout="contiguous",
                    bias=True):
    """layers.conv2d (the depthwise dispatch) vs F.conv2d(groups=C) in float64: y, dx, dw, db."""
    x, w, b = make_inputs(N, C, mult, H, W, k, dtype, layout, device)
    conf = (stride, padding, dilation, C)
    channels_last = torch.channels_last if layout == "channels_last" else None
    y = check_against_reference(lambda x, w, b: layers.conv2d(x, w, b, *conf),
                                lambda x, w, b: F.conv2d(x, w, b, *conf), (x, w, b if bias else None), dtype,
                                grad_output_format=channels_last)
    if channels_last:
        assert y.is_contiguous(memory_format=channels_last)


# (N, C, multiplier, H, W, kernel, stride, padding, dilation)
CASES = {
    "3x3": (2, 3, 1, 6, 7, 3, 1, 1, 1),
    "1x1": (1, 4, 1, 5, 4, 1, 1, 0, 1),
    "5x3-asym": (1, 2, 1, 7, 9, (5, 3), (1, 2), (2, 0), (1, 2)),
    "stride2-mult2": (2, 3, 2, 7, 6, 3, 2, 1, 1),
    "stride3-dil2": (1, 2, 1, 11, 13, 3, 3, 2, 2),
    "mult3-dil3": (1, 2, 3, 9, 10, 3, 1, 3, 3),
    "7x7-tiny": (1, 2, 1, 4, 5, 7, 1, 3, 1),       # kernel larger than the image
    "9x9-stride2": (1, 3, 1, 6, 6, 9, 2, 4, 1),
    "1x31-chunked": (1, 2, 1, 2, 40, (1, 31), 1, (0, 15), 1),  # more taps than one segment holds
    "21x1": (1, 2, 1, 12, 3, (21, 1), 1, (10, 0), 1),
    "no-padding": (1, 2, 2, 6, 8, (2, 4), 1, 0, 1),  # even kernel
    "batch0": (0, 3, 2, 5, 5, 3, 1, 1, 1),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_fp32_cases(device, case):
    check_depthwise(device, torch.float32, *case)


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous"])
@pytest.mark.parametrize("case", ["3x3", "stride3-dil2", "mult3-dil3"])
def test_layouts(device, case, layout):
    check_depthwise(device, torch.float32, *CASES[case], layout=layout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["3x3", "9x9-stride2"])
def test_dtypes(device, dtype, case):
    check_depthwise(device, dtype, *CASES[case], layout="channels_last" if case == "3x3" else "contiguous")


def test_no_bias_channels_last_16bit(device):
    check_depthwise(device, torch.bfloat16, 2, 4, 2, 5, 6, (3, 5), 1, (1, 2), 1, layout="channels_last", bias=False)


def test_gradcheck_float64(device):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 1, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    # fast mode (random projections of the Jacobian): a few dozen interpreted launches, not hundreds
    assert torch.autograd.gradcheck(lambda x, w, b: layers.conv2d(x, w, b, 2, 1, (1, 2), 2), (x, w, b),
                                    fast_mode=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_index64_build(device, monkeypatch, layout):
    """The 64-bit index build (picked for tensors past 2**31 elements) computes the same."""
    calls = index64_launches(monkeypatch, dw)
    check_depthwise(device, torch.float32, 2, 3, 2, 7, 9, 5, 2, 2, 1, layout=layout)
    assert calls == [True, True, True]


def test_input_grad_far_tiles_batch_past_axis_limit(monkeypatch):
    """N = 70000 images through the folded grid of the input-gradient kernel: the last programs
    write exactly the last image."""
    if not _common.INTERPRET:
        pytest.skip("far_tiles is an interpreter hook")
    gy1 = torch.randn(1, 4, 3, 3)
    w = torch.randn(4, 1, 3, 3)
    N = 70000
    monkeypatch.setattr(dw, "like_layout", lambda ref, shape: torch.full(shape, float("nan"), dtype=ref.dtype))
    with _common.far_tiles(1):
        gx = dw.depthwise_input_grad(gy1.expand(N, -1, -1, -1), w, (N, 2, 3, 3), 1, 1, 1)
    ref = torch.nn.grad.conv2d_input((1, 2, 3, 3), w, gy1, 1, 1, 1, 2)
    torch.testing.assert_close(gx[-1], ref[0], atol=1e-5, rtol=1e-5)
    assert torch.isnan(gx[:-1]).all()


def test_weight_grad_splits_are_deterministic(device):
    """Every split count gives the gradient, and the same call gives the same bits."""
    x = torch.randn(3, 4, 7, 6, device=device)
    gy = torch.randn(3, 8, 4, 3, device=device)
    shape = (8, 1, 3, 3)
    ref = torch.nn.grad.conv2d_weight(x.double(), shape, gy.double(), 2, 1, 1, 4)
    for split in (1, 3, 12):
        got = dw.depthwise_weight_grad(x, gy, shape, (2, 2), (1, 1), (1, 1), split_k=split)
        assert_close(got, ref, torch.float32, f"grad weight, split_k={split}")
    again = dw.depthwise_weight_grad(x, gy, shape, (2, 2), (1, 1), (1, 1), split_k=12)
    assert torch.equal(got, again)


def test_conv_transpose_depthwise_bias(device):
    """depthwise_input_grad with a bias is conv_transpose2d(groups=C)."""
    gy = torch.randn(2, 6, 4, 5, device=device)
    w = torch.randn(6, 1, 3, 2, device=device)
    b = torch.randn(3, device=device)
    got = dw.depthwise_input_grad(gy, w, (2, 3, 7, 11), (2, 2), (1, 0), (1, 1), bias=b)
    ref = F.conv_transpose2d(gy.double(), w.double(), b.double(), (2, 2), (1, 0), (0, 1), 3)
    assert_close(got, ref, torch.float32, "conv_transpose2d")


def test_launch_grids_fit_cuda_limits():
    """Axis 0 folds the batch with the row and column tiles; axes 1 and 2 stay under 65535 for
    every shipped config, the forward's column tiles shrink with the stride."""
    for cfgs in dw.DW_CONFIGS.values():
        for cfg in cfgs:
            meta = cfg.kwargs
            assert meta["BLOCK_IW"] >= meta["BLOCK_W"] + 9
            for stride in (1, 2, 4, 64):
                cols = dw.out_cols(meta, stride)
                assert 1 <= cols <= meta["BLOCK_W"] and (cols - 1) * stride + 8 <= meta["BLOCK_IW"]
