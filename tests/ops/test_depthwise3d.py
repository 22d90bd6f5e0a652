"""Depthwise 3-D kernels (kernels/depthwise3d.py), called through their launchers, against
F.conv3d(groups=C_in) and torch.autograd.grad of it: the output, the input gradient and the weight
gradient over kernel shape (3x3x3, 1x3x3, 3x1x1), stride, padding, dilation, depth multiplier,
layout (NCDHW, channels_last_3d, non-contiguous), batch 0, every dtype; float64 gradcheck; the
64-bit index build; the weight gradient's splits; the input gradient as conv_transpose3d with bias.

References are computed in float64 from the same (rounded) inputs; tolerances scale with the
reference's magnitude (_helpers.TOL). Shapes are tiny (CPU interpreter).
"""
import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_close, index64_launches
from kernels import depthwise3d as dw3

CL3 = torch.channels_last_3d


def make_inputs(N, C, mult, D, H, W, k, dtype, layout, device):
    kd, kh, kw = dw3.triple(k)
    x = torch.randn(N, C, D, H, W, device=device).to(dtype)
    w = torch.randn(C * mult, 1, kd, kh, kw, device=device).to(dtype)
    b = torch.randn(C * mult, device=device).to(dtype)
    if layout == "channels_last_3d":
        x = x.contiguous(memory_format=CL3)
    elif layout == "noncontiguous":  # every other column of a wider tensor; weight a transposed view
        x = torch.randn(N, C, D, H, 2 * W, device=device).to(dtype)[..., ::2]
        w = torch.randn(C * mult, 1, kd, kw, kh, device=device).to(dtype).transpose(3, 4)
        assert not x.is_contiguous() and not w.is_contiguous()
    return x, w, b


def check_depthwise3d(device, dtype, N, C, mult, D, H, W, k, stride=1, padding=0, dilation=1,
                      layout="contiguous", bias=True):
    """The three launchers vs F.conv3d(groups=C) in float64 and its autograd gradients."""
    x, w, b = make_inputs(N, C, mult, D, H, W, k, dtype, layout, device)
    b = b if bias else None
    s, p, d = dw3.triple(stride), dw3.triple(padding), dw3.triple(dilation)
    y = dw3.depthwise3d_forward(x, w, b, s, p, d)
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    ref = F.conv3d(xr, wr, None if b is None else b.double(), s, p, d, C)
    assert_close(y, ref, dtype, "output")
    if layout == "channels_last_3d":
        assert y.is_contiguous(memory_format=CL3)
    else:
        assert y.is_contiguous()
    gy = torch.randn(ref.shape, device=device).to(dtype)
    if layout == "channels_last_3d":
        gy = gy.contiguous(memory_format=CL3)
    gx_ref, gw_ref = torch.autograd.grad(ref, (xr, wr), gy.double(), allow_unused=True)
    if N == 0:  # nothing reaches the inputs; autograd gives zeros
        gx_ref, gw_ref = torch.zeros_like(xr), torch.zeros_like(wr)
    gx = dw3.depthwise3d_input_grad(gy, w, x.shape, s, p, d)
    assert_close(gx, gx_ref, dtype, "grad input")
    if layout == "channels_last_3d" and not gy.is_contiguous():  # (1x1x1 outputs are both layouts)
        assert gx.is_contiguous(memory_format=CL3)
    gw = dw3.depthwise3d_weight_grad(x, gy, w.shape, s, p, d)
    assert_close(gw, gw_ref, dtype, "grad weight")
    assert gw.is_contiguous()


