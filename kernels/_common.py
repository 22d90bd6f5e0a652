"""Shared plumbing for the Triton kernels: interpreter detection, launches, layouts.

Kernels run compiled on CUDA, or through Triton's CPU interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported (that decision is made
when ``@triton.jit`` decorates a function, so it is read once, here).
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: dtypes every kernel ships for; fp32 accumulation, fp64 accumulates in fp64.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def _patch_interpreter_bf16_dot() -> None:
    """Triton's interpreter stores bf16 as raw uint16 and multiplies those integers
    in ``tl.dot``; widen bf16 operands to fp32 so interpreted results are real."""
    from triton.runtime import interpreter as _interp

    builder = getattr(_interp, "InterpreterBuilder", None)
    if builder is None or getattr(builder.create_dot, "_convlab_patched", False):
        return
    original = builder.create_dot

    def _widen(h):
        if getattr(h.dtype, "scalar", h.dtype) == tl.bfloat16:
            bits = h.data.astype(np.uint32) << 16
            return _interp.TensorHandle(bits.view(np.float32), tl.float32)
        return h

    def create_dot(self, a, b, d, *args, **kwargs):
        return original(self, _widen(a), _widen(b), d, *args, **kwargs)

    create_dot._convlab_patched = True
    builder.create_dot = create_dot


if INTERPRET:
    _patch_interpreter_bf16_dot()


def is_fake(*tensors: torch.Tensor | None) -> bool:
    """True when any tensor carries no real data: FakeTensor / FunctionalTensor / other tracing
    subclasses, functionalized or meta tensors (torch.compile, opcheck, export). Compiled
    kernels are skipped by wrap_triton itself there; the interpreter would try to run on
    them, so interpreted launches check this first."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "meta" or type(t) not in (torch.Tensor, torch.nn.Parameter):
            return True
        if torch._is_functional_tensor(t):
            return True
    return False


#: CUDA's launch limits on the number of programs per grid axis (x, y, z).
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def check_grid(dims: tuple) -> tuple:
    """``dims`` unchanged, or a ValueError naming the grid axis past CUDA's limit (a launch
    would otherwise fail with an opaque driver error). Symbolic sizes are not checked."""
    for axis, (n, limit) in enumerate(zip(dims, GRID_LIMITS)):
        if isinstance(n, int) and n > limit:
            raise ValueError(f"launch grid {tuple(dims)}: axis {axis} has {n} programs, more than CUDA's "
                             f"limit of {limit}; the shape is too large for this kernel")
    return dims


#: Test hook (interpreter only), see ``far_tiles``: None, or how many programs of grid axis 0 to run.
_FAR_TILES = None


@contextmanager
def far_tiles(count: int = 1):
    """Interpreter test hook: interpreted launches run only the last ``count`` programs of grid
    axis 0 (all of axes 1 and 2), with their true program ids. The far tiles of a huge logical
    shape (indices past 2**31) can then run on small, strided or expanded storage."""
    global _FAR_TILES
    before, _FAR_TILES = _FAR_TILES, count
    try:
        yield
    finally:
        _FAR_TILES = before


def _run_far_tiles(plain, dims, count, args, meta) -> None:
    from triton.runtime import interpreter as _interp

    dims = tuple(dims) + (1,) * (3 - len(dims))
    start = max(dims[0] - count, 0)
    builder = _interp.interpreter_builder
    get_pid, get_num = builder.create_get_program_id, builder.create_get_num_programs

    def program_id(axis):
        if axis != 0:
            return get_pid(axis)
        return _interp.TensorHandle(np.array([builder.grid_idx[0] + start], dtype=np.int32), tl.int32)

    def num_programs(axis):
        return _interp.TensorHandle(np.array([dims[axis]], dtype=np.int32), tl.int32)

    builder.create_get_program_id, builder.create_get_num_programs = program_id, num_programs
    try:
        plain[(dims[0] - start, dims[1], dims[2])](*args, **meta)
    finally:
        del builder.create_get_program_id, builder.create_get_num_programs


def launch(tuned, plain, grid, interpret_config: dict, *args, **kwargs) -> None:
    """Launch ``tuned`` (an autotuned kernel) on GPU, or ``plain`` (its bare
    ``@triton.jit`` function) with ``interpret_config`` under the interpreter.

    ``grid`` is a callable ``meta -> tuple`` as in Triton's tutorials; a grid past CUDA's
    per-axis limits raises ValueError (``check_grid``).
    """
    if INTERPRET:
        meta = dict(kwargs, **interpret_config)
        dims = check_grid(grid(meta))
        if is_fake(*[a for a in args if isinstance(a, torch.Tensor)]):
            return
        # Interpreted ops are opaque custom_ops (layers/_op.py), so nothing traces this launch;
        # call the function directly (torch 2.11's wrap_triton rejects InterpretedFunction).
        if _FAR_TILES is not None:
            _run_far_tiles(plain, dims, _FAR_TILES, args, meta)
        else:
            plain[dims](*args, **meta)
    else:
        from torch.library import wrap_triton

        wrap_triton(tuned)[lambda meta: check_grid(grid(meta))](*args, **kwargs)


