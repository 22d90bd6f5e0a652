"""Test setup: without a GPU the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is imported (it decides what @triton.jit
builds), so this runs before any project import.
"""
import os
import sys

import torch

# tests/_helpers.py is shared by the test folders below this one.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed_and_backend():
    """Every test starts from seed 0 and leaves the global backend as it found it (a training run
    sets it from its config, which would otherwise leak into later tests on the same worker)."""
    from layers import get_backend, set_backend

    torch.manual_seed(0)
    before = get_backend()
    yield
    set_backend(before)


def pytest_report_header(config):
    mode = "CUDA" if DEVICE == "cuda" else f"CPU (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})"
    return f"convlab kernels run on: {mode}"
