"""Sub-pixel convolution, ICNR and the upsampling factory against plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import layers
from _helpers import (assert_close, check_against_reference, check_compiled_against_reference, count_flops,
                      no_tf32)
from kernels import conv2d as gemm_kernels
from layers.upsample import SubPixelConv2d, icnr_, make_upsample, subpixel_conv2d


@pytest.mark.parametrize("variant", ["transposed", "subpixel", "resize_conv"])
@pytest.mark.parametrize("r", [1, 2, 3])
def test_make_upsample_shape(variant, r):
    m = make_upsample(variant, 3, 5, scale_factor=r)
    y = m(torch.randn(2, 3, 5, 7))
    assert y.shape == (2, 5, 5 * r, 7 * r)


def test_subpixel_matches_conv_then_pixel_shuffle():
    torch.manual_seed(0)
    m = SubPixelConv2d(4, 3, 3, upscale_factor=2).double()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    ref = F.pixel_shuffle(F.conv2d(x, m.weight, m.bias, padding=1), 2)
    torch.testing.assert_close(m(x), ref)
    torch.testing.assert_close(m(x[0]), ref[0])  # unbatched (C, H, W), as F.conv2d
    assert m.weight.shape == (12, 4, 3, 3)


def test_icnr_gives_nearest_neighbour_blocks():
    torch.manual_seed(0)
    m = SubPixelConv2d(4, 3, 3, upscale_factor=3, icnr=True)
    y = m(torch.randn(1, 4, 5, 5))
    # every 3x3 block of the output is constant at initialisation: no checkerboard
    blocks = y.unflatten(2, (5, 3)).unflatten(4, (5, 3))
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    assert torch.count_nonzero(m.bias) == 0


def test_icnr_rejects_bad_weight():
    with pytest.raises(ValueError, match="upscale_factor"):
        icnr_(torch.empty(5, 2, 3, 3), 2)
    with pytest.raises(ValueError, match="weight must be 4-D"):
        subpixel_conv2d(torch.randn(1, 2, 4, 4), torch.randn(6, 2, 3, 3), None, 2)


def test_make_upsample_errors():
    with pytest.raises(ValueError, match="unknown upsampling variant 'bogus'"):
        make_upsample("bogus", 3, 3)
    with pytest.raises(ValueError, match="icnr"):
        make_upsample("transposed", 3, 3, icnr=True)
    with pytest.raises(ValueError, match="scale_factor"):
        make_upsample("subpixel", 3, 3, scale_factor=0)
    with pytest.raises(ValueError, match="kernel_size >= scale_factor"):
        make_upsample("transposed", 3, 3, scale_factor=4, kernel_size=3)


def test_resize_conv_is_upsample_then_conv():
    torch.manual_seed(0)
    m = make_upsample("resize_conv", 2, 3, scale_factor=2).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    conv = m[1]
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(m(x), ref)
    assert isinstance(m[0], nn.Upsample)


# --------------------------------------------------------------------------- fused Triton op
@pytest.fixture
def triton_backend():
    with no_tf32(), layers.use_backend("triton"):  # compare in full fp32 (the kernels follow cudnn.allow_tf32)
        yield


def _ref_shuffle(t, r):
    """F.pixel_shuffle by reshapes (PixelShuffleBackward rejects batch 0 in torch 2.14)."""
    n, c, h, w = t.shape
    return t.reshape(n, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


def check_subpixel(device, dtype, N, C_in, C, H, W, k, r, padding, layout="contiguous", bias=True):
    """Output and input / weight / bias gradients against F.pixel_shuffle(F.conv2d(...)) in float64."""
    x = torch.randn(N, C_in, H, W, device=device).to(dtype)
    w = torch.randn(C * r * r, C_in, k, k, device=device).to(dtype)
    b = torch.randn(C * r * r, device=device).to(dtype) if bias else None
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    y = check_against_reference(lambda x, w, b: subpixel_conv2d(x, w, b, r, padding),
                                lambda x, w, b: _ref_shuffle(F.conv2d(x, w, b, 1, padding), r), (x, w, b), dtype)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


def _input_grad_path(monkeypatch, path):
    """Pick the input-gradient path at small channel counts: the fused-load one (the default from
    _SUBPIXEL_FUSED_MIN_CHANNELS shuffled channels up) or the unshuffle-first one."""
    monkeypatch.setattr(gemm_kernels, "_SUBPIXEL_FUSED_MIN_CHANNELS", 1 if path == "fused" else 10 ** 9)


# (input-gradient path, N, C_in, C, H, W, kernel, r, padding, layout)
SUBPIXEL_CASES = [
    ("fused", 1, 3, 2, 5, 4, 3, 1, "same", "contiguous"),
    ("fused", 2, 3, 2, 5, 7, 3, 2, "same", "channels_last"),  # odd sizes
    ("fused", 1, 2, 3, 5, 3, 4, 3, "same", "contiguous"),  # even kernel: asymmetric 'same'
    ("fused", 1, 2, 1, 4, 3, 3, 2, 2, "channels_last"),  # padding > kernel - 1
    ("fused", 1, 2, 2, 4, 5, 3, 3, "valid", "contiguous"),
    ("fused", 0, 3, 2, 4, 4, 3, 2, "same", "contiguous"),  # batch 0
    ("unshuffle", 2, 3, 2, 5, 7, 3, 2, "same", "channels_last"),
    ("unshuffle", 1, 2, 3, 3, 3, 4, 3, "same", "contiguous"),
]


@pytest.mark.parametrize("case", SUBPIXEL_CASES, ids=[f"{c[0]}-r{c[7]}-k{c[6]}-C{c[3]}-{c[8]}-{c[9]}-n{c[1]}"
                                                       for c in SUBPIXEL_CASES])
def test_subpixel_fused_matches_composition(device, triton_backend, monkeypatch, case):
    torch.manual_seed(0)
    path, N, C_in, C, H, W, k, r, padding, layout = case
    _input_grad_path(monkeypatch, path)
    check_subpixel(device, torch.float32, N, C_in, C, H, W, k, r, padding, layout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_subpixel_fused_half(device, triton_backend, dtype):
    """16-bit, at a channel count where the default input gradient is the fused one."""
    torch.manual_seed(0)
    check_subpixel(device, dtype, 1, 3, 16, 3, 2, 3, 2, "same", "channels_last" if dtype == torch.float16
                   else "contiguous", bias=dtype == torch.float16)


@pytest.mark.parametrize("path", ["fused", "unshuffle"])
def test_subpixel_gradcheck_float64(device, triton_backend, monkeypatch, path):
    torch.manual_seed(0)
    _input_grad_path(monkeypatch, path)
    x = torch.randn(1, 2, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: subpixel_conv2d(x, w, b, 2, "same"), (x, w, b), fast_mode=True)


def test_subpixel_double_backward(device, triton_backend, monkeypatch):
    """Double backward (a gradient penalty) against the composition's, in float64: each gradient
    op has its own autograd. (One pass: gradgradcheck takes ~30 s under the interpreter.)"""
    _input_grad_path(monkeypatch, "fused")
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device)
    w0 = torch.randn(8, 2, 2, 2, dtype=torch.float64, device=device)
    grads = []
    for backend in ("triton", "reference"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with layers.use_backend(backend):
            y = subpixel_conv2d(x, w, None, 2, 1)
            gx, gw = torch.autograd.grad(y.pow(2).sum(), (x, w), create_graph=True)
            (gx.pow(2).sum() + gw.pow(2).sum()).backward()
        grads.append((x.grad, w.grad))
    assert_close(grads[0][0], grads[1][0], torch.float64, "grad input of the gradient penalty")
    assert_close(grads[0][1], grads[1][1], torch.float64, "grad weight of the gradient penalty")


def test_subpixel_opcheck(device, triton_backend):
    # the forward's full opcheck (its aot_dispatch test also traces the backward ops); the
    # gradient ops' schema and fake implementations (their aot_dispatch test alone takes ~10 s
    # under the interpreter)
    x = torch.randn(1, 2, 3, 3, device=device)
    w = torch.randn(4, 2, 2, 2, device=device, requires_grad=True)
    b = torch.randn(4, device=device)
    gy = torch.randn(1, 1, 6, 6, device=device)
    pad = [0, 1, 0, 1]
    torch.library.opcheck(torch.ops.convlab.subpixel_conv2d.default, (x, w, b, 2, pad))
    fast = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.convlab.subpixel_conv2d_input_grad.default, (gy, w.detach(), [1, 2, 3, 3], 2, pad),
                          test_utils=fast)
    torch.library.opcheck(torch.ops.convlab.subpixel_conv2d_weight_grad.default, (x, gy, [4, 2, 2, 2], 2, pad),
                          test_utils=fast)


def test_subpixel_torch_compile_fullgraph(device, triton_backend):
    m = SubPixelConv2d(3, 2, 3, upscale_factor=2).to(device)

    def f(x):
        return torch.relu(m(x)).sum()

    check_compiled_against_reference(f, torch.randn(2, 3, 4, 5, device=device, requires_grad=True))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_subpixel_forward_is_one_kernel_without_intermediate(device, triton_backend, monkeypatch, layout):
    """The Triton forward is a single launch of the conv2d forward kernel whose destination is the
    shuffled output itself: no (N, C * r^2, H, W) tensor is passed to (or made by) any kernel, and
    no pixel_shuffle op runs."""
    launches = []
    real_launch = gemm_kernels.launch

    def record(tuned, plain, grid, interpret_config, *args, **kwargs):
        launches.append((plain, args, kwargs))
        return real_launch(tuned, plain, grid, interpret_config, *args, **kwargs)

    monkeypatch.setattr(gemm_kernels, "launch", record)
    x = torch.randn(2, 3, 5, 4, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(2 * 9, 3, 3, 3, device=device)
    with torch.profiler.profile() as prof:
        y = subpixel_conv2d(x, w, None, 3)
    assert len(launches) == 1
    plain, args, kwargs = launches[0]
    assert plain is gemm_kernels._conv2d_fwd_kernel and kwargs["SHUFFLE_R"] == 3
    # channels_last: runs of C = 2 channels are contiguous (the store-vector hint); NCHW: no hint
    assert kwargs["STORE_VEC"] == (2 if layout == "channels_last" else 1)
    out = args[plain.arg_names.index("y_ptr")]
    assert out.data_ptr() == y.data_ptr() and tuple(out.shape) == (2, 2, 15, 12)
    assert not any(isinstance(a, torch.Tensor) and tuple(a.shape) == (2, 18, 5, 4) for a in args)
    names = {e.name for e in prof.events()}
    assert not any("pixel_shuffle" in n or n == "aten::convolution" for n in names), sorted(names)
    torch.testing.assert_close(y, F.pixel_shuffle(F.conv2d(x, w, None, 1, "same"), 3), atol=1e-4, rtol=1e-4)


def test_subpixel_flops(device, triton_backend):
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, device=device, requires_grad=True)
    ours = count_flops(subpixel_conv2d, x, w, None, 2, backward=True)
    with layers.use_backend("reference"):
        ref = count_flops(subpixel_conv2d, x, w, None, 2, backward=True)
    assert ours == ref == 3 * 2 * (2 * 4 * 5) * 8 * 3 * 9


def test_subpixel_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="upscale_factor must be a positive int"):
        subpixel_conv2d(x, torch.randn(4, 2, 3, 3), None, 0)
    with pytest.raises(ValueError, match=r"weight must be 4-D \(C_out \* upscale_factor\*\*2"):
        subpixel_conv2d(x, torch.randn(4, 2, 3), None, 2)
    with pytest.raises(ValueError, match=r"weight.shape\[1\] must be C_in"):
        subpixel_conv2d(x, torch.randn(4, 3, 3, 3), None, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        subpixel_conv2d(x, torch.randn(4, 2, 3, 3), torch.randn(1), 2)
    with pytest.raises(ValueError, match="padding must be 'same', 'valid' or a non-negative int"):
        subpixel_conv2d(x, torch.randn(4, 2, 3, 3), None, 2, padding=-1)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        subpixel_conv2d(x, torch.randn(4, 2, 5, 5), None, 2, padding="valid")
