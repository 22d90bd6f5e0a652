"""TF32 policy: each kernel follows the flag of the op it replaces (issue 13 item 5).

Convolutions follow ``torch.backends.cudnn.allow_tf32`` (as F.conv2d); deformable convolution
follows ``torch.backends.cuda.matmul.allow_tf32`` (torchvision's deform_conv2d is an addmm).
The interpreter computes exact fp32 either way, so the flag is checked where it matters: the
ALLOW_TF32 constexpr and the config table the launcher picks. On a GPU the numerical tests
below run compiled, with tolerances that hold for TF32.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import conv2d, deform, gather
from kernels.inspect import _captured_launches

CONV = ("_conv2d_fwd_kernel", "_conv2d_bwd_input_kernel", "_conv2d_bwd_weight_kernel")
DEFORM = ("_deform_fwd_kernel", "_deform_bwd_data_kernel", "_deform_bwd_weight_kernel")


@pytest.fixture
def flags():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _launched(dtype=torch.float32):
    """{kernel name: ALLOW_TF32 passed} for one call of every conv and deform launcher."""
    x = torch.zeros(1, 4, 6, 6, dtype=dtype)
    w = torch.zeros(4, 4, 3, 3, dtype=dtype)
    off = torch.zeros(1, 18, 6, 6, dtype=dtype)
    records = []
    with _captured_launches(records):
        y = conv2d.conv2d_forward(x, w, None, 1, 1, 1, 1)
        conv2d.conv2d_input_grad(y, w, x.shape, 1, 1, 1, 1)
        conv2d.conv2d_weight_grad(x, y, w.shape, 1, 1, 1, 1)
        deform.deform_conv2d_forward(x, off, w, None, None, (1, 1), (1, 1), (1, 1))
        deform.deform_conv2d_data_grad(y, x, off, w, None, (1, 1), (1, 1), (1, 1))
        deform.deform_conv2d_weight_grad(y, x, off, None, w.shape, (1, 1), (1, 1), (1, 1))
    return {fn.__name__: kwargs["ALLOW_TF32"] for fn, _, kwargs in records}


@pytest.mark.parametrize("cudnn", [True, False])
@pytest.mark.parametrize("matmul", [True, False])
def test_each_kernel_follows_its_peers_flag(flags, cudnn, matmul):
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.backends.cuda.matmul.allow_tf32 = matmul
    got = _launched()
    assert {k: got[k] for k in CONV} == dict.fromkeys(CONV, cudnn)
    assert {k: got[k] for k in DEFORM} == dict.fromkeys(DEFORM, matmul)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_tf32_is_fp32_only(flags, dtype):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    assert not any(_launched(dtype).values())


def test_fp32_without_tf32_uses_its_own_configs(flags):
    """TF32 off runs on CUDA-core FMAs: the launcher must pick the "fp32_ieee" table, whose
    tiles do not spill (kernels.inspect checks every build of it)."""
    torch.backends.cudnn.allow_tf32 = False
    pick = conv2d.config_class
    assert pick(conv2d._fwd_tuned, torch.float32, conv2d.allow_tf32(torch.float32)) == "fp32_ieee"
    assert conv2d._fwd_tuned["fp32_ieee"].configs == conv2d.GEMM_CONFIGS["fp32_ieee"]
    torch.backends.cudnn.allow_tf32 = True
    assert pick(conv2d._fwd_tuned, torch.float32, conv2d.allow_tf32(torch.float32)) == "fp32"
    torch.backends.cuda.matmul.allow_tf32 = False
    assert pick(deform._fwd_tuned, torch.float32, deform.allow_tf32(torch.float32, "matmul")) == "fp32_ieee"
    # no dot product, no TF32 table: the dtype's own; 64-bit builds take the "_i64" table
    assert pick(gather._gather_fwd_tuned, torch.float32) == "fp32"
    assert pick(conv2d._fwd_tuned, torch.float16, idx64=True) == "fp16_i64"


@pytest.mark.parametrize("tf32", [True, False])
def test_conv_and_deform_match_peers_under_both_settings(flags, device, tf32):
    """Outputs against F.conv2d / a zero-offset deform (= conv2d) under the same flags; the
    tolerance is TF32's (10-bit mantissa) when TF32 is on, tight otherwise."""
    from layers import conv2d as conv_op, deform_conv2d

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    x = torch.randn(2, 8, 7, 7, device=device)
    w = torch.randn(6, 8, 3, 3, device=device)
    tol = dict(atol=2e-2, rtol=2e-2) if tf32 else dict(atol=1e-4, rtol=1e-4)
    ref = F.conv2d(x, w, padding=1)
    torch.testing.assert_close(conv_op(x, w, padding=1), ref, **tol)
    off = torch.zeros(2, 18, 7, 7, device=device)
    torch.testing.assert_close(deform_conv2d(x, off, w, padding=1), ref, **tol)


def test_autotune_keys_name_every_build_constexpr():
    """A tuning found for one build (bias / mask / offset / 64-bit index) is never reused for
    another: every autotuner's key names each such constexpr its kernel has, and TF32 on/off
    builds tune in separate tables."""
    from kernels import depthwise, roi

    tables = [conv2d._fwd_tuned, conv2d._bwd_input_tuned, conv2d._bwd_weight_tuned, deform._fwd_tuned,
              deform._bwd_weight_tuned, deform._bwd_data_tuned, gather._gather_fwd_tuned, gather._gather_bwd_tuned,
              depthwise._fwd_tuned, depthwise._bwd_input_tuned, depthwise._bwd_weight_tuned, roi._fwd_tuned,
              roi._bwd_tuned, roi._bwd_off_tuned]
    for table in tables:
        for tuner in table.values():
            names = tuner.fn.arg_names
            for c in ("HAS_BIAS", "HAS_MASK", "HAS_OFFSET", "IDX64"):
                assert (c in tuner.keys) == (c in names), (tuner.fn.__name__, c, tuner.keys)
    assert conv2d._fwd_tuned["fp32"] is not conv2d._fwd_tuned["fp32_ieee"]
