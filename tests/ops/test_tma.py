"""The conv2d forward's TMA variant (sm_90 only: the packed weight read through a host-side tensor
descriptor, USE_TMA): forced with ``kernels._common.force_tma`` it matches F.conv2d (fp32 / fp16 /
bf16, groups, stride, NCHW and channels_last, K blocks that run past a group's channels); without
it, and wherever it does not apply, launches keep the pointer path and its configs.

Under the interpreter the forced launch runs the descriptor loads on CPU tensors; on an sm_90 GPU
it runs compiled with only the TMA configs. ``python -m kernels.aot`` compiles its sm_90 builds.
"""
import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_close
from kernels import _common
from kernels import conv2d as gemm_kernels

needs_descriptors = pytest.mark.skipif(not _common.HOST_TMA, reason="triton has no host tensor descriptors")


def _forcible(device: str) -> bool:
    return device != "cuda" or torch.cuda.get_device_capability()[0] == 9


@pytest.fixture
def launches(monkeypatch):
    """The forward's launches, recorded (interpreter config, kernel arguments) and then run."""
    calls = []
    real = gemm_kernels.launch

    def spy(tuned, plain, grid, icfg, *args, **kwargs):
        calls.append((tuned, icfg, args, kwargs))
        return real(tuned, plain, grid, icfg, *args, **kwargs)

    monkeypatch.setattr(gemm_kernels, "launch", spy)
    for tuner in gemm_kernels._fwd_tma_tuned.values():  # a cached pointer config would hide the TMA ones
        tuner.cache.clear()
    return calls


def _is_descriptor(a) -> bool:
    return type(a).__name__ == "TensorDescriptor"


# (N, C_in, C_out, H, W, kernel, stride, padding, groups): K steps past a group's channels (20 per
# group: the second 16-deep step reads 4 rows, the rest must come back zero, not the next tap's),
# column tiles past a group's 18 channels, stride 2, 1x1, a narrow-group pack
CASES = [
    (2, 4, 6, 7, 7, 3, 1, 1, 1),
    (1, 40, 36, 6, 5, 3, 2, 1, 2),
    (2, 8, 8, 5, 6, 1, 1, 0, 2),
    (1, 12, 12, 5, 5, 3, 1, 1, 3),
]


