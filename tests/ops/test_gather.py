"""Bilinear gather: values, both gradients, layouts, dtypes, boundaries, NaN positions, custom-op
machinery (opcheck, torch.compile, FLOP counting, determinism, workspace), errors.

Reference: ``_ref_gather`` below, plain PyTorch that reads the four corners of every sample by
explicit indexing (its gradients come from autograd). Shapes stay tiny: on CPU the kernels run in
Triton's interpreter.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from _helpers import ref_bilinear_sample
from layers import bilinear_gather
from layers.backend import use_backend

NAN, INF = float("nan"), float("inf")
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _ref_gather(x, pos):
    """x (N, C, H, W), pos (N, *, 2) as (y, x) -> (N, C, *); corners outside the image give 0. A
    NaN coordinate: every corner outside (index -2) and a NaN weight, so the sample is NaN and,
    through torch.where, the image gets no gradient from it."""
    N, C = x.shape[:2]
    p = pos.reshape(N, -1, 2)
    return ref_bilinear_sample(x, p[..., 0], p[..., 1]).reshape(N, C, *pos.shape[1:-1])


def _assert_close(actual, expected, rtol, what=""):
    """Max error relative to the expected tensor's scale (robust for low-precision dtypes)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale + rtol, f"{what}: max err {err:.3g} (scale {scale:.3g})"


