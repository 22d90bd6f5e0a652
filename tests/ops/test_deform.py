"""Deformable convolution (DCNv1 / v2): values, all gradients, layouts,
dtypes, boundaries, custom-op machinery (opcheck, torch.compile, FLOP counting), errors.

References: torchvision.ops.deform_conv2d in float64 and ``_ref_deform_conv2d`` below, a
plain-PyTorch implementation that samples by explicit gather (its gradients come from
autograd). Shapes stay tiny: on CPU the kernels run in Triton's interpreter.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

torchvision = pytest.importorskip("torchvision")
from torchvision.ops import deform_conv2d as tv_deform_conv2d  # noqa: E402

from _helpers import ref_bilinear_sample  # noqa: E402
from kernels import _common  # noqa: E402
from layers.backend import use_backend  # noqa: E402
from layers.deform import DeformConv2d, OffsetDeformConv2d, deform_conv2d  # noqa: E402


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 follows cudnn.allow_tf32 (on by default); compare full fp32 here."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


# --------------------------------------------------------------------------- plain references
def _ref_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask):
    N, C, H, W = x.shape
    Co, Cg, KH, KW = weight.shape
    OH, OW = offset.shape[-2:]
    groups, og = C // Cg, offset.shape[1] // (2 * KH * KW)
    cpog = C // og
    cols = []
    for c_og in range(og):
        img = x[:, c_og * cpog:(c_og + 1) * cpog]
        taps = []
        for kh in range(KH):
            for kw in range(KW):
                t = kh * KW + kw
                oy = torch.arange(OH, dtype=x.dtype, device=x.device) * stride[0] - padding[0] + kh * dilation[0]
                ox = torch.arange(OW, dtype=x.dtype, device=x.device) * stride[1] - padding[1] + kw * dilation[1]
                py = oy[:, None] + offset[:, c_og * 2 * KH * KW + 2 * t]
                px = ox[None, :] + offset[:, c_og * 2 * KH * KW + 2 * t + 1]
                v = ref_bilinear_sample(img, py.reshape(N, -1), px.reshape(N, -1)).reshape(N, cpog, OH, OW)
                if mask is not None:
                    v = v * mask[:, c_og * KH * KW + t][:, None]
                taps.append(v)
        cols.append(torch.stack(taps, 2))  # (N, cpog, taps, OH, OW)
    cols = torch.cat(cols, 1).reshape(N, groups, Cg * KH * KW, OH * OW)
    out = torch.einsum("gok,ngkp->ngop", weight.reshape(groups, Co // groups, -1), cols).reshape(N, Co, OH, OW)
    return out if bias is None else out + bias[None, :, None, None]


# --------------------------------------------------------------------------- helpers
def _out_size(H, W, k, s, p, d):
    return (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1, (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1


def _make(device, N=2, C=4, H=5, W=5, Co=4, groups=1, og=1, k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1), mask=True,
          dtype=torch.float64, scale=1.5):
    OH, OW = _out_size(H, W, k, s, p, d)
    x = torch.randn(N, C, H, W, dtype=dtype, device=device)
    off = torch.randn(N, 2 * og * k[0] * k[1], OH, OW, dtype=dtype, device=device) * scale
    w = torch.randn(Co, C // groups, *k, dtype=dtype, device=device) / math.sqrt(C // groups * k[0] * k[1])
    b = torch.randn(Co, dtype=dtype, device=device)
    m = torch.rand(N, og * k[0] * k[1], OH, OW, dtype=dtype, device=device) if mask else None
    return x, off, w, b, m


def _grads(fn, x, off, w, b, m, gy=None, s=(1, 1), p=(1, 1), d=(1, 1)):
    """(output, [grad input, offset, weight, bias(, mask)]) of fn(...) against gy."""
    ins = [t.detach().clone().requires_grad_() for t in (x, off, w, b)]
    mm = m.detach().clone().requires_grad_() if m is not None else None
    y = fn(ins[0], ins[1], ins[2], ins[3], s, p, d, mm)
    if gy is None:
        gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, ins + ([mm] if mm is not None else []), gy)
    return y, list(grads), gy


def _assert_close(actual, expected, rtol, atol=None, what=""):
    """Max error relative to the expected tensor's scale (robust for low-precision dtypes)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale + (rtol if atol is None else atol), f"{what}: max err {err:.3g} (scale {scale:.3g})"


NAMES = ["output", "grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"]


