"""Deformable RoI pooling: zero offset == torchvision.ops.roi_align (aligned=False), values and
gradients vs the plain-PyTorch reference (autograd), float64 gradcheck, boxes outside the image,
empty box lists, dtypes, layouts, opcheck, FLOP counting, argument errors. Tiny shapes: on CPU the
kernels run in Triton's interpreter."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

torchvision = pytest.importorskip("torchvision")
from torchvision.ops import roi_align  # noqa: E402

from layers.backend import use_backend  # noqa: E402
from layers.roi import DeformRoIPool2d, ModulatedDeformRoIPool2d, OffsetDeformRoIPool2d, deform_roi_pool  # noqa: E402


def _rois(device, dtype, H=6, W=7, scale=0.5):
    # image coordinates (feature map = image * scale): inside, partly outside, degenerate (< 1 px),
    # far outside, and a second image of the batch
    boxes = torch.tensor([[0, 1.0, 2.0, 9.0, 10.0],
                          [1, -3.0, -2.5, 6.3, 4.1],
                          [0, 10.2, 8.3, 17.9, 15.5],
                          [1, 4.0, 4.0, 4.4, 4.2],
                          [0, 30.0, 30.0, 40.0, 44.0]], dtype=dtype, device=device)
    return boxes


def _inputs(device, dtype, C=3, H=6, W=7, offset=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, H, W, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    rois = _rois(device, dtype)
    off = (torch.randn(rois.shape[0], 2, 2, 3, generator=g, dtype=torch.float64) * 0.8).to(device=device,
                                                                                          dtype=dtype)
    return x, rois, (off if offset else None)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_zero_offset_equals_torchvision_roi_align(device, sampling_ratio):
    x, rois, _ = _inputs(device, torch.float64)
    ref = roi_align(x, rois, (2, 3), spatial_scale=0.5, sampling_ratio=sampling_ratio, aligned=False)
    out = deform_roi_pool(x, rois, None, (2, 3), 0.5, sampling_ratio)
    zero = deform_roi_pool(x, rois, torch.zeros(rois.shape[0], 2, 2, 3, dtype=x.dtype, device=device), (2, 3), 0.5,
                           sampling_ratio)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(zero, ref)
    with use_backend("reference"):
        torch.testing.assert_close(deform_roi_pool(x, rois, None, (2, 3), 0.5, sampling_ratio), ref)
    # gradient w.r.t. the input matches roi_align's
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    gy = torch.randn_like(ref)
    (roi_align(xa, rois, (2, 3), 0.5, sampling_ratio, aligned=False) * gy).sum().backward()
    (deform_roi_pool(xb, rois, None, (2, 3), 0.5, sampling_ratio) * gy).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_values_and_gradients_vs_reference(device, sampling_ratio):
    x, rois, off = _inputs(device, torch.float64)
    args = ((2, 3), 0.5, sampling_ratio, 0.1)
    xa, oa = x.clone().requires_grad_(), off.clone().requires_grad_()
    xb, ob = x.clone().requires_grad_(), off.clone().requires_grad_()
    out = deform_roi_pool(xa, rois, oa, *args)
    with use_backend("reference"):
        ref = deform_roi_pool(xb, rois, ob, *args)
    torch.testing.assert_close(out, ref)
    gy = torch.randn_like(out)
    (out * gy).sum().backward()
    (ref * gy).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(oa.grad, ob.grad)


def test_gradcheck_float64(device):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.6, 3.1, 2.7], [0, -1.2, 1.1, 2.2, 4.6]], dtype=torch.float64, device=device)
    off = (torch.randn(2, 2, 2, 2, dtype=torch.float64, device=device) * 0.5).requires_grad_()
    fn = lambda a, o: deform_roi_pool(a, rois, o, 2, 1.0, 2, 0.1)
    assert torch.autograd.gradcheck(fn, (x, off), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(device, dtype):
    x, rois, off = _inputs(device, torch.float64)
    ref = deform_roi_pool(x, rois, off, (2, 3), 0.5, 2)
    xl = x.to(dtype).requires_grad_()
    out = deform_roi_pool(xl, rois.to(dtype), off.to(dtype), (2, 3), 0.5, 2)
    assert out.dtype == dtype
    tol = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    out.float().sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(xl.grad.float()).all()


def test_list_boxes_channels_last_and_module(device):
    x, rois, off = _inputs(device, torch.float32)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i).flatten() for i in range(2)])
    pool = DeformRoIPool2d((2, 3), spatial_scale=0.5, sampling_ratio=2, gamma=0.1)
    a = pool(x.contiguous(memory_format=torch.channels_last), boxes, off[order])
    b = pool(x, rois[order], off[order])
    torch.testing.assert_close(a, b)
    assert "gamma=0.1" in repr(pool)


def test_empty_boxes(device):
    x = torch.randn(2, 3, 5, 5, device=device, requires_grad=True)
    off = torch.zeros(0, 2, 2, 2, device=device, requires_grad=True)
    out = deform_roi_pool(x, torch.zeros(0, 5, device=device), off, 2, 1.0, 2)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert deform_roi_pool(x, [torch.zeros(0, 4, device=device)] * 2, None, 2).shape == (0, 3, 2, 2)
    assert deform_roi_pool(x, [], None, 2).shape == (0, 3, 2, 2)


def test_offset_module_starts_as_roi_align_and_learns(device):
    x, rois, _ = _inputs(device, torch.float32)
    mod = OffsetDeformRoIPool2d((2, 3), 0.5, 2, in_channels=3, hidden_channels=8).to(device)
    out = mod(x, rois)
    torch.testing.assert_close(out, roi_align(x, rois, (2, 3), 0.5, 2, aligned=False))
    out.square().sum().backward()
    assert mod.offset_fc[-1].weight.grad.abs().sum() > 0  # offsets receive a gradient


def test_opcheck_and_flops(device):
    x, rois, off = _inputs(device, torch.float32)
    args = (x.requires_grad_(), rois, off.requires_grad_(), 0.5, 2, 3, 2, 0.1)
    torch.library.opcheck(torch.ops.convlab.deform_roi_pool.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    with FlopCounterMode(display=False) as counter:
        deform_roi_pool(x, rois, off, (2, 3), 0.5, 2)
    assert counter.get_total_flops() == 8 * 5 * 3 * 6 * 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(offset=torch.zeros(5, 2, 3, 3)), r"offset must have shape \(K, 2, PH, PW\) = \(5, 2, 2, 3\)"),
    (dict(boxes=torch.zeros(5, 4)), r"boxes \(rois\) must be a Tensor of shape \(K, 5\)"),
    (dict(boxes=[torch.zeros(2, 5)]), r"boxes\[0\] must be a Tensor of shape \(L, 4\)"),
    (dict(input=torch.zeros(3, 5, 5)), r"input must be a 4-D Tensor \(N, C, H, W\)"),
    (dict(output_size=(0, 2)), "output_size must be positive"),
    (dict(offset=torch.zeros(5, 2, 2, 3, dtype=torch.float64)), "offset dtype must match"),
])
def test_argument_errors(kwargs, match):
    x, rois, _ = _inputs("cpu", torch.float32)
    call = dict(input=x, boxes=rois, offset=None, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        deform_roi_pool(**call)


# --------------------------------------------------------------------------- NaN offsets, batch index, determinism
NAN = float("nan")


def _both_backends(x, rois, off, args, gy=None):
    """[(output, grad input, grad offset)] on the Triton and the reference backend."""
    res = []
    for backend in ("auto", "reference"):
        xa, oa = x.clone().requires_grad_(), off.clone().requires_grad_()
        with use_backend(backend):
            out = deform_roi_pool(xa, rois, oa, *args)
        gy = torch.randn_like(out) if gy is None else gy
        res.append((out, *torch.autograd.grad(out, [xa, oa], gy)))
    return res


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_nan_offset(device, sampling_ratio):
    """A NaN offset makes exactly its bin NaN (every channel); the kernels' gradients equal autograd's
    through the plain reference (NaN where it has NaN); the input gets none from a NaN sample."""
    x, rois, off = _inputs(device, torch.float64)
    off[0, 1, 1, 1] = NAN  # y shift only
    off[1, 0, 0, 2] = NAN  # x shift only
    off[2, :, 1, 0] = NAN  # both
    off[3, 1, 0, 0] = NAN  # degenerate box
    off[4, 0, 1, 2] = NAN  # box outside the image
    off[2, 0, 0, 0] = float("inf")
    (out, gx, go), (ref, gx_ref, go_ref) = _both_backends(x, rois, off, ((2, 3), 0.5, sampling_ratio, 0.1))
    assert torch.equal(out.isnan(), off.isnan().any(1, keepdim=True).expand_as(out))
    assert not gx_ref.isnan().any()
    torch.testing.assert_close(out, ref, equal_nan=True)
    torch.testing.assert_close(gx, gx_ref, equal_nan=True)
    torch.testing.assert_close(go, go_ref, equal_nan=True)


@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5, NAN, 1e9])
def test_batch_index_checked(bad):
    """On CPU tensors a batch index that is not an integer in [0, N) raises, naming the box."""
    x, rois, off = _inputs("cpu", torch.float32)
    rois[3, 0] = bad
    for backend in ("auto", "reference"):
        with use_backend(backend):
            with pytest.raises(ValueError, match=r"boxes\[3\] has batch index .*integer in \[0, 2\)"):
                deform_roi_pool(x, rois, off, (2, 3), 0.5, 2)
            with pytest.raises(ValueError, match=r"boxes\[3\] has batch index"):
                DeformRoIPool2d((2, 3), 0.5, 2)(x, rois, off)


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_unchecked_bad_batch_index_reads_nothing(device, sampling_ratio):
    """Unchecked (CUDA's default), a box with a bad batch index gives 0 and no gradient; the other
    boxes are unaffected."""
    x, rois, off = _inputs(device, torch.float64)
    bad = rois.clone()
    bad[1, 0], bad[2, 0], bad[3, 0], bad[4, 0] = 2.0, -1.0, NAN, 0.5
    good = torch.tensor([True, False, False, False, False], device=device)
    args = ((2, 3), 0.5, sampling_ratio, 0.1)
    for backend in ("auto", "reference"):
        with use_backend(backend):
            xa, oa = x.clone().requires_grad_(), off.clone().requires_grad_()
            out = deform_roi_pool(xa, bad, oa, *args, check_batch_index=False)
            gx, go = torch.autograd.grad(out, [xa, oa], torch.ones_like(out))
            xb, ob = x.clone().requires_grad_(), off[good].clone().requires_grad_()
            out_ok = deform_roi_pool(xb, rois[good], ob, *args)
            gx_ok, go_ok = torch.autograd.grad(out_ok, [xb, ob], torch.ones_like(out_ok))
        assert torch.equal(out[~good], torch.zeros_like(out[~good])), backend
        assert torch.equal(go[~good], torch.zeros_like(go[~good])), backend
        torch.testing.assert_close(out[good], out_ok)
        torch.testing.assert_close(go[good], go_ok)
        torch.testing.assert_close(gx, gx_ok)


def test_deterministic_algorithms_and_dirty_workspace(device, monkeypatch):
    """grad input (atomic adds) raises under use_deterministic_algorithms(True) and warns with
    warn_only=True; the launcher zeroes its workspace itself (a NaN-filled allocation changes nothing)."""
    import kernels._common as common

    x, rois, off = _inputs(device, torch.float64)
    xa, oa = x.clone().requires_grad_(), off.clone().requires_grad_()
    grads = lambda: torch.autograd.grad(deform_roi_pool(xa, rois, oa, (2, 3), 0.5, 2).square().sum(), [xa, oa])
    expected = grads()
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        deform_roi_pool(xa, rois, oa, (2, 3), 0.5, 2)  # the forward is deterministic
        with pytest.raises(RuntimeError, match="convlab::deform_roi_pool_backward .*deterministic"):
            grads()
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="deform_roi_pool_backward"):
            got = grads()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)
    monkeypatch.setattr(common, "empty_workspace", lambda like, dtype: torch.full_like(like, NAN, dtype=dtype))
    for a, e in zip(grads(), expected):
        torch.testing.assert_close(a, e)


def _modulated_composition(mod, x, rois):
    """ModulatedDeformRoIPool2d spelled out in plain PyTorch on the reference backend: RoI Align
    features -> offset_fc / sigmoid(mask_fc) -> deform_roi_pool(offset) * mask."""
    ph, pw = mod.output_size
    args = (mod.output_size, mod.spatial_scale, mod.sampling_ratio, mod.gamma)
    with use_backend("reference"):
        plain = deform_roi_pool(x, rois, None, *args).flatten(1)
        offset = mod.offset_fc(plain).view(-1, 2, ph, pw)
        mask = torch.sigmoid(mod.mask_fc(plain)).view(-1, 1, ph, pw)
        return deform_roi_pool(x, rois, offset, *args) * mask


@pytest.mark.parametrize("hidden", [0, 8])
def test_modulated_module_matches_composition(device, hidden):
    """Outputs and gradients (input, both fc branches) against the plain composition; at init the
    module is RoI Align * 0.5 (zero-initialised last layers: offset 0, sigmoid(0))."""
    x, rois, _ = _inputs(device, torch.float64)
    mod = ModulatedDeformRoIPool2d((2, 3), 0.5, 2, in_channels=3, hidden_channels=hidden).double().to(device)
    ref = roi_align(x, rois, (2, 3), spatial_scale=0.5, sampling_ratio=2, aligned=False)
    torch.testing.assert_close(mod(x, rois), 0.5 * ref)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial offsets and masks
        for p in list(mod.offset_fc.parameters()) + list(mod.mask_fc.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = mod(xa, rois), _modulated_composition(mod, xb, rois)
    assert out.shape == (rois.shape[0], 3, 2, 3)
    torch.testing.assert_close(out, expected)
    gy = torch.randn_like(out)
    params = list(mod.offset_fc.parameters()) + list(mod.mask_fc.parameters())
    got = torch.autograd.grad(out, [xa] + params, gy)
    want = torch.autograd.grad(expected, [xb] + params, gy)
    for name, a, e in zip(["input"] + [f"param {i}" for i in range(len(params))], got, want):
        torch.testing.assert_close(a, e, msg=lambda s: f"{name}: {s}")
    assert got[-1].abs().sum() > 0  # the mask branch learns
    # given offset / mask are used as they are; a wrong mask shape is an error naming it
    off = torch.zeros(rois.shape[0], 2, 2, 3, dtype=x.dtype, device=device)
    torch.testing.assert_close(mod(x, rois, off, torch.ones(rois.shape[0], 1, 2, 3, dtype=x.dtype, device=device)),
                               ref)
    with pytest.raises(ValueError, match="mask must be a Tensor of shape"):
        mod(x, rois, off, torch.ones(rois.shape[0], 2, 3, dtype=x.dtype, device=device))
