"""Ahead-of-time compile check: every kernel, shipped autotune config and dtype compiles for
sm_80 and sm_90 (no GPU needed); default configs do not spill; GEMM kernels use tensor cores
for fp16/bf16. The interpreter accepts code the GPU compiler rejects, hence this test."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.aot


def _inspect(tmp_path, *flags):
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.inspect", "--json", str(out), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_all_kernels_compile_for_sm80_sm90(tmp_path):
    proc, rows = _inspect(tmp_path)
    errors = [(r["kernel"], r["dtype"], r["arch"], r["config"], r["error"]) for r in rows if not r["ok"]]
    assert not errors, errors
    kernels = {r["kernel"] for r in rows}
    assert {"conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight", "depthwise_fwd", "depthwise_bwd_input",
            "depthwise_bwd_weight"} <= kernels
    for r in rows:
        assert r["registers"] > 0 and r["arch"] in (80, 90)
    defaults = [r for r in rows if r["default"]]
    spilling = [(r["kernel"], r["dtype"], r["arch"], r["spill_bytes"]) for r in defaults if r["spill_bytes"] > 0]
    assert not spilling, spilling
    for r in defaults:
        if r["gemm"] and r["dtype"] in ("fp16", "bf16"):
            assert r["tensor_cores"] in ("mma", "wgmma"), r
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_index64_variants_compile(tmp_path):
    _, rows = _inspect(tmp_path, "--index64", "--default-only")
    assert rows and {r["kernel"] for r in rows if r["index64"]} >= {"conv2d_fwd", "depthwise_fwd"}
    errors = [(r["kernel"], r["dtype"], r["arch"], r["error"]) for r in rows if not r["ok"]]
    assert not errors, errors