@needs_descriptors
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-C{}-{}-{}x{}-k{}-s{}-p{}-g{}".format(*c))
def test_forced_tma_forward_matches_conv2d(device, launches, case, dtype, layout):
    if not _forcible(device):
        pytest.skip("the TMA variant runs on sm_90 only")
    N, C_in, C_out, H, W, k, s, p, g = case
    x = torch.randn(N, C_in, H, W, device=device).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(C_out, C_in // g, k, k, device=device).to(dtype)
    b = torch.randn(C_out, device=device).to(dtype)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # fp32's TMA configs are the TF32 tensor-core ones
    try:
        with _common.force_tma():
            y = gemm_kernels.conv2d_forward(x, w, b, s, p, 1, g)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    ref = F.conv2d(x.double(), w.double(), b.double(), s, p, 1, g)
    # TF32 on a GPU rounds the operands to 10 mantissa bits: bf16's tolerance; the interpreter is exact
    tol = {torch.float32: 4e-2 if device == "cuda" else 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}
    assert_close(y, ref, dtype, "output", tol=tol)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    # the TMA variant ran: its tuner, a descriptor of the packed weight, USE_TMA under the interpreter
    (tuned, icfg, args, kwargs), = launches
    cls = _common.config_class(gemm_kernels._fwd_tuned, dtype, True, False)
    assert tuned is gemm_kernels._fwd_tma_tuned[cls] and "USE_TMA" not in kwargs
    names = gemm_kernels._conv2d_fwd_kernel.arg_names
    desc, wp = args[names.index("w_desc")], args[names.index("w_ptr")]
    assert _is_descriptor(desc) and desc.base.data_ptr() == wp.data_ptr()
    assert list(desc.shape) == [wp.shape[0] * wp.shape[1] * wp.shape[2], wp.shape[3], wp.shape[4]]
    if _common.INTERPRET:
        assert icfg["USE_TMA"] is True
        assert list(desc.block_shape) == [1, icfg["BLOCK_K"], icfg["BLOCK_N"]]


@needs_descriptors
def test_forced_tma_reads_the_weight_through_the_descriptor(device, launches, monkeypatch):
    """The TMA variant's weight tiles come from the descriptor, not from w_ptr: a descriptor of a
    zeroed copy of the packed weight leaves only the bias (a kernel that ignored it would not)."""
    if not _forcible(device):
        pytest.skip("the TMA variant runs on sm_90 only")
    from triton.tools.tensor_descriptor import TensorDescriptor

    real = gemm_kernels._weight_descriptor

    def zeroed(wp, *a):
        d = real(wp, *a)
        return TensorDescriptor(torch.zeros_like(d.base), d.shape, d.strides, d.block_shape)

    monkeypatch.setattr(gemm_kernels, "_weight_descriptor", zeroed)
    x = torch.randn(1, 16, 5, 5, device=device, dtype=torch.float16)
    w = torch.randn(16, 16, 3, 3, device=device, dtype=torch.float16)
    b = torch.randn(16, device=device, dtype=torch.float16)
    with _common.force_tma():
        y = gemm_kernels.conv2d_forward(x, w, b, 1, 1, 1, 1)
    assert torch.equal(y, b.view(1, 16, 1, 1).expand_as(y))


def test_pointer_path_by_default(device, launches):
    """Without force_tma (CPU, interpreter, or a GPU other than sm_90) the forward passes no
    descriptor, says USE_TMA=False and tunes over the pointer configs (GEMM_CONFIGS, unchanged)."""
    if device == "cuda" and torch.cuda.get_device_capability()[0] == 9:
        pytest.skip("sm_90 passes a descriptor by default")
    x = torch.randn(1, 16, 5, 5, device=device, dtype=torch.float16)
    w = torch.randn(16, 16, 3, 3, device=device, dtype=torch.float16)
    gemm_kernels.conv2d_forward(x, w, None, 1, 1, 1, 1)
    (tuned, icfg, args, kwargs), = launches
    assert tuned is gemm_kernels._fwd_tuned["fp16"] and kwargs["USE_TMA"] is False and "USE_TMA" not in icfg
    assert args[gemm_kernels._conv2d_fwd_kernel.arg_names.index("w_desc")] is None


@needs_descriptors
def test_descriptor_only_where_tma_applies(monkeypatch):
    """No descriptor (so no TMA config) for fp64, TF32-off fp32, the 64-bit index build, a weight
    whose base is not 16-byte aligned, or traced (fake) tensors; one for fp16 / bf16 / TF32 fp32."""
    wp16 = torch.zeros(1, 3, 3, 16, 16, dtype=torch.float16)
    with _common.force_tma():
        assert _is_descriptor(gemm_kernels._weight_descriptor(wp16, "fp16", 16, 16))
        assert _is_descriptor(gemm_kernels._weight_descriptor(wp16.float(), "fp32", 16, 16))
        for cls in ("fp64", "fp32_ieee", "fp16_i64", "fp32_i64"):
            assert gemm_kernels._weight_descriptor(wp16, cls, 16, 16) is None, cls
        unaligned = torch.zeros(1 + wp16.numel(), dtype=torch.float16)[1:].view(wp16.shape)
        assert gemm_kernels._weight_descriptor(unaligned, "fp16", 16, 16) is None
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode() as mode:
            fake = mode.from_tensor(wp16)
            assert gemm_kernels._weight_descriptor(fake, "fp16", 16, 16) is None
    assert gemm_kernels._weight_descriptor(wp16, "fp16", 16, 16) is None  # not forced: no sm_90 here


@needs_descriptors
def test_tma_configs_pruned_without_descriptor(monkeypatch):
    """The TMA tuner's table starts with the pointer configs (the default stays the default); TMA
    configs survive pruning only with a descriptor whose block is theirs (cut to the channels)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    monkeypatch.setattr(_common, "INTERPRET", False)  # the GPU's blocks, not INTERPRET_CONFIG's
    for cls, table in gemm_kernels.TMA_GEMM_CONFIGS.items():
        n_ptr = len(gemm_kernels.GEMM_CONFIGS[cls])
        assert [c.kwargs["USE_TMA"] for c in table] == [False] * n_ptr + [True] * (len(table) - n_ptr)
        assert {(c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"]) for c in table[n_ptr:]} == {gemm_kernels._TMA_BLOCKS[cls]}
    table = gemm_kernels.TMA_GEMM_CONFIGS["fp16"]
    args = {"CIN_G": 24, "COUT_G": 40, "w_desc": None}
    assert not any(c.kwargs["USE_TMA"] for c in gemm_kernels._fwd_prune(table, args))
    wp = torch.zeros(1, 3, 3, 24, 48, dtype=torch.float16)
    with _common.force_tma():
        desc = gemm_kernels._weight_descriptor(wp, "fp16", 24, 40)
    assert list(desc.block_shape) == [1, 32, 64]  # BLOCK_K 64 -> 32 (24 channels), BLOCK_N 128 -> 64 (40)
    kept = gemm_kernels._fwd_prune(table, dict(args, w_desc=desc))
    tma = [c for c in kept if c.kwargs["USE_TMA"]]
    assert tma and all((c.kwargs["BLOCK_K"], c.kwargs["BLOCK_N"]) == (32, 64) for c in tma)
    assert kept[0].kwargs["USE_TMA"] is False
    wrong = TensorDescriptor.from_tensor(wp.view(9, 24, 48), [1, 16, 16])
    assert not any(c.kwargs["USE_TMA"] for c in gemm_kernels._fwd_prune(table, dict(args, w_desc=wrong)))
    with _common.force_tma():  # tests: only the TMA configs
        assert all(c.kwargs["USE_TMA"] for c in gemm_kernels._fwd_prune(table, dict(args, w_desc=desc)))


def test_use_tma_on_sm90_unless_switched_off(monkeypatch):
    """On an sm_90 GPU (faked here: capability 9.0, outside the interpreter, inside an op's eager
    call) eager launches may pass descriptors; CONVLAB_TMA=0 turns that off, and other GPUs never do."""
    import torch._library.triton as torch_triton

    monkeypatch.setattr(_common, "INTERPRET", False)
    monkeypatch.setattr(_common, "HOST_TMA", True)
    monkeypatch.setattr(torch_triton, "is_wrap_triton_enabled", lambda: False)
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability[0])
    t = torch.zeros(4)
    cuda = torch.device("cuda")
    monkeypatch.delenv("CONVLAB_TMA", raising=False)
    assert _common.use_tma(cuda, t)
    monkeypatch.setenv("CONVLAB_TMA", "0")
    assert not _common.use_tma(cuda, t)
    monkeypatch.setenv("CONVLAB_TMA", "1")
    capability[0] = (8, 0)
    assert not _common.use_tma(cuda, t)
    assert not _common.use_tma(torch.device("cpu"), t)