#: Test / AOT hook, see ``force_tma``: None (ask the device), or whether launchers build their TMA
#: (tensor-descriptor) variants as if on an sm_90 GPU.
_TMA_FORCE = None


def _host_tma_available() -> bool:
    """Whether this triton has host-side tensor descriptors (``triton.tools.tensor_descriptor``,
    present in triton 3.6 and 3.8)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


HOST_TMA = _host_tma_available()


@contextmanager
def force_tma(on: bool = True):
    """Test / AOT hook: launchers that have a TMA variant build it (``use_tma`` is ``on``) whatever
    the device: interpreted launches then run it, ``kernels.inspect`` captures its builds."""
    global _TMA_FORCE
    before, _TMA_FORCE = _TMA_FORCE, on
    try:
        yield
    finally:
        _TMA_FORCE = before


def use_tma(device: torch.device, *tensors: torch.Tensor) -> bool:
    """Whether a launch on ``device`` may pass host-side TMA descriptors (``TensorDescriptor``) so
    that its autotuner can try TMA configs: on sm_90 (Hopper) GPUs only, with a triton that has host
    descriptors, and not while ``tensors`` are traced (torch.compile / opcheck: torch's non-Dynamo
    tracing of ``wrap_triton`` launches, which ``triton_op`` uses, does not capture descriptors, so
    traced launches keep the pointer path), and only inside a ``triton_op``'s eager call, where
    ``wrap_triton`` launches the kernel directly: a launcher called on its own goes through torch's
    kernel-wrapper op, which keeps every non-tensor argument of every call in a side table (a
    descriptor would keep the packed weight alive). ``force_tma`` overrides these device checks;
    ``CONVLAB_TMA=0`` in the environment turns the TMA variants off (read per call: the TMA path has
    been compiled and run under the interpreter, not yet timed or run on a GPU)."""
    if not HOST_TMA or is_fake(*tensors):
        return False
    if _TMA_FORCE is not None:
        return _TMA_FORCE
    if INTERPRET or device.type != "cuda" or os.environ.get("CONVLAB_TMA", "1") == "0":
        return False
    from torch._library.triton import is_wrap_triton_enabled

    return not is_wrap_triton_enabled() and torch.cuda.get_device_capability(device)[0] == 9


@triton.jit
def _idx(v, IDX64: tl.constexpr):
    """Index arithmetic in int64 only when a tensor's extent needs it (see needs_int64)."""
    if IDX64:
        return v.to(tl.int64)
    else:
        return v


