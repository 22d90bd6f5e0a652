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


#: the backend a test starts from: what the environment selects (CONVLAB_BACKEND, else "auto").
_BASELINE_BACKEND = None


@pytest.fixture(autouse=True)
def _seed_and_backend():
    """Every test starts from seed 0 and from the baseline backend, and leaves it so. A training run
    sets the global backend from its config; without the reset at both ends it would leak into later
    tests on the same worker, even from a module-scoped fixture (which runs before this one), and the
    kernel tests would silently compare the reference with itself."""
    global _BASELINE_BACKEND
    from layers import get_backend, set_backend

    if _BASELINE_BACKEND is None:
        from layers.backend import ENV_VAR, check_backend

        _BASELINE_BACKEND = check_backend(os.environ.get(ENV_VAR, "auto"), ENV_VAR)
    torch.manual_seed(0)
    set_backend(_BASELINE_BACKEND)
    yield
    set_backend(_BASELINE_BACKEND)


def pytest_report_header(config):
    mode = "CUDA" if DEVICE == "cuda" else f"CPU (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})"
    return f"convlab kernels run on: {mode}"