def _check_all(device, x, off, w, b, m, s, p, d, rtol=1e-10, against_plain=True):
    y, g, gy = _grads(deform_conv2d, x, off, w, b, m, s=s, p=p, d=d)
    y_tv, g_tv, _ = _grads(tv_deform_conv2d, x, off, w, b, m, gy, s=s, p=p, d=d)
    for name, a, e in zip(NAMES, [y] + g, [y_tv] + g_tv):
        _assert_close(a, e, rtol, what=f"{name} vs torchvision")
    if against_plain:
        y_ref, g_ref, _ = _grads(_ref_deform_conv2d, x, off, w, b, m, gy, s=s, p=p, d=d)
        for name, a, e in zip(NAMES, [y] + g, [y_ref] + g_ref):
            _assert_close(a, e, rtol, what=f"{name} vs plain reference")
    return y, g


# --------------------------------------------------------------------------- deform_conv2d values + gradients
GRID = [  # (C, Co, groups, offset_groups, kernel, stride, padding, dilation, mask)
    (4, 4, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), True),
    (4, 6, 2, 2, (3, 2), (2, 1), (1, 0), (2, 1), True),
    (6, 4, 1, 3, (3, 2), (1, 1), (1, 0), (1, 1), False),
    (4, 4, 2, 1, (2, 3), (1, 2), (0, 1), (1, 2), False),
    (6, 4, 2, 3, (3, 2), (2, 1), (1, 0), (2, 1), True),  # segments cross weight / offset groups
]


GRID_IDS = ["og1-g1-k33", "og2-g2-k32-s21-p10-d21", "og3-g1-k32-nomask", "og1-g2-k23-s12-p01-d12-nomask",
            "og3-g2-k32-s21-p10-d21"]


@pytest.mark.parametrize("C,Co,groups,og,k,s,p,d,mask", GRID, ids=GRID_IDS)
def test_deform_conv2d_matches_references(device, C, Co, groups, og, k, s, p, d, mask):
    x, off, w, b, m = _make(device, N=2, C=C, H=5, W=5, Co=Co, groups=groups, og=og, k=k, s=s, p=p, d=d, mask=mask)
    _check_all(device, x, off, w, b, m, s, p, d)


def test_deform_conv2d_boundary_and_far_samples(device):
    """Samples exactly on integers, on the -1 / H (W) borders, just inside them, and far outside."""
    N, C, H, W, k = 1, 2, 4, 5, (2, 2)
    x, off, w, b, m = _make(device, N=N, C=C, H=H, W=W, Co=3, k=k, s=(1, 1), p=(1, 1))
    OH, OW = off.shape[-2:]
    ys = torch.tensor([-1.0, -0.5, 0.0, 2.0, H - 1.0, H - 0.25, H, -3.0, 1e6, -1e6, 1.5], dtype=x.dtype)
    xs = torch.tensor([0.0, -1.0, W, W - 1.0, 3.0, -0.75, W - 0.5, 1e6, 2.0, -5.0, 0.25], dtype=x.dtype)
    gen = torch.Generator().manual_seed(1)
    ty = ys[torch.randint(len(ys), (N, k[0] * k[1], OH, OW), generator=gen)]
    tx = xs[torch.randint(len(xs), (N, k[0] * k[1], OH, OW), generator=gen)]
    base_y = (torch.arange(OH, dtype=x.dtype) - 1)[None, :, None] + torch.tensor([0.0, 0.0, 1.0, 1.0])[:, None, None]
    base_x = (torch.arange(OW, dtype=x.dtype) - 1)[None, None, :] + torch.tensor([0.0, 1.0, 0.0, 1.0])[:, None, None]
    off = torch.stack([ty - base_y, tx - base_x], 2).reshape(N, -1, OH, OW).to(device)
    _check_all(device, x, off, w, b, m, (1, 1), (1, 1), (1, 1))


@pytest.mark.parametrize("N", [0, 33])
def test_deform_conv2d_batch_sizes(device, N):
    x, off, w, b, m = _make(device, N=N, C=2, H=3, W=3, Co=3, k=(2, 2), p=(0, 0))
    y, g = _check_all(device, x, off, w, b, m, (1, 1), (0, 0), (1, 1), against_plain=N > 0)
    assert y.shape == (N, 3, 2, 2)
    if N == 0:
        assert all(t.abs().sum() == 0 for t in g)


