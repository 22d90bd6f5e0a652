"""conv3d / conv_transpose3d kernels and ops against F.conv3d / F.conv_transpose3d: outputs and
all gradients over stride / padding / dilation / groups / batch / layout / dtype, float64
gradcheck, opcheck, torch.compile, argument errors, the modules and make_conv3d.

Shapes are tiny (the kernels run in Triton's CPU interpreter here); references are computed in
float64 from the same (rounded) inputs, tolerances per dtype from _helpers.TOL.
"""
import importlib

import pytest
import torch
import torch.nn.functional as F

import layers
from _helpers import (assert_close, check_against_reference, check_compiled_against_reference, count_flops,
                      no_tf32)
from kernels import conv2d as k2d, conv3d as k3d  # conv2d launches the gradients of both
conv3d_layers = importlib.import_module("layers.conv3d")  # the module (layers.conv3d is the function)
from layers.factory import VARIANTS_3D, make_conv3d


@pytest.fixture(autouse=True)
def _exact_fp32():
    # F.conv3d and our kernels follow cudnn.allow_tf32 (on by default): compare in full fp32.
    with no_tf32(), layers.use_backend("triton"):
        yield


def _k(kernel):
    return (kernel,) * 3 if isinstance(kernel, int) else kernel


def check_conv3d(device, dtype, N, C_in, C_out, size, kernel, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, layout="contiguous"):
    x = torch.randn(N, C_in, *size, device=device).to(dtype)
    w = torch.randn(C_out, C_in // groups, *_k(kernel), device=device).to(dtype)
    b = torch.randn(C_out, device=device).to(dtype) if bias else None
    if layout == "channels_last_3d":
        x = x.to(memory_format=torch.channels_last_3d)
    elif layout == "noncontiguous":  # every other column of a wider tensor; weight a permuted view
        x = torch.randn(N, C_in, *size[:2], 2 * size[2], device=device).to(dtype)[..., ::2]
        kd, kh, kw = _k(kernel)
        w = torch.randn(C_out, C_in // groups, kw, kh, kd, device=device).to(dtype).permute(0, 1, 4, 3, 2)
        assert not x.is_contiguous() and not w.is_contiguous()
    conf = (stride, padding, dilation, groups)
    y = check_against_reference(lambda x, w, b: layers.conv3d(x, w, b, *conf),
                                lambda x, w, b: F.conv3d(x, w, b, *conf), (x, w, b), dtype)
    if layout == "channels_last_3d" and y.numel():
        assert y.is_contiguous(memory_format=torch.channels_last_3d)


# (N, C_in, C_out, (D, H, W), kernel, stride, padding, dilation, groups)
CASES = [
    (1, 3, 4, (3, 3, 2), 3, 1, 1, 1, 1),                              # plain 3x3x3, odd channels
    (1, 4, 6, (5, 4, 5), (3, 2, 1), (2, 1, 2), (1, 0, 1), (1, 2, 1), 2),  # asymmetric everything, groups 2
    (1, 4, 6, (5, 3, 4), 2, 3, 0, 1, 1),                              # stride 3 > kernel 2: phases without taps
    (1, 6, 6, (3, 4, 3), (2, 3, 2), 1, (1, 2, 1), 2, 3),              # dilation 2, groups 3 (packed 2-channel groups)
    (1, 3, 6, (2, 3, 3), (1, 3, 2), (1, 2, 1), 1, 1, 3),              # depthwise, multiplier 2
    (0, 3, 4, (4, 4, 3), 3, 1, 1, 1, 1),                              # empty batch
]
IDS = ["plain", "asym-g2", "s3-k2", "d2-g3", "depthwise", "empty"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv3d_fp32(device, case):
    check_conv3d(device, torch.float32, *case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_conv3d_dtypes(device, dtype):
    check_conv3d(device, dtype, *CASES[1])


@pytest.mark.parametrize("layout", ["channels_last_3d", "noncontiguous"])
def test_conv3d_layouts(device, layout):
    check_conv3d(device, torch.float32, *CASES[1], layout=layout)


def test_conv3d_no_bias_unbatched(device):
    x = torch.randn(2, 3, 4, 3, device=device)
    w = torch.randn(4, 2, 2, 3, 2, device=device)
    out = layers.conv3d(x, w, padding=(0, 1, 1))
    assert out.shape == (4, 2, 4, 4)
    assert_close(out, F.conv3d(x.double(), w.double(), padding=(0, 1, 1)), torch.float32, "unbatched output")


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding(device, padding):
    """'same' with an even kernel and dilation pads one more plane/row/column at the end, as PyTorch."""
    x = torch.randn(1, 2, 4, 5, 3, device=device, requires_grad=True)
    w = torch.randn(3, 2, 2, 3, 2, device=device, requires_grad=True)
    out = layers.conv3d(x, w, padding=padding, dilation=(1, 2, 1))
    xr, wr = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.conv3d(xr, wr, padding=padding, dilation=(1, 2, 1))
    assert_close(out, ref, torch.float32, "output")
    gy = torch.randn_like(ref)
    out.backward(gy.float())
    ref.backward(gy)
    assert_close(x.grad, xr.grad, torch.float32, "grad input")
    assert_close(w.grad, wr.grad, torch.float32, "grad weight")


def test_weight_grad_split_k_and_expanded_grad(device):
    """The split pixel reduction sums to the same gradient; an expanded (stride-0) grad_output,
    as y.sum().backward() gives, is read without being materialised."""
    x = torch.randn(2, 4, 3, 3, 2, device=device, dtype=torch.float64)
    w_shape = (6, 2, 2, 3, 2)
    gy = torch.randn(1, 1, 1, 1, 1, device=device, dtype=torch.float64).expand(2, 6, 2, 2, 2)
    ref = torch.nn.grad.conv3d_weight(x, w_shape, gy, 2, 1, 1, 2)
    for split in (1, 3):
        got = k3d.conv3d_weight_grad(x, gy, w_shape, (2, 2, 2), (1, 1, 1), (1, 1, 1), 2, split_k=split)
        assert_close(got, ref, torch.float64, f"grad weight split {split}")


def test_input_grad_phase_launches(device):
    """The strided input gradient runs one dense sub-GEMM per stride phase whose rows exist:
    stride (2, 1, 3) over (3, 2, 5) gives 2 * 1 * 3 launches (matching aten in float64)."""
    x_shape, w = (1, 4, 3, 2, 5), torch.randn(2, 4, 2, 1, 2, device=device, dtype=torch.float64)
    gy = torch.randn(1, 2, 1, 2, 2, device=device, dtype=torch.float64)
    conf = ((2, 1, 3), (0, 0, 0), (1, 1, 1), 1)
    calls = []
    orig = k2d.launch
    k2d.launch = lambda *a, **kw: (calls.append(a), orig(*a, **kw))
    try:
        got = k3d.conv3d_input_grad(gy, w, x_shape, *conf)
    finally:
        k2d.launch = orig
    assert_close(got, torch.nn.grad.conv3d_input(x_shape, w, gy, *conf), torch.float64, "grad input")
    assert len(calls) == 2 * 1 * 3


def test_operands_are_read_channels_innermost(device):
    """NCDHW activations reach the kernels as channels_last_3d copies (16-byte channel rows);
    channels_last_3d ones in place; the weight is repacked K-major with 16-aligned rows."""
    x = torch.randn(1, 4, 3, 3, 3, device=device)
    assert k3d._channels_inner3d(x).stride(1) == 1
    xc = x.to(memory_format=torch.channels_last_3d)
    assert k3d._channels_inner3d(xc).data_ptr() == xc.data_ptr()
    wp, ld = k3d._pack_weight3d(torch.randn(6, 2, 3, 2, 1, device=device), 2, transpose=False)
    assert wp.shape == (2, 6, 1, 2, 16) and ld == 16  # (G, KD * KH, KW, CIN_G, COUT_LD)


@pytest.mark.parametrize("cudnn", [True, False])
def test_tf32_follows_cudnn_flag(monkeypatch, cudnn):
    """fp32 uses TF32 exactly when cudnn.allow_tf32 allows it (as F.conv3d); other dtypes never.
    The interpreter computes exact fp32 either way, so the constexpr each launch gets is checked."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", cudnn)
    for dtype, expected in ((torch.float32, cudnn), (torch.bfloat16, False), (torch.float64, False)):
        seen = []
        for mod in (k3d, k2d):
            monkeypatch.setattr(mod, "launch", lambda tuned, plain, grid, icfg, *a, **kw: seen.append(kw["ALLOW_TF32"]))
        x, w = torch.zeros(1, 4, 3, 3, 3, dtype=dtype), torch.zeros(4, 4, 3, 3, 3, dtype=dtype)
        y = k3d.conv3d_forward(x, w, None, 1, 1, 1, 1)
        k3d.conv3d_input_grad(y, w, x.shape, 1, 1, 1, 1)
        k3d.conv3d_weight_grad(x, y, w.shape, 1, 1, 1, 1)
        assert seen == [expected] * 3, (dtype, seen)


def test_int64_indexing_path(device, monkeypatch):
    """The 64-bit index build (chosen for tensors past 2**31 elements) gives the same results."""
    for mod in (k3d, k2d):
        monkeypatch.setattr(mod, "needs_int64", lambda *t: True)
    check_conv3d(device, torch.float32, 1, 4, 4, (2, 3, 2), (2, 2, 1), (1, 2, 1), 1, 1, 2)


# --------------------------------------------------------------------------- conv_transpose3d
# (N, C_in, C_out, (D, H, W), kernel, stride, padding, output_padding, groups, dilation)
T_CASES = [
    (2, 4, 3, (2, 2, 1), 3, 2, 1, 1, 1, 1),
    (1, 4, 6, (3, 2, 3), (2, 3, 1), (1, 2, 2), (0, 1, 0), (0, 1, 1), 2, (2, 1, 1)),
    (1, 2, 2, (2, 3, 2), 2, 1, 0, (1, 0, 0), 1, (2, 1, 1)),        # output_padding >= stride (dilation 2)
]


@pytest.mark.parametrize("case, dtype", [(T_CASES[0], torch.float32), (T_CASES[1], torch.float32),
                                         (T_CASES[1], torch.bfloat16), (T_CASES[2], torch.float32)],
                         ids=["basic", "asym-groups", "asym-groups-bf16", "op-ge-stride"])
def test_conv_transpose3d(device, case, dtype):
    N, C_in, C_out, size, k, s, p, op, g, d = case
    x = torch.randn(N, C_in, *size, device=device).to(dtype)
    w = torch.randn(C_in, C_out // g, *_k(k), device=device).to(dtype)
    b = torch.randn(C_out, device=device).to(dtype)
    conf = (s, p, op, g, d)
    check_against_reference(lambda x, w, b: layers.conv_transpose3d(x, w, b, *conf),
                            lambda x, w, b: F.conv_transpose3d(x, w, b, *conf), (x, w, b), dtype)


# --------------------------------------------------------------------------- autograd machinery
def test_gradcheck_float64(device):
    f64 = dict(device=device, dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(1, 4, 2, 3, 2, **f64), torch.randn(4, 2, 2, 2, 1, **f64), torch.randn(4, **f64)
    assert torch.autograd.gradcheck(lambda x, w, b: layers.conv3d(x, w, b, (1, 2, 1), 1, (1, 1, 2), 2), (x, w, b),
                                    fast_mode=True)
    wt, bt = torch.randn(4, 1, 2, 1, 2, **f64), torch.randn(2, **f64)
    assert torch.autograd.gradcheck(lambda x, w, b: layers.conv_transpose3d(x, w, b, 2, 1, (1, 0, 1), 2), (x, wt, bt),
                                    fast_mode=True)


def test_double_backward(device):
    """Double backward (gradient penalties): the gradients of <u, dL/dx> + <v, dL/dw> with respect to
    x, w and grad_output, which run the backward ops' own autograd (input grad -> conv3d + weight
    grad, weight grad -> input grad + conv3d), match aten's in float64. One pass, not gradgradcheck's
    finite differences: the interpreter's launches are what this file's time goes to."""
    f64 = dict(device=device, dtype=torch.float64)
    conf = ((1, 2, 1), 1, (1, 1, 2), 2)
    x, w = torch.randn(1, 4, 2, 3, 3, **f64), torch.randn(4, 2, 2, 2, 1, **f64)
    gy = torch.randn(1, 4, 3, 2, 5, **f64)
    u, v = torch.randn_like(x), torch.randn_like(w)
    grads = []
    for conv in (layers.conv3d, F.conv3d):
        xs, ws, gys = (t.clone().requires_grad_() for t in (x, w, gy))
        gx, gw = torch.autograd.grad(conv(xs, ws, None, *conf), (xs, ws), gys, create_graph=True)
        grads.append(torch.autograd.grad((gx * u).sum() + (gw * v).sum(), (xs, ws, gys)))
    for name, ours, ref in zip(("x", "weight", "grad_output"), *grads):
        assert_close(ours, ref, torch.float64, f"double backward, grad {name}")


def test_opcheck(device):
    x = torch.randn(1, 4, 2, 3, 2, device=device)
    w = torch.randn(4, 2, 1, 2, 2, device=device)
    b = torch.randn(4, device=device)
    conf = ([1, 1, 1], [0, 1, 0], [1, 1, 1])  # stride 1: one input-gradient launch per call
    gy = torch.randn(1, 4, 2, 4, 1, device=device)
    torch.library.opcheck(torch.ops.convlab.conv3d.default, (x, w.requires_grad_(), b, *conf, 2))
    torch.library.opcheck(torch.ops.convlab.conv3d_input_grad.default,
                          (gy, w.detach(), None, [1, 4, 2, 3, 2], *conf, 2))
    torch.library.opcheck(torch.ops.convlab.conv3d_weight_grad.default, (x, gy, [4, 2, 1, 2, 2], *conf, 2))


def test_torch_compile_fullgraph(device):
    """No graph break (fullgraph=True raises on one)."""
    conv = layers.Conv3d(4, 4, (1, 2, 2), padding=(0, 1, 0), groups=2).to(device)
    up = layers.ConvTranspose3d(4, 2, (2, 1, 1), stride=(2, 1, 1)).to(device)

    def f(x):
        return torch.relu(up(conv(x))).sum()

    check_compiled_against_reference(f, torch.randn(1, 4, 2, 2, 2, device=device, requires_grad=True))


def test_flop_counter_matches_aten(device):
    x = torch.randn(1, 4, 2, 3, 2, device=device, requires_grad=True)
    w = torch.randn(6, 2, 1, 2, 2, device=device, requires_grad=True)
    args = (x, w, None, 1, 1, 1, 2)
    forward = count_flops(F.conv3d, *args)
    assert forward == 2 * 1 * 4 * 4 * 3 * 6 * 2 * 4  # 2 * N * OD * OH * OW * C_out * C_in/groups * KD * KH * KW
    assert count_flops(layers.conv3d, *args) == forward
    assert count_flops(layers.conv3d, *args, backward=True) == 3 * forward


# --------------------------------------------------------------------------- modules
def test_conv3d_module_matches_nn(device):
    ref = torch.nn.Conv3d(4, 2, (2, 3, 1), stride=(1, 2, 1), padding=1, groups=2, padding_mode="circular").to(device)
    ours = layers.Conv3d(4, 2, (2, 3, 1), stride=(1, 2, 1), padding=1, groups=2, padding_mode="circular").to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 4, 3, 4, 3, device=device)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)


def test_conv_transpose3d_module_output_size(device):
    ref = torch.nn.ConvTranspose3d(2, 3, 2, stride=2, padding=1).to(device)
    ours = layers.ConvTranspose3d(2, 3, 2, stride=2, padding=1).to(device)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 2, 3, 2, device=device)
    out = ours(x, output_size=[3, 5, 3])
    assert out.shape == (1, 3, 3, 5, 3)
    torch.testing.assert_close(out, ref(x, output_size=[3, 5, 3]), atol=1e-4, rtol=1e-4)


def test_depthwise_dispatch(monkeypatch):
    """One function decides: kernels.depthwise3d for depthwise weights when it exists, else the GEMM."""
    monkeypatch.setattr(conv3d_layers, "_DW3D", None)
    assert conv3d_layers._use_depthwise3d([6, 1, 3, 3, 3], 3, 3) is None
    sentinel = object()
    monkeypatch.setattr(conv3d_layers, "_DW3D", sentinel)
    assert conv3d_layers._use_depthwise3d([6, 1, 3, 3, 3], 3, 3) is sentinel
    assert conv3d_layers._use_depthwise3d([6, 2, 3, 3, 3], 6, 3) is None  # grouped, not depthwise
    assert conv3d_layers._use_depthwise3d([6, 1, 3, 3, 3], 2, 1) is None  # one input channel, groups 1 (C_in != groups)


# --------------------------------------------------------------------------- factory
@pytest.mark.parametrize("variant", sorted(VARIANTS_3D))
def test_make_conv3d_shapes(device, variant):
    m = make_conv3d(variant, 4, 8, kernel_size=3, stride=2).to(device)
    x = torch.randn(1, 4, 3, 5, 4, device=device)
    with layers.use_backend("reference"):  # shapes and parameters; the ops are tested above
        assert m(x).shape == (1, 8, 2, 3, 2)


def test_make_conv3d_parameters():
    assert set(VARIANTS_3D) == {"standard", "grouped", "depthwise_separable", "r2plus1d"}
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(make_conv3d("standard", 16, 32)) == 32 * 16 * 27
    assert count(make_conv3d("grouped", 16, 32, groups=4)) == 32 * 4 * 27
    assert count(make_conv3d("depthwise_separable", 16, 32)) == 16 * 27 + 32 * 16
    # Tran et al.: M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out)) keeps the full conv's parameter count
    r21 = make_conv3d("r2plus1d", 16, 32)
    mid = (3 * 9 * 16 * 32) // (9 * 16 + 3 * 32)
    assert r21.spatial.out_channels == mid == 57
    assert count(r21) == mid * 16 * 9 + 32 * mid * 3
    assert abs(count(r21) - 32 * 16 * 27) <= 9 * 16 + 3 * 32  # within one mid channel of the full conv
    assert make_conv3d("r2plus1d", 16, 32, mid_channels=8).spatial.out_channels == 8
    with pytest.raises(ValueError, match="unknown 3-D convolution variant 'deformable'"):
        make_conv3d("deformable", 4, 4)
    with pytest.raises(TypeError, match="variant 'r2plus1d'"):
        make_conv3d("r2plus1d", 4, 4, groups=2)


# --------------------------------------------------------------------------- errors and backends
@pytest.mark.parametrize("kwargs, match", [
    (dict(x=(4, 5, 5)), r"input must be 5-D \(N, C, D, H, W\) or 4-D \(C, D, H, W\)"),
    (dict(w=(6, 4, 3, 3)), r"weight must be 5-D \(C_out, C_in / groups, KD, KH, KW\)"),
    (dict(groups=3), r"input channels \(4\) must be divisible by groups \(3\)"),
    (dict(w=(6, 4, 3, 3, 3), groups=2), r"weight.shape\[1\] must be C_in / groups = 2"),
    (dict(stride=(1, 0, 1)), "stride must be positive"),
    (dict(stride=(1, 1)), r"stride must be an int or a triple of ints \(d, h, w\)"),
    (dict(padding=-1), "padding must be non-negative"),
    (dict(padding="full"), "padding must be an int, a triple, 'valid' or 'same'"),
    (dict(padding="same", stride=2), "padding='same' needs stride 1"),
    (dict(bias=(5,)), r"bias must have shape \(6,\)"),
    (dict(wdtype=torch.float64), "weight dtype must match input dtype"),
    (dict(x=(1, 4, 2, 5, 5)), "input depth 2 .* smaller than the dilated kernel extent 3"),
])
def test_conv3d_errors(kwargs, match):
    x = torch.zeros(kwargs.get("x", (2, 4, 5, 5, 5)))
    w = torch.zeros(kwargs.get("w", (6, 4, 3, 3, 3)), dtype=kwargs.get("wdtype", torch.float32))
    bias = torch.zeros(kwargs["bias"]) if "bias" in kwargs else None
    with pytest.raises(ValueError, match=match):
        layers.conv3d(x, w, bias, kwargs.get("stride", 1), kwargs.get("padding", 0), 1, kwargs.get("groups", 1))


def test_conv_transpose3d_errors():
    x = torch.zeros(1, 4, 3, 3, 3)
    with pytest.raises(ValueError, match=r"weight.shape\[0\] must equal input channels 4"):
        layers.conv_transpose3d(x, torch.zeros(3, 2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"output_padding \(2\) must be smaller than stride or dilation in depth"):
        layers.conv_transpose3d(x, torch.zeros(4, 2, 3, 3, 3), stride=2, output_padding=(2, 1, 1))
    with pytest.raises(ValueError, match="padding must be an int or a triple of ints"):
        layers.conv_transpose3d(x, torch.zeros(4, 2, 3, 3, 3), padding="same")


def test_reference_backend_does_not_call_kernels(monkeypatch):
    called = []
    monkeypatch.setattr(k3d, "conv3d_forward", lambda *a: called.append(a))
    x, w = torch.randn(1, 4, 3, 3, 3), torch.randn(6, 2, 2, 2, 2)
    with layers.use_backend("reference"):
        out = layers.conv3d(x, w, None, 1, 1, 1, 2)
    assert not called
    torch.testing.assert_close(out, F.conv3d(x, w, None, 1, 1, 1, 2))
