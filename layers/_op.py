"""Registering convlab's custom ops.

On GPU the ops are ``torch.library.triton_op``s: torch.compile sees through them to the
Triton kernels (no graph break, Inductor can fuse around them). Under Triton's CPU
interpreter a kernel is a plain Python function that tracing cannot record, so there the
same function is registered as an opaque ``custom_op`` whose fake implementation is the
function itself (launches are skipped on fake tensors; outputs are allocated as usual).
"""
from __future__ import annotations

import torch
from torch.library import triton_op

from kernels._common import INTERPRET


def convlab_op(name: str):
    """Decorator: register ``fn`` as the custom op ``name`` (e.g. "convlab::conv2d")."""

    def register(fn):
        if not INTERPRET:
            return triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op

    return register
