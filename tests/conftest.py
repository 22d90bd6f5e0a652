"""Test setup: without a GPU the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is imported (it decides what @triton.jit
builds), so this runs before any project import.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_report_header(config):
    mode = "CUDA" if DEVICE == "cuda" else f"CPU (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})"
    return f"convlab kernels run on: {mode}"