@triton.jit
def _tile_offsets(pid, BLOCK: tl.constexpr, IDX64: tl.constexpr):
    """The indices ``pid * BLOCK + [0, BLOCK)`` of a program's tile of a flattened index; in the
    64-bit build they are int64 from the start (``pid * BLOCK`` passes int32 in the far tiles)."""
    return _idx(pid, IDX64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _unflatten(offs, D1, D2):
    """Flattened ``offs = (a * D1 + b) * D2 + c`` -> ``(a, b, c)`` in ``offs``'s integer type, e.g.
    the pixel index m -> (n, oh, ow) with D1 = OH, D2 = OW. No D1 * D2 product (it may pass int32)."""
    c = offs % D2
    t = offs // D2
    return t // D1, t % D1, c


@triton.jit
def _mma(a, b, acc, ALLOW_TF32: tl.constexpr):
    """acc + a @ b; fp32 operands use TF32 only when allowed (fp16/bf16/fp64 are unaffected).

    ``out_dtype`` is passed explicitly: triton 3.8 infers it from ``acc``, but triton 3.6 (the
    GPU image) defaults it to fp32 and rejects an fp64 accumulator."""
    if ALLOW_TF32:
        return tl.dot(a, b, acc, input_precision="tf32", out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)


def pair(v) -> tuple:
    """int or pair -> (h, w)."""
    return (v, v) if isinstance(v, int) else tuple(v)


#: Flattened indices are formed up to a tile (and a reduction split) past their extent.
INDEX_MARGIN = 2**16


def needs_int64(*operands) -> bool:
    """True when the 64-bit index build is needed: an element offset of a tensor operand (its
    largest, from shape and strides, so views and expanded tensors count right) may not fit in
    int32, or an int operand, the extent of a flattened index a kernel forms (N * OH * OW, N * P,
    a split's end), comes within ``INDEX_MARGIN`` of it, which no tensor need reveal."""
    limit = 2**31 - 1
    for t in operands:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            if t + INDEX_MARGIN > limit:
                return True
            continue
        if t.numel() == 0:
            continue
        if t.numel() >= limit or sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) >= limit:
            return True
    return False


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_workspace(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Allocation of an atomic-add workspace (``like``'s strides when it is dense). Its contents
    are undefined: ``zeroed_workspace`` zeroes it. A separate function so tests can hand the
    launchers a dirty buffer."""
    return torch.empty_like(like, dtype=dtype)


def zeroed_workspace(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The workspace an atomic-add kernel accumulates into, zeroed here by the launcher. Kernels
    must not rely on the autotuner's ``reset_to_zero`` for this: it only runs around autotuning
    trials, and Inductor's handling of it for user kernels has changed between versions."""
    return empty_workspace(like, dtype).zero_()


def alert_nondeterministic(caller: str) -> None:
    """What PyTorch does for its own non-deterministic ops (``torch.use_deterministic_algorithms``):
    raise a RuntimeError when deterministic algorithms are required, warn when ``warn_only=True``.
    Called by the launchers of the kernels that accumulate with floating-point atomic adds, whenever
    such a kernel is about to run (also under the CPU interpreter, where the adds happen to be
    sequential, so the behaviour is the same everywhere and testable)."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = (f"{caller} does not have a deterministic implementation (it accumulates with floating-point "
           f"atomic adds), but you set 'torch.use_deterministic_algorithms(True")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg + ", warn_only=True)'.", UserWarning, stacklevel=3)
    else:
        raise RuntimeError(msg + ")'. You can turn off determinism just for this operation, or use the "
                           "'warn_only=True' option, if that's acceptable for your application.")


def like_layout(ref: torch.Tensor, shape) -> torch.Tensor:
    """Empty tensor of ``shape`` in ``ref``'s memory format (channels_last stays channels_last)."""
    channels_last = ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, device=ref.device, dtype=ref.dtype, memory_format=fmt)


def allow_tf32(dtype: torch.dtype, flag: str = "cudnn") -> bool:
    """Whether fp32 ``tl.dot`` may use TF32: only where the op the kernel replaces would.

    ``flag="cudnn"``: convolutions follow ``torch.backends.cudnn.allow_tf32`` (on by default), as
    F.conv2d does. ``flag="matmul"``: deformable convolution follows
    ``torch.backends.cuda.matmul.allow_tf32`` (off by default), as torchvision's deform_conv2d,
    whose GEMM is an addmm, does. Other dtypes never use TF32.
    """
    if dtype != torch.float32:
        return False
    if flag == "cudnn":
        return bool(torch.backends.cudnn.allow_tf32)
    if flag == "matmul":
        return bool(torch.backends.cuda.matmul.allow_tf32)
    raise ValueError(f"flag must be 'cudnn' or 'matmul', got {flag!r}")


def config_class(table: dict, dtype, tf32: bool = False, idx64: bool = False) -> str:
    """The key of ``table`` (a kernel's autotune-config table, or its dict of autotuners) for a
    launch: the dtype name ("fp16", "bf16", "fp32", "fp64"; ``dtype`` may be a torch dtype or that
    name), "fp32_ieee" for fp32 without TF32 where the table has one (CUDA-core FMAs need smaller
    tiles than TF32 tensor cores not to spill), and an "_i64" suffix for the 64-bit index build
    where the table has one (64-bit address vectors take twice the registers)."""
    name = dtype if isinstance(dtype, str) else TRITON_DTYPE_NAMES[dtype]
    if name == "fp32" and not tf32 and "fp32_ieee" in table:
        name = "fp32_ieee"
    if idx64 and name + "_i64" in table:
        name += "_i64"
    return name


#: constexprs that change what a kernel computes or how it is built; each one a kernel has goes
#: into its autotune key, so no build reuses another's tuning (TF32 builds have their own tables)
_BUILD_CONSTEXPRS = ("HAS_BIAS", "HAS_MASK", "HAS_OFFSET", "IDX64")


def autotuned(fn, table: dict, key: list, reset=None, prune=None) -> dict:
    """One ``triton.autotune`` of ``fn`` per config class of ``table`` (see ``config_class``),
    keyed on ``key`` plus the build constexprs ``fn`` has. ``reset`` names workspaces that
    atomics accumulate into, zeroed between autotuning trials (launchers still zero them).
    ``prune`` (``prune(configs, named_args) -> configs``, see ``fit_blocks``) picks the configs
    a launch may try; ``kernels.inspect`` applies the same function to its builds."""
    key = list(key) + [c for c in _BUILD_CONSTEXPRS if c in fn.arg_names]
    by = None if prune is None else {"early_config_prune": lambda configs, named_args, **kw: prune(configs, named_args)}
    return {cls: triton.autotune(configs=cfgs, key=key, reset_to_zero=reset, prune_configs_by=by)(fn)
            for cls, cfgs in table.items()}


def fit_blocks(**extents):
    """A config pruner (for ``autotuned`` / ``KernelSpec.prune``): each named block size is cut to
    the next power of two (at least 16) of the kernel argument that bounds it, e.g.
    ``fit_blocks(BLOCK_K="CIN_G")``, and configs that become equal are dropped (the first stays
    first). A 64-wide K step over 3 channels only adds masked lanes and registers."""
    def prune(configs, named_args):
        out, seen = [], set()
        for cfg in configs:
            kw = dict(cfg.kwargs)
            for block, arg in extents.items():
                kw[block] = min(kw[block], max(16, triton.next_power_of_2(max(int(named_args[arg]), 1))))
            maxnreg = getattr(cfg, "maxnreg", None)
            ident = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages, maxnreg)
            if ident not in seen:
                seen.add(ident)
                # keep the config's register cap (block_config's maxnreg): it is part of its build
                out.append(block_config(cfg.num_warps, cfg.num_stages, maxnreg, **kw))
        return out
    return prune