def test_deform_conv2d_layouts(device):
    """channels_last input, non-contiguous offset / mask / weight views, expanded grad_output."""
    x, off, w, b, m = _make(device, N=2, C=4, H=5, W=4, Co=4, groups=2, og=2, k=(2, 2), p=(1, 0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    off_view = torch.stack([off, torch.zeros_like(off)], -1)[..., 0]  # last-dim stride 2
    m_view = m.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels_last-like mask
    w_view = w.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not off_view.is_contiguous() and not m_view.is_contiguous() and not w_view.is_contiguous()
    ins = [t.detach().requires_grad_() for t in (x_cl, off_view, w_view, b, m_view)]
    y = deform_conv2d(ins[0], ins[1], ins[2], ins[3], 1, (1, 0), 1, ins[4])
    assert y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn(1, 4, 1, 1, dtype=y.dtype, device=device).expand_as(y)  # zero-stride gradient
    g = torch.autograd.grad(y, ins, gy)
    ref_ins = [t.detach().clone().requires_grad_() for t in (x, off, w, b, m)]
    y_ref = tv_deform_conv2d(ref_ins[0], ref_ins[1], ref_ins[2], ref_ins[3], 1, (1, 0), 1, ref_ins[4])
    g_ref = torch.autograd.grad(y_ref, ref_ins, gy.contiguous())
    _assert_close(y, y_ref, 1e-10, what="output")
    for name, a, e in zip(NAMES[1:], g, g_ref):
        _assert_close(a, e, 1e-10, what=name)


TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_deform_conv2d_dtypes(device, dtype):
    """Low precision: compared with the float64 result on the same (rounded) inputs;
    errors relative to each tensor's max magnitude: fp32 1e-5, fp16 1e-2, bf16 6e-2."""
    s, p, d = (2, 1), (1, 0), (1, 1)
    x, off, w, b, m = _make(device, N=2, C=4, H=5, W=5, Co=4, groups=2, og=2, k=(3, 2), s=s, p=p, d=d, dtype=dtype)
    y, g, gy = _grads(deform_conv2d, x, off, w, b, m, s=s, p=p, d=d)
    assert y.dtype == dtype and all(t.dtype == dtype for t in g)
    y64, g64, _ = _grads(tv_deform_conv2d, *(t.double() for t in (x, off, w, b, m)), gy.double(), s=s, p=p, d=d)
    for name, a, e in zip(NAMES, [y] + g, [y64] + g64):
        _assert_close(a, e, TOL[dtype], what=f"{dtype} {name}")
    with use_backend("reference"):  # the reference backend handles every dtype too
        y_ref, g_ref, _ = _grads(deform_conv2d, x, off, w, b, m, gy, s=s, p=p, d=d)
    assert y_ref.dtype == dtype
    for name, a, e in zip(NAMES, [y_ref] + g_ref, [y64] + g64):
        _assert_close(a, e, TOL[dtype], what=f"reference backend {dtype} {name}")


@pytest.mark.parametrize("with_mask", [True, False])
def test_zero_offset_equals_conv2d(device, with_mask):
    x, off, w, b, m = _make(device, N=2, C=4, H=6, W=5, Co=6, groups=2, k=(3, 2), s=(2, 1), p=(1, 1), d=(1, 2),
                            dtype=torch.float32)
    off = torch.zeros_like(off)
    m = torch.ones_like(m) if with_mask else None
    y = deform_conv2d(x, off, w, b, (2, 1), (1, 1), (1, 2), m)
    torch.testing.assert_close(y, F.conv2d(x, w, b, (2, 1), (1, 1), (1, 2), 2), rtol=1e-5, atol=1e-5)


def test_deform_conv2d_gradcheck(device):
    x, off, w, b, m = _make(device, N=1, C=2, H=4, W=4, Co=2, k=(2, 2), p=(0, 0), og=2, groups=2)
    ins = tuple(t.requires_grad_() for t in (x, off, w, b, m))
    fn = lambda x, off, w, b, m: deform_conv2d(x, off, w, b, 1, 0, 1, m)
    assert torch.autograd.gradcheck(fn, ins, fast_mode=True)


# --------------------------------------------------------------------------- op machinery
def test_opcheck(device):
    x, off, w, b, m = _make(device, N=1, C=2, H=3, W=3, Co=2, k=(2, 2), p=(0, 0))
    for t in (x, off, w, b, m):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.convlab.deform_conv2d.default, (x, off, w, b, m, [1, 1], [0, 0], [1, 1]))
    torch.library.opcheck(torch.ops.convlab.deform_conv2d.default, (x, off, w, None, None, [1, 1], [0, 0], [1, 1]))
    # the gradient ops have no autograd of their own (no double backward): plain tensors
    gy = torch.randn(1, 2, 2, 2, dtype=x.dtype, device=device)
    x, off, w, m = (t.detach() for t in (x, off, w, m))
    conf = ([1, 1], [0, 0], [1, 1])
    torch.library.opcheck(torch.ops.convlab.deform_conv2d_data_grad.default, (gy, x, off, w, m, *conf))
    torch.library.opcheck(torch.ops.convlab.deform_conv2d_weight_grad.default, (gy, x, off, None, [2, 2, 2, 2], *conf))


@pytest.mark.slow
def test_torch_compile(device):
    x, off, w, b, m = _make(device, N=1, C=2, H=4, W=4, Co=2, k=(2, 2), p=(0, 0))

    def fn(x, off, w, b, m):
        return deform_conv2d(x, off, w, b, mask=m).sum()

    backend = "aot_eager" if device == "cpu" else "inductor"
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    ins = [t.detach().clone().requires_grad_() for t in (x, off, w, b, m)]
    ref_ins = [t.detach().clone().requires_grad_() for t in (x, off, w, b, m)]
    out = compiled(*ins)
    ref = fn(*ref_ins)
    torch.testing.assert_close(out, ref)
    out.backward()
    ref.backward()
    for a, e in zip(ins, ref_ins):
        torch.testing.assert_close(a.grad, e.grad)


def test_flop_counter(device):
    x, off, w, b, m = _make(device, N=1, C=2, H=4, W=4, Co=3, k=(2, 2), p=(0, 0))
    for t in (x, off, w, m):
        t.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        y = deform_conv2d(x, off, w, b, mask=m)
    gemm = 2 * 1 * 3 * 3 * 3 * 2 * 4
    assert counter.get_total_flops() == gemm + 8 * (1 * 2 * 4 * 9)
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert counter.get_total_flops() > 2 * gemm


# --------------------------------------------------------------------------- argument errors
def _bad_cases(device):
    x, off, w, b, m = _make(device, N=2, C=4, H=5, W=5, Co=4, k=(3, 3), og=2, dtype=torch.float32)
    return [
        (dict(offset=off[:, :-1]), "offset"),
        (dict(offset=off[:1]), "offset"),
        (dict(offset=off[..., :-1]), "offset"),
        (dict(offset=off[0]), "offset"),
        (dict(mask=m[:, :-1]), "mask"),
        (dict(mask=m[..., 1:]), "mask"),
        (dict(input=x[0]), "input"),
        (dict(weight=w[:, :3]), "weight"),
        (dict(weight=w[:3, :2], bias=None), "weight.shape\\[0\\]"),  # C_out 3 vs groups 2
        (dict(weight=w[0]), "weight must be 4-D"),
        (dict(offset=torch.zeros(2, 2 * 3 * 9, 5, 5)), "offset_groups"),
        (dict(bias=b[:2]), "bias"),
        (dict(offset=off.double()), "offset dtype"),
        (dict(mask=m.half()), "mask dtype"),
        (dict(weight=w.double()), "weight dtype"),
        (dict(input=x.int(), ), "input dtype"),
        (dict(stride=0), "stride"),
        (dict(padding=-1), "padding"),
    ], dict(input=x, offset=off, weight=w, bias=b, mask=m, padding=1)


def test_argument_errors(device):
    cases, good = _bad_cases(device)
    deform_conv2d(**good)
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            deform_conv2d(**dict(good, **change))


# --------------------------------------------------------------------------- modules
def test_deform_conv2d_module_matches_torchvision(device):
    torch.manual_seed(0)
    ours = DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=1, groups=2).double().to(device)
    theirs = torchvision.ops.DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=1, groups=2)
    theirs = theirs.double().to(device)
    theirs.load_state_dict(ours.state_dict())
    assert ours.weight.shape == theirs.weight.shape and ours.bias.shape == theirs.bias.shape
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, device=device)
    OH, OW = _out_size(5, 4, (3, 2), (2, 1), (1, 1), (1, 1))
    off = torch.randn(1, 2 * 6, OH, OW, dtype=torch.float64, device=device)
    m = torch.rand(1, 6, OH, OW, dtype=torch.float64, device=device)
    torch.testing.assert_close(ours(x, off, m), theirs(x, off, m))
    torch.testing.assert_close(ours(x, off), theirs(x, off))


