"""Which implementation the ops run: ``"triton"``, ``"reference"`` (plain PyTorch) or ``"auto"``.

``auto`` (the default) picks Triton for CUDA tensors, Triton's CPU interpreter for CPU
tensors when ``TRITON_INTERPRET=1`` was set before import, and the PyTorch reference
otherwise. Choose with the ``CONVLAB_BACKEND`` environment variable, ``set_backend``,
or the ``use_backend`` context manager.
"""
from __future__ import annotations

import contextlib
import os

import torch

BACKENDS = ("auto", "triton", "reference")


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


_backend = _check(os.environ.get("CONVLAB_BACKEND", "auto"))


def interpreting() -> bool:
    """True when the Triton kernels were built for the CPU interpreter."""
    from kernels._common import INTERPRET

    return INTERPRET


def set_backend(name: str) -> None:
    global _backend
    _backend = _check(name)


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """Temporarily run the ops on ``name``: ``with use_backend("reference"): ...``."""
    global _backend
    previous, _backend = _backend, _check(name)
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