# (N, C, multiplier, D, H, W, kernel, stride, padding, dilation)
CASES = {
    "3x3x3": (2, 3, 1, 5, 6, 5, 3, 1, 1, 1),
    "3x3x3-small": (1, 3, 1, 4, 5, 5, 3, 1, 1, 1),
    "1x3x3-stride2-mult2": (1, 2, 2, 5, 6, 6, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1),
    "3x1x1-dil2": (1, 3, 1, 6, 4, 5, (3, 1, 1), 1, (2, 0, 0), (2, 1, 1)),
    "stride2-dil2-pad0": (2, 2, 1, 6, 5, 6, 3, 2, 0, 2),  # OD == 1: a specialised constant
    "mult2-stride2-pad1": (1, 4, 2, 3, 5, 4, 3, 2, 1, 1),
    "batch0": (0, 3, 2, 4, 4, 4, 3, 1, 1, 1),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_fp32_cases(device, case):
    check_depthwise3d(device, torch.float32, *case)


@pytest.mark.parametrize("layout", ["channels_last_3d", "noncontiguous"])
@pytest.mark.parametrize("case", ["3x3x3-small", "1x3x3-stride2-mult2"])
def test_layouts(device, case, layout):
    check_depthwise3d(device, torch.float32, *CASES[case], layout=layout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, dtype):
    check_depthwise3d(device, dtype, *CASES["3x3x3-small"], layout="channels_last_3d")


def test_small_tiles(device, monkeypatch):
    """Interpreter tiles smaller than the volume: row tiles that cross depth planes, several
    channel blocks and column tiles, filter rows split over two input segments (stride 2,
    dilation 2 along W)."""
    monkeypatch.setattr(dw3, "INTERPRET_CONFIG", {"BLOCK_H": 4, "BLOCK_C": 2, "BLOCK_W": 4, "BLOCK_IW": 16})
    check_depthwise3d(device, torch.float32, 1, 2, 2, 4, 3, 6, (2, 1, 3), (1, 1, 2), (1, 0, 1), (2, 1, 2),
                      layout="channels_last_3d")


def test_no_bias_16bit(device):
    check_depthwise3d(device, torch.bfloat16, *CASES["3x1x1-dil2"], bias=False)


class _Depthwise3d(torch.autograd.Function):
    """The three launchers as one autograd op (only for gradcheck; layers/ owns the real op)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation):
        ctx.save_for_backward(x, w)
        ctx.conv = stride, padding, dilation
        return dw3.depthwise3d_forward(x, w, b, stride, padding, dilation)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gx = dw3.depthwise3d_input_grad(gy, w, x.shape, *ctx.conv)
        gw = dw3.depthwise3d_weight_grad(x, gy, w.shape, *ctx.conv)
        return gx, gw, gy.sum((0, 2, 3, 4)), None, None, None


def test_gradcheck_float64(device):
    x = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 1, 2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    conv = [1, 2, 1], [1, 1, 0], [1, 1, 2]
    # fast mode (random projections of the Jacobian): a few interpreted launches, not hundreds
    assert torch.autograd.gradcheck(lambda x, w, b: _Depthwise3d.apply(x, w, b, *conv), (x, w, b), fast_mode=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_index64_build(device, monkeypatch, layout):
    """The 64-bit index build (picked for tensors past 2**31 elements) computes the same."""
    calls = index64_launches(monkeypatch, dw3)
    check_depthwise3d(device, torch.float32, *CASES["stride2-dil2-pad0"], layout=layout)
    assert calls == [True, True, True]


def test_weight_grad_splits_are_deterministic(device):
    """Every split count gives the gradient, and the same call gives the same bits."""
    x = torch.randn(2, 3, 4, 5, 4, device=device)
    gy = torch.randn(2, 6, 2, 3, 2, device=device)
    shape = (6, 1, 3, 2, 1)
    conv = [2, 2, 2], [1, 1, 0], [1, 1, 1]
    ref = torch.nn.grad.conv3d_weight(x.double(), shape, gy.double(), *conv, 3)
    for split in (1, 5):
        got = dw3.depthwise3d_weight_grad(x, gy, shape, *conv, split_k=split)
        assert_close(got, ref, torch.float32, f"grad weight, split_k={split}")
    again = dw3.depthwise3d_weight_grad(x, gy, shape, *conv, split_k=5)
    assert torch.equal(got, again)


def test_conv_transpose3d_depthwise_bias(device):
    """depthwise3d_input_grad with a bias is conv_transpose3d(groups=C), output_padding included."""
    gy = torch.randn(2, 4, 3, 2, 4, device=device)
    w = torch.randn(4, 1, 3, 2, 3, device=device)
    b = torch.randn(2, device=device)
    got = dw3.depthwise3d_input_grad(gy, w, (2, 2, 6, 3, 8), [2, 1, 2], [1, 0, 1], [1, 1, 1], bias=b)
    ref = F.conv_transpose3d(gy.double(), w.double(), b.double(), (2, 1, 2), (1, 0, 1), (1, 0, 1), 2)
    assert_close(got, ref, torch.float32, "conv_transpose3d")


def test_bad_input_names_the_argument():
    x = torch.randn(1, 2, 3, 3, 3)
    with pytest.raises(ValueError, match=r"weight must have shape \(C_in \* multiplier, 1, KD, KH, KW\)"):
        dw3.depthwise3d_forward(x, torch.randn(3, 1, 3, 3, 3), None, 1, 1, 1)
    with pytest.raises(ValueError, match="x must be 5-D"):
        dw3.depthwise3d_forward(x[0], torch.randn(2, 1, 3, 3, 3), None, 1, 1, 1)
    with pytest.raises(ValueError, match="stride must be an int or 3 ints"):
        dw3.depthwise3d_forward(x, torch.randn(2, 1, 3, 3, 3), None, (1, 1), 1, 1)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        dw3.depthwise3d_input_grad(torch.randn(1, 3, 3, 3, 3), torch.randn(2, 1, 3, 3, 3), x.shape, 1, 1, 1)