@pytest.mark.parametrize("modulated", [False, True])
def test_offset_deform_conv2d_init_is_conv(device, modulated):
    mod = OffsetDeformConv2d(4, 6, 3, stride=1, padding=(1, 0), dilation=(1, 2), groups=2, offset_groups=2,
                             modulated=modulated).to(device)
    x = torch.randn(2, 4, 5, 6, device=device, requires_grad=True)
    y = mod(x)
    conv = F.conv2d(x, mod.weight, None, 1, (1, 0), (1, 2), 2)
    expected = (0.5 * conv if modulated else conv) + mod.bias[None, :, None, None]
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert mod.conv_offset.weight.grad is not None and mod.conv_offset.weight.grad.abs().sum() > 0
    assert mod.weight.grad is not None and x.grad is not None


# --------------------------------------------------------------------------- NaN positions, determinism, workspace
NAN, INF = float("nan"), float("inf")


def _nan_offsets(off):
    """NaN in dy only, dx only, both; NaN next to a far (clamped) or infinite other coordinate;
    infinite offsets alone. off: (2, 2 * 2 * 4, OH, OW) (offset_groups 2, 2 x 2 kernel)."""
    off = off.clone()
    off[0, 0, 0, 0] = NAN  # group 0, tap 0: dy
    off[0, 3, 1, 2] = NAN  # tap 1: dx
    off[1, 4:6, 2, 1] = NAN  # tap 2: both
    off[1, 0, 1, 1], off[1, 1, 1, 1] = NAN, 1e6  # NaN dy, far dx
    off[0, 6, 2, 2], off[0, 7, 2, 2] = -INF, NAN  # -inf dy, NaN dx
    off[1, 9, 0, 0], off[1, 8, 0, 2] = NAN, INF  # group 1
    off[0, 10, 1, 0] = INF
    return off


