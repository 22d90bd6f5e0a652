"""Shared test helpers: per-dtype tolerances, a comparison that states them, the exact-fp32 switch,
and the convolution variants as the configs define them (conf/conv/*.yaml).

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
    """Shape, dtype and max error relative to the reference's magnitude, within ``TOL[dtype]``."""
    tol = TOL if tol is None else tol
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert err <= tol[dtype] * scale, f"{what}: max error {err:.3g} > {tol[dtype] * scale:.3g}"


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