def with_index64(table: dict, **i64_configs) -> dict:
    """``table`` plus "<class>_i64" entries (``with_index64(t, fp16=[...])``) for the 64-bit index
    build of the classes whose default spills there (64-bit address vectors take twice the
    registers); other classes' 64-bit builds use their own table."""
    return dict(table, **{cls + "_i64": cfgs for cls, cfgs in i64_configs.items()})


@dataclass
class KernelSpec:
    """A kernel that ``kernels.inspect`` compiles ahead of time.

    ``configs`` is the kernel's autotune-config table (config class -> configs, see
    ``config_class``; the first config of each list is the default). The builds come from
    launches intercepted on typical problems (``kernels.inspect``), so no signature is given here.
    """

    name: str
    fn: object
    configs: dict
    gemm: bool = False  # True: tensor-core instructions are expected for fp16/bf16
    prune: object = None  # the launcher's config pruner (``fit_blocks``), or None
    #: the configs of the kernel's TMA variant per config class (sm_90 only), or None; builds captured
    #: under ``force_tma`` (label ",tma") compile these instead of ``configs``
    tma_configs: dict | None = None


def cdiv(a: int, b: int) -> int:
    return triton.cdiv(a, b)


# --------------------------------------------------------------------------- config builders
def block_config(num_warps: int, num_stages: int = 1, maxnreg: int | None = None, **blocks) -> triton.Config:
    """One autotune config: block sizes by name (``BLOCK_P=64, BLOCK_C=32``), warps, pipeline stages
    and an optional register cap (``maxnreg``: ptxas then allocates what a loop nest needs instead of
    aiming at an occupancy step and spilling to get there). The one builder every kernel's config
    table is made of; a kernel file keeps a short positional wrapper for its own block names."""
    extra = {} if maxnreg is None else {"maxnreg": maxnreg}
    return triton.Config(dict(blocks), num_warps=num_warps, num_stages=num_stages, **extra)


def gemm_config(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    """A GEMM tile config: BLOCK_M x BLOCK_N output tile, BLOCK_K-deep reduction steps."""
    return block_config(warps, stages, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)


# --------------------------------------------------------------------------- split-K
def sm_count(device: torch.device) -> int:
    """The streaming multiprocessors of a CUDA ``device``; 0 for any other device (the CPU
    interpreter gains nothing from splitting a reduction)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_k(length: int, tiles: int, sms: int, *, min_chunk: int, programs_per_sm: int = 2,
            max_splits: int = 64) -> int:
    """How many ways a launch splits a reduction of ``length`` (output pixels, rows) whose output
    has ``tiles`` programs' worth of tiles, so that ``tiles * splits`` fills ``sms`` streaming
    multiprocessors with about ``programs_per_sm`` programs each.

    ``splits = max(1, min(programs_per_sm * sms // tiles, ceil(length / min_chunk), max_splits))``:
    no split runs fewer than about ``min_chunk`` reduction steps' elements (below that the partial
    tile each split writes and the launcher sums costs more than it saves), and ``max_splits`` bounds
    the partial workspace (``splits`` times the output, fp32) and the grid axis the splits share.
    ``sms == 0`` (no GPU) gives 1. The launchers sum the partials in a fixed order: deterministic."""
    if sms < 1 or length < 1:
        return 1
    return max(1, min(programs_per_sm * sms // max(tiles, 1), cdiv(length, min_chunk), max_splits))
