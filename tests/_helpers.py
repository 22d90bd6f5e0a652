"""Shared test helpers: per-dtype tolerances, a comparison that states them, the exact-fp32 switch,
an op-against-reference check of the output and every gradient, the torch.compile, FLOP-count and
64-bit-index checks the op families share, and the convolution variants as the configs define them
(conf/conv/*.yaml).

Imported as ``from _helpers import ...`` (tests/conftest.py puts this folder on sys.path, so test
modules in tests/ops/ and tests/experiments/ share it).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

CONF = Path(__file__).resolve().parents[1] / "conf"

#: max |ours - reference| / max(1, max |reference|) per dtype.
TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str,
                 tol: dict | None = None) -> None:
    """Shape, dtype and max error relative to the reference's magnitude, within ``TOL[dtype]``; a
    failure names the worst element and both values."""
    tol = TOL if tol is None else tol
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    if expected.numel() == 0:
        return
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs()
    worst = err.argmax().item()
    assert err.max().item() <= tol[dtype] * scale, (
        f"{what}: max error {err.max().item():.3g} > {tol[dtype] * scale:.3g} at flat index {worst} "
        f"(ours {actual.flatten()[worst].item():.6g}, reference {expected.flatten()[worst].item():.6g})")


def check_against_reference(op, reference, inputs, dtype: torch.dtype, grad_output_format=None) -> torch.Tensor:
    """``op(*inputs)`` against ``reference`` run on float64 copies of the same (rounded) inputs: the
    output, then, after one backward pass of the same random grad_output, the gradient of every
    input, each within ``TOL[dtype]`` (:func:`assert_close`).

    inputs: ``(input, weight, bias)`` at ``dtype``, in any layout; a None bias is passed as None and
    has no gradient to compare. grad_output is ``randn_like`` the reference's output, made
    contiguous in ``grad_output_format`` when given (e.g. ``torch.channels_last``). Returns op's
    output, for the caller's layout checks.
    """
    ours = [None if t is None else t.detach().requires_grad_() for t in inputs]
    refs = [None if t is None else t.detach().double().requires_grad_() for t in inputs]
    y = op(*ours)
    ref = reference(*refs)
    assert_close(y, ref, dtype, "output")
    gy = torch.randn_like(ref).to(dtype)
    if grad_output_format is not None:
        gy = gy.contiguous(memory_format=grad_output_format)
    y.backward(gy)
    ref.backward(gy.double())
    for name, t, r in zip(("input", "weight", "bias"), ours, refs):
        if t is not None:
            assert_close(t.grad, r.grad, dtype, f"grad {name}")
    return y


def index64_launches(monkeypatch, module) -> list[bool]:
    """Make ``module``'s launchers pick their 64-bit index build (as for tensors past 2**31 elements:
    ``needs_int64`` says yes) and record each launch's ``IDX64`` flag into the returned list; the
    kernels still run."""
    calls = []
    real_launch = module.launch

    def spy(tuned, plain, grid, cfg, *args, **kw):
        calls.append(kw["IDX64"])
        return real_launch(tuned, plain, grid, cfg, *args, **kw)

    monkeypatch.setattr(module, "needs_int64", lambda *t: True)
    monkeypatch.setattr(module, "launch", spy)
    return calls


def check_compiled_against_reference(f, x: torch.Tensor) -> None:
    """``torch.compile(f, fullgraph=True)`` (a graph break raises) against ``f`` under the reference
    backend: the scalar ``f(x)`` and x's gradient. x: a leaf that requires grad. Inductor needs CUDA
    for user Triton kernels, so off CUDA the graph runs with ``aot_eager``."""
    import layers  # here, not at the top: the experiments' tests import this file too

    torch._dynamo.reset()
    backend = "inductor" if x.device.type == "cuda" else "aot_eager"
    out = torch.compile(f, fullgraph=True, backend=backend)(x)
    out.backward()
    x2 = x.detach().requires_grad_()
    with layers.use_backend("reference"):
        ref = f(x2)
    ref.backward()
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-4)


def count_flops(fn, *args, backward: bool = False) -> int:
    """The FLOPs ``FlopCounterMode`` counts in ``fn(*args)`` and, with ``backward``, in the backward
    pass of its sum."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        y = fn(*args)
        if backward:
            y.sum().backward()
    return counter.get_total_flops()


@contextlib.contextmanager
def no_tf32():
    """Full-fp32 comparisons: F.conv2d and the fp32 GEMMs follow cudnn.allow_tf32 (on by default),
    the deformable kernels follow cuda.matmul.allow_tf32; switch both off, restore on exit."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def ref_bilinear_sample(img: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch bilinear sampling, torchvision deform_conv2d's rule: img (B, C, H, W); py, px (B, L)
    pixel coordinates -> (B, C, L); corners outside the image give 0. A NaN coordinate: every corner
    outside (index -2, a defined integer) and a NaN weight, so the sample is NaN and, through
    torch.where, the image gets no gradient from it. Differentiable in img, py and px."""
    B, C, H, W = img.shape
    py, px = py.clamp(-2, H + 1), px.clamp(-2, W + 1)  # far samples: all corners outside either way
    y0, x0 = torch.floor(py.detach()).nan_to_num(-2.0), torch.floor(px.detach()).nan_to_num(-2.0)
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    flat = img.reshape(B, C, H * W)
    out = torch.zeros(B, C, py.shape[1], dtype=img.dtype, device=img.device)
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1))[:, None, :].expand(B, C, -1)
        out = out + torch.where(inside[:, None, :], torch.gather(flat, 2, idx), 0.0) * wgt[:, None, :]
    return out


def conv_configs() -> dict[str, dict]:
    """``{config name: {key: value}}`` for every conf/conv/*.yaml.

    A tiny reader for their flat ``key: value`` form, so kernel tests do not need omegaconf/PyYAML
    (absent on the device image); anything else in those files is an error here.
    """
    out = {}
    for path in sorted((CONF / "conv").glob("*.yaml")):
        entries = {}
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = line.partition(":")
            assert sep and key.strip().isidentifier(), f"{path}: not a flat 'key: value' line: {line!r}"
            value = value.strip()
            entries[key.strip()] = (None if value in ("null", "~", "") else int(value) if value.lstrip("-").isdigit()
                                    else {"true": True, "false": False}.get(value, value))
        out[path.stem] = entries
    return out


def conv_variants() -> list[str]:
    """The variant names the configs use (sorted)."""
    return sorted({cfg["variant"] for cfg in conv_configs().values()})