class TestBilinearGather:
    def test_boundary_rule(self, device):
        H, W = 3, 4
        x = torch.arange(1.0, 1 + 2 * H * W, dtype=torch.float64, device=device).reshape(1, 2, H, W)
        pts = [(0, 0), (2, 3), (1, 2), (-1, 0), (0, -1), (H, 1), (1, W), (-1.5, 1), (1e10, 1), (1, -1e10),
               (-0.5, 0), (H - 0.5, W - 0.5), (-0.999, 1), (1.5, 2.25)]
        pos = torch.tensor([pts], dtype=torch.float64, device=device)
        out = bilinear_gather(x, pos)
        assert out.shape == (1, 2, len(pts))
        torch.testing.assert_close(out[0, :, 0], x[0, :, 0, 0])
        torch.testing.assert_close(out[0, :, 1], x[0, :, 2, 3])
        torch.testing.assert_close(out[0, :, 2], x[0, :, 1, 2])
        assert (out[0, :, 3:10] == 0).all()  # y <= -1, x <= -1, y >= H, x >= W, far away
        torch.testing.assert_close(out[0, :, 10], 0.5 * x[0, :, 0, 0])
        torch.testing.assert_close(out[0, :, 11], 0.25 * x[0, :, H - 1, W - 1])
        torch.testing.assert_close(out, _ref_gather(x, pos))

    @pytest.mark.parametrize("channels_last", [False, True])
    def test_gradients(self, device, channels_last):
        x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pos = torch.rand(2, 3, 2, 2, dtype=torch.float64, device=device) * torch.tensor([6.0, 7.0], device=device) - 1.0
        pos[0, 0, 0] = torch.tensor([2.0, 3.0])  # exactly on a pixel
        pos[0, 0, 1] = torch.tensor([-1.0, 1.5])  # on the border
        ins = [x.clone().requires_grad_(), pos.clone().requires_grad_()]
        ref_ins = [x.clone().requires_grad_(), pos.clone().requires_grad_()]
        out, ref = bilinear_gather(*ins), _ref_gather(*ref_ins)
        assert out.shape == (2, 3, 3, 2)
        torch.testing.assert_close(out, ref)
        gy = torch.randn_like(out)
        for a, e in zip(torch.autograd.grad(out, ins, gy), torch.autograd.grad(ref, ref_ins, gy)):
            torch.testing.assert_close(a, e)
        pos_gc = (torch.rand(1, 4, 2, dtype=torch.float64, device=device) * 5 - 1).requires_grad_()
        assert torch.autograd.gradcheck(bilinear_gather, (x[:1].detach().requires_grad_(), pos_gc), fast_mode=True)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
    def test_dtypes(self, device, dtype):
        x = torch.randn(1, 3, 4, 4, device=device).to(dtype)
        pos = (torch.rand(1, 6, 2, device=device) * 5 - 1).to(dtype)
        ins = [x.clone().requires_grad_(), pos.clone().requires_grad_()]
        out = bilinear_gather(*ins)
        assert out.dtype == dtype
        ref_ins = [x.double().requires_grad_(), pos.double().requires_grad_()]
        ref = _ref_gather(*ref_ins)
        gy = torch.randn_like(ref)
        _assert_close(out, ref, TOL[dtype], what="gather output")
        for a, e in zip(torch.autograd.grad(out, ins, gy.to(dtype)), torch.autograd.grad(ref, ref_ins, gy)):
            _assert_close(a, e, TOL[dtype] * 2, what="gather grad")
        with use_backend("reference"):
            _assert_close(bilinear_gather(x, pos), ref, TOL[dtype], what="reference backend")

    def test_empty(self, device):
        x = torch.randn(0, 2, 3, 3, device=device, requires_grad=True)
        out = bilinear_gather(x, torch.zeros(0, 4, 2, device=device))
        assert out.shape == (0, 2, 4)
        out.sum().backward()
        assert x.grad.shape == x.shape

    def test_nan_positions(self, device):
        x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device)
        pos = torch.rand(2, 7, 2, dtype=torch.float64, device=device) * torch.tensor([5.0, 6.0], device=device) - 1.0
        pos[0, 0, 0] = NAN
        pos[0, 1, 1] = NAN
        pos[1, 2] = torch.tensor([NAN, NAN])
        pos[1, 3] = torch.tensor([NAN, 1e6])
        pos[1, 4] = torch.tensor([INF, NAN])
        pos[0, 5] = torch.tensor([-INF, 2.0])
        ref_ins = [x.clone().requires_grad_(), pos.clone().requires_grad_()]
        ref = _ref_gather(*ref_ins)
        gy = torch.randn_like(ref)
        g_ref = torch.autograd.grad(ref, ref_ins, gy)
        assert ref[:, :, :5].isnan().sum() == 5 * 3 and not ref[:, :, 5:].isnan().any()
        for backend in ("auto", "reference"):
            ins = [x.clone().requires_grad_(), pos.clone().requires_grad_()]
            with use_backend(backend):
                out = bilinear_gather(*ins)
            torch.testing.assert_close(out, ref, equal_nan=True)
            for name, a, e in zip(("grad input", "grad positions"), torch.autograd.grad(out, ins, gy), g_ref):
                torch.testing.assert_close(a, e, equal_nan=True, msg=lambda s: f"{backend} {name}: {s}")

    def test_argument_errors(self, device):
        x = torch.randn(2, 4, 5, 5, device=device)
        bilinear_gather(x, torch.zeros(2, 3, 2, device=device))
        with pytest.raises(ValueError, match="positions"):
            bilinear_gather(x, torch.zeros(2, 3, 3, device=device))
        with pytest.raises(ValueError, match="positions"):
            bilinear_gather(x, torch.zeros(1, 3, 2, device=device))
        with pytest.raises(ValueError, match="positions dtype"):
            bilinear_gather(x, torch.zeros(2, 3, 2, device=device, dtype=torch.float64))
        with pytest.raises(ValueError, match="input must be a 4-D"):
            bilinear_gather(x[0], torch.zeros(2, 3, 2, device=device))

    # ----------------------------------------------------------------------- op machinery
    def test_opcheck(self, device):
        x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device)
        pos = torch.rand(1, 5, 2, dtype=x.dtype, device=device) * 4 - 1
        torch.library.opcheck(torch.ops.convlab.bilinear_gather_backward.default,
                              (torch.randn(1, 2, 5, dtype=x.dtype, device=device), x, pos))
        torch.library.opcheck(torch.ops.convlab.bilinear_gather.default, (x.requires_grad_(), pos.requires_grad_()))

    @pytest.mark.slow
    def test_torch_compile(self, device):
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64, device=device)
        pos = torch.rand(1, 3, 2, dtype=x.dtype, device=device) * 4 - 1
        fn = lambda x, pos: bilinear_gather(x, pos).square().sum()
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
        ins = [t.detach().clone().requires_grad_() for t in (x, pos)]
        ref_ins = [t.detach().clone().requires_grad_() for t in (x, pos)]
        out, ref = compiled(*ins), fn(*ref_ins)
        torch.testing.assert_close(out, ref)
        out.backward()
        ref.backward()
        for a, e in zip(ins, ref_ins):
            torch.testing.assert_close(a.grad, e.grad)

    def test_flop_counter(self, device):
        x = torch.randn(1, 2, 4, 4, device=device, requires_grad=True)
        pos = torch.zeros(1, 3, 2, device=device, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            y = bilinear_gather(x, pos)
        assert counter.get_total_flops() == 7 * 2 * 3
        with FlopCounterMode(display=False) as counter:
            y.sum().backward()
        assert counter.get_total_flops() == 16 * 2 * 3

    def test_deterministic_algorithms(self, device):
        """grad input (atomic adds) raises under use_deterministic_algorithms(True), warns with
        warn_only=True; the forward runs."""
        x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
        pos = (torch.rand(1, 3, 2, dtype=x.dtype, device=device) * 3 - 1).requires_grad_()
        expected = torch.autograd.grad(bilinear_gather(x, pos).sum(), [x, pos])
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        try:
            torch.use_deterministic_algorithms(True)
            z = bilinear_gather(x, pos).sum()
            with pytest.raises(RuntimeError, match="convlab::bilinear_gather_backward .*does not have a deterministic"):
                torch.autograd.grad(z, [x], retain_graph=True)
            torch.use_deterministic_algorithms(True, warn_only=True)
            with pytest.warns(UserWarning, match="bilinear_gather_backward"):
                got = torch.autograd.grad(z, [x, pos])
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e)

    def test_backward_into_dirty_workspace(self, device, monkeypatch):
        """The launcher zeroes the atomic workspace itself: a NaN-filled allocation changes nothing."""
        import kernels._common as common

        x = torch.randn(2, 4, 4, 4, dtype=torch.float64, device=device)
        pos = torch.rand(2, 5, 2, dtype=x.dtype, device=device) * 4 - 1

        def grads():
            ins = [t.clone().requires_grad_() for t in (x, pos)]
            return torch.autograd.grad(bilinear_gather(*ins).square().sum(), ins)

        expected = grads()
        monkeypatch.setattr(common, "empty_workspace", lambda like, dtype: torch.full_like(like, NAN, dtype=dtype))
        for a, e in zip(grads(), expected):
            torch.testing.assert_close(a, e)
