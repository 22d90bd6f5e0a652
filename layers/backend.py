"""Which implementation the ops run: ``"triton"``, ``"reference"`` (plain PyTorch) or ``"auto"``.

``auto`` (the default) picks Triton for CUDA tensors, Triton's CPU interpreter for CPU
tensors when ``TRITON_INTERPRET=1`` was set before import, and the PyTorch reference
otherwise. Choose with the ``CONVLAB_BACKEND`` environment variable (read at import; it is
also the default of ``backend`` in conf/train.yaml), ``set_backend``, or the ``use_backend``
context manager.
"""
from __future__ import annotations

import contextlib
import os

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "CONVLAB_BACKEND"


def check_backend(name: str, what: str = "backend") -> str:
    """``name`` if it is one of BACKENDS, else a ValueError naming ``what`` (e.g. "CONVLAB_BACKEND")."""
    if name not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name


_backend = check_backend(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


def interpreting() -> bool:
    """True when the Triton kernels were built for the CPU interpreter."""
    from kernels._common import INTERPRET

    return INTERPRET


def set_backend(name: str) -> None:
    global _backend
    _backend = check_backend(name)


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily run the ops on ``name``: ``with use_backend("reference"): ...``."""
    global _backend
    previous, _backend = _backend, check_backend(name)
    try:
        yield
    finally:
        _backend = previous


def resolve(device: torch.device) -> str:
    """The implementation that runs for tensors on ``device``: "triton" or "reference"."""
    triton_ok = device.type == "cuda" or (device.type == "cpu" and interpreting())
    if _backend == "reference":
        return "reference"
    if _backend == "triton":
        if not triton_ok:
            raise RuntimeError(
                f"backend 'triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
                f"importing convlab; got {device.type} tensors. Use backend 'auto' or 'reference'.")
        return "triton"
    return "triton" if triton_ok else "reference"


def conv2d_kernel(in_channels: int, weight_shape, groups: int) -> str:
    """Which Triton kernel family computes a conv2d (and both of its gradients): "depthwise"
    (kernels.depthwise: one input channel per group, any channel multiplier, i.e. groups ==
    in_channels and weight (C_in * multiplier, 1, KH, KW)) or "gemm" (kernels.conv2d, the implicit
    GEMM, which packs other narrow groups itself). The one place this is decided: the custom ops
    and the benchmark suite ask it. ``weight_shape`` is conv2d's (C_out, C_in / groups, KH, KW)."""
    return "depthwise" if weight_shape[1] == 1 and in_channels == groups else "gemm"