@pytest.mark.parametrize("with_mask", [True, False], ids=["v2", "v1"])
def test_deform_conv2d_nan_offsets(device, with_mask):
    """A NaN offset makes exactly the outputs that sample it NaN; every gradient equals autograd's
    through the plain reference (NaN where it has NaN), on the Triton and the reference backends."""
    x, off, w, b, m = _make(device, N=2, C=4, H=4, W=5, Co=4, groups=2, og=2, k=(2, 2), p=(1, 1), mask=with_mask)
    off = _nan_offsets(off)
    args = ((1, 1), (1, 1), (1, 1))
    y_ref, g_ref, gy = _grads(_ref_deform_conv2d, x, off, w, b, m, None, *args)
    assert y_ref.isnan().any() and not y_ref.isnan().all()
    assert not g_ref[0].isnan().any()  # the input gets no gradient from a NaN sample
    for backend in ("auto", "reference"):
        with use_backend(backend):
            y, g, _ = _grads(deform_conv2d, x, off, w, b, m, gy, *args)
        for name, a, e in zip(NAMES, [y] + g, [y_ref] + g_ref):
            torch.testing.assert_close(a, e, equal_nan=True, msg=lambda s: f"{backend} {name}: {s}")


@pytest.fixture
def deterministic():
    """set(on, warn_only=False) -> torch.use_deterministic_algorithms; restored afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield lambda on, warn_only=False: torch.use_deterministic_algorithms(on, warn_only=warn_only)
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_algorithms(device, deterministic):
    """grad input (atomic adds) raises under use_deterministic_algorithms(True), warns with
    warn_only=True; the forward and the weight gradient are deterministic and run."""
    x, off, w, b, m = _make(device, N=1, C=2, H=3, W=3, Co=2, k=(2, 2), p=(0, 0))
    ins = [t.clone().requires_grad_() for t in (x, off, w, m)]
    fwd = lambda: deform_conv2d(ins[0], ins[1], ins[2], mask=ins[3]).sum()
    y = fwd()
    expected = torch.autograd.grad(y, ins)
    deterministic(True)
    y = fwd()
    w_only = ins[2].detach().requires_grad_()  # weight gradient only: no atomics
    torch.autograd.grad(deform_conv2d(x, off, w_only, mask=m).sum(), [w_only])
    with pytest.raises(RuntimeError, match="convlab::deform_conv2d_data_grad .*does not have a deterministic"):
        torch.autograd.grad(y, [ins[1]], retain_graph=True)
    deterministic(True, warn_only=True)
    with pytest.warns(UserWarning, match="deform_conv2d_data_grad"):
        got = torch.autograd.grad(y, ins)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


def test_backward_into_dirty_workspace(device, monkeypatch):
    """The launchers zero the atomic workspace themselves: a NaN-filled allocation changes nothing."""
    import kernels._common as common

    x, off, w, b, m = _make(device, N=2, C=4, H=4, W=4, Co=4, og=2, k=(2, 2), p=(0, 0))

    def grads():
        ins = [t.clone().requires_grad_() for t in (x, off, w, m)]
        y = deform_conv2d(ins[0], ins[1], ins[2], mask=ins[3]).sum()
        return torch.autograd.grad(y, ins)

    expected = grads()
    monkeypatch.setattr(common, "empty_workspace", lambda like, dtype: torch.full_like(like, NAN, dtype=dtype))
    for a, e in zip(grads(), expected):
        torch.testing.assert_close(a, e)


@pytest.mark.skipif(not _common.INTERPRET, reason="count_samples is an interpreter hook")
@pytest.mark.parametrize("C,Co,groups,og", [(4, 20, 1, 1), (6, 40, 2, 3)], ids=["g1-og1", "g2-og3"])
def test_samples_computed_once_per_output(C, Co, groups, og):
    """Every bilinear sample is gathered once per weight group: the forward, weight gradient and
    data gradient each gather (pixel, input channel) samples exactly N * OH * OW * taps * C_in
    times, although C_out / groups (20) spans two 16-wide output-channel blocks of the
    interpreter's tiles (the old kernels gathered once per such block)."""
    from kernels import deform as dk

    x, off, w, b, m = _make("cpu", N=1, C=C, H=4, W=3, Co=Co, groups=groups, og=og, k=(3, 2), p=(1, 0),
                            dtype=torch.float32)
    y = dk.deform_conv2d_forward(x, off, w, b, m, (1, 1), (1, 0), (1, 1))
    gy = torch.randn_like(y)
    with dk.count_samples() as counts:
        dk.deform_conv2d_forward(x, off, w, b, m, (1, 1), (1, 0), (1, 1))
        dk.deform_conv2d_weight_grad(gy, x, off, m, w.shape, (1, 1), (1, 0), (1, 1))
        dk.deform_conv2d_data_grad(gy, x, off, w, m, (1, 1), (1, 0), (1, 1))
    expected = y.shape[0] * y.shape[2] * y.shape[3] * 3 * 2 * C
    data_gy = counts.pop("data_gy")
    assert counts == {"fwd": expected, "weight": expected, "data": expected}
    # grad_output re-reads of the data gradient: once per (tap, offset group) where the offset group
    # lies in one weight group (g1-og1: 6 taps); g2-og3's offset groups span 2 one-channel segments
    # of different weight groups, so each reads the C_out / groups channels twice: 6 * 3 * 2 / 2
    assert data_gy == y.numel() * (6 if og == 1 else 18)


@pytest.mark.skipif(not _common.INTERPRET, reason="count_samples is an interpreter hook")
def test_data_grad_grad_output_tile_held(monkeypatch):
    """The data gradient holds a weight group's grad_output tile across the channel blocks when
    one K block covers C_out / groups (grad_output read once per tap), and otherwise re-reads it
    per channel block in BLOCK_K steps; both give the same gradients (here 20 input channels =
    two 16-wide channel blocks, 20 output channels = two 16-wide K blocks when DATA_K is 16)."""
    from kernels import deform as dk

    x, off, w, b, m = _make("cpu", N=1, C=20, H=4, W=3, Co=20, k=(2, 2), p=(1, 0), dtype=torch.float64)
    conf = ((1, 1), (1, 0), (1, 1))
    gy = torch.randn_like(dk.deform_conv2d_forward(x, off, w, b, m, *conf))
    with dk.count_samples() as held:
        ref = dk.deform_conv2d_data_grad(gy, x, off, w, m, *conf)
    monkeypatch.setattr(dk, "DATA_K", dict.fromkeys(dk.DATA_K, 16))
    with dk.count_samples() as reread:
        out = dk.deform_conv2d_data_grad(gy, x, off, w, m, *conf)
    assert held["data_gy"] == gy.numel() * 4  # 4 taps
    assert reread["data_gy"] == gy.numel() * 4 * 2  # 4 taps x 2 channel blocks
    for a, e in zip(out, ref):
        torch.testing.assert_close(a, e)
