"""Ahead-of-time compile check: every build the launchers can select, for sm_80 and sm_90.

Runs on a machine without a GPU: ``triton.compile`` targets sm_80 / sm_90 directly and the
``ptxas`` bundled with Triton reports registers, spills and shared memory (``-v``).

A *build* is what Triton compiles for one launch: the kernel, its dtype, the autotune config,
the constexprs the launcher picks (``ALLOW_TF32`` on/off for fp32, ``IDX64`` for tensors past
2**31 elements, ``HAS_BIAS`` / ``HAS_MASK``) and the specialisations Triton derives from the
argument values at launch time (integers equal to 1 become constants, integers and pointers
divisible by 16 are marked so, which decides vectorisation). To get those exactly, the public
launchers are called on CPU tensors of a few typical problems with the launch intercepted, and
Triton's own binder turns each intercepted call into the signature, constants and attributes
that a GPU launch would compile:

    nchw   NCHW, 64 channels, 16x16, 3x3 stride 1 pad 1, bias, DCNv2 mask
    nhwc   channels_last, 64 channels, 3x3 stride 2 pad 1, bias, DCNv2 mask
    odd    NCHW, 3 -> 5 channels (5 depthwise), 15x15, 3x3 dilation 2, no bias, DCNv1

(conv3d: the same with a depth axis, 6 deep (9 for odd), 3x3x3, NCDHW / channels_last_3d.)

Kernels with a TMA variant (``KernelSpec.tma_configs``: the conv2d forward) are captured a second
time on ``TMA_PROBLEMS`` as on an sm_90 GPU (``kernels._common.force_tma``): those launches pass a
tensor descriptor, are labelled ",tma" (e.g. "nhwc,tma") and compile their TMA configs for sm_90
only, the first one as the build's default.

For GEMM-like kernels fp16/bf16 builds must use tensor cores (mma / wgmma); for every kernel
the share of global-load bytes issued vectorised (ld.global.v2/v4, cp.async of >= 8 bytes,
TMA) is reported.

    python -m kernels.inspect                      # default config of every build (what CI runs)
    python -m kernels.aot                          # the same command under its new name
    python -m kernels.inspect --all-configs        # every shipped autotune config of every build
    python -m kernels.inspect --arch 90 --kernels conv2d_fwd --dtypes fp16 --json out.json

Exit status 1 when a build fails to compile, a default config spills in any build, or a GEMM
kernel's default fp16/bf16 build has no tensor-core instruction. Non-default configs are
reported only (the autotuner may still pick them; only a GPU timing says whether they lose).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

PROBLEMS = ("nchw", "nhwc", "odd")
#: problems compiled only when asked for (--problems wide): 256 channels, so the wide (128 / 256)
#: tiles that the typical problems' 64 channels prune away are compiled too (--all-configs)
EXTRA_PROBLEMS = ("wide",)


@dataclass
class Result:
    kernel: str
    dtype: str
    arch: int
    config: str
    default: bool
    build: str  # problem, plus ",tf32" / ",ieee" for fp32 GEMMs and ",i64" for the 64-bit index build
    ok: bool
    registers: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    tensor_cores: str = ""  # "wgmma", "mma" or "" (none found)
    vector_share: float = -1.0  # share of global-load bytes issued by vectorised / async / bulk loads
    gemm: bool = False
    index64: bool = False
    tf32: bool | None = None  # None: the kernel has no ALLOW_TF32 (or the dtype is not fp32)
    seconds: float = 0.0
    error: str = ""

    @property
    def problem(self) -> str:
        if not self.ok:
            return "compile error"
        if self.default and self.spill_bytes > 0:
            return "spills"
        if self.default and self.gemm and self.dtype in ("fp16", "bf16") and not self.tensor_cores:
            return "no tensor cores"
        return ""


def all_specs():
    """(module name, KernelSpec) for every ``AOT_SPECS`` entry in the kernels package."""
    import kernels

    out = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name.startswith("_") or info.name in ("inspect", "aot"):
            continue
        mod = importlib.import_module(f"kernels.{info.name}")
        out += [(mod.__name__, spec) for spec in getattr(mod, "AOT_SPECS", [])]
    return out


# ------------------------------------------------------------------------------ capturing launches
@contextlib.contextmanager
def _captured_launches(records: list):
    """Replace ``launch`` in every kernel module by a recorder of (jit fn, args, kwargs)."""
    modules = sorted({m for m, _ in all_specs()})
    saved = {}

    def record(tuned, plain, grid, interpret_config, *args, **kwargs):
        records.append((plain, args, kwargs))

    for name in modules:
        mod = importlib.import_module(name)
        saved[name] = mod.launch
        mod.launch = record
    try:
        yield
    finally:
        for name, fn in saved.items():
            importlib.import_module(name).launch = fn


def _run_problem(problem: str, dtype):
    """Call every public launcher once on CPU tensors of ``problem`` (nothing is computed:
    launches are intercepted; outputs are only allocated)."""
    import torch

    from kernels import conv2d, deform, depthwise, gather, roi

    cl = problem in ("nhwc", "wide")
    n, h = 2, (15 if problem == "odd" else 16)
    c_in, c_out = {"odd": (3, 5), "wide": (256, 256)}.get(problem, (64, 64))
    c_dw = 5 if problem == "odd" else 64
    stride = (2, 2) if cl else (1, 1)
    padding = (0, 0) if problem == "odd" else (1, 1)
    dilation = (2, 2) if problem == "odd" else (1, 1)
    with_bias = with_mask = problem != "odd"
    fmt = torch.channels_last if cl else torch.contiguous_format

    def t(*shape, layout=False):
        x = torch.zeros(shape, dtype=dtype)
        return x.contiguous(memory_format=fmt) if layout and len(shape) == 4 else x

    x, xd = t(n, c_in, h, h, layout=True), t(n, c_dw, h, h, layout=True)
    w, wd = t(c_out, c_in, 3, 3, layout=True), t(c_dw, 1, 3, 3)
    b, bd = (t(c_out), t(c_dw)) if with_bias else (None, None)
    # conv2d family
    y = conv2d.conv2d_forward(x, w, b, stride, padding, dilation, 1)
    conv2d.conv2d_input_grad(y, w, x.shape, stride, padding, dilation, 1, bias=None)
    conv2d.conv2d_weight_grad(x, y, w.shape, stride, padding, dilation, 1, split_k=4)
    # sub-pixel convolution (the forward with the fused shuffle; its gradients launch the builds
    # above): ESPCN-like r = 3 to 1 channel with an even kernel in "odd", a x2 decoder stage
    # (64 -> 16 * 2^2 channels, 'same' 3x3) otherwise
    r_sp, c_sp, k_sp = (3, 1, 4) if problem == "odd" else (2, c_out // 4, 3)
    p_sp = ((k_sp - 1) // 2, k_sp // 2) * 2
    conv2d.subpixel_conv2d_forward(x, t(c_sp * r_sp * r_sp, c_in, k_sp, k_sp), t(c_sp * r_sp * r_sp) if with_bias
                                   else None, r_sp, (p_sp[0], p_sp[1], p_sp[0], p_sp[1]))
    # depthwise
    yd = depthwise.depthwise_forward(xd, wd, bd, stride, padding, dilation)
    depthwise.depthwise_input_grad(yd, wd, xd.shape, stride, padding, dilation)
    depthwise.depthwise_weight_grad(xd, yd, wd.shape, stride, padding, dilation, split_k=4)
    # deformable convolution (offsets / mask in the layout of the input, as a conv would produce them)
    oh = y.shape[-1]
    off = t(n, 2 * 9, oh, oh, layout=True)
    mask = t(n, 9, oh, oh, layout=True) if with_mask else None
    yf = deform.deform_conv2d_forward(x, off, w, b, mask, stride, padding, dilation)
    deform.deform_conv2d_data_grad(yf, x, off, w, mask, stride, padding, dilation)
    deform.deform_conv2d_weight_grad(yf, x, off, mask, w.shape, stride, padding, dilation, split_k=4)
    # bilinear gather and deformable RoI pooling
    pos = t(n, 32, 2)
    yg = gather.bilinear_gather_forward(x, pos)
    gather.bilinear_gather_backward(yg, x, pos)
    rois = t(4, 5)
    roi_off = t(4, 2, 7, 7) if with_mask else None
    yr = roi.deform_roi_pool_forward(x, rois, roi_off, 0.0625, 7, 7, 2, 0.1)
    roi.deform_roi_pool_backward(yr, x, rois, roi_off, 0.0625, 7, 7, 2, 0.1)
    # conv3d family: the problem's layout (NCDHW / channels_last_3d), channels and geometry on every axis
    from kernels import conv3d

    fmt3 = torch.channels_last_3d if cl else torch.contiguous_format
    depth = 9 if problem == "odd" else 6
    x3 = torch.zeros(n, c_in, depth, h, h, dtype=dtype).contiguous(memory_format=fmt3)
    w3 = t(c_out, c_in, 3, 3, 3)
    s3, p3, d3 = stride[:1] + stride, padding[:1] + padding, dilation[:1] + dilation
    y3 = conv3d.conv3d_forward(x3, w3, b, s3, p3, d3, 1)
    conv3d.conv3d_input_grad(y3, w3, x3.shape, s3, p3, d3, 1, bias=None)
    conv3d.conv3d_weight_grad(x3, y3, w3.shape, s3, p3, d3, 1, split_k=4)
    _run_problem_depthwise3d(problem, dtype)


def _run_problem_depthwise3d(problem: str, dtype):
    """The 3-D depthwise launchers on ``problem``'s video analogue (X3D's channelwise 3x3x3):
    nchw: NCDHW, 64 channels, 4x16x16, stride 1 pad 1, bias; nhwc: channels_last_3d, 3x3x3
    stride (1, 2, 2) pad 1, bias; odd: NCDHW, 5 channels, 5x15x15, dilation 2, no bias."""
    import torch

    from kernels import depthwise3d

    c = 5 if problem == "odd" else 64
    d, h = (5, 15) if problem == "odd" else (4, 16)
    stride = [1, 2, 2] if problem == "nhwc" else [1, 1, 1]
    padding = [0, 0, 0] if problem == "odd" else [1, 1, 1]
    dilation = [2, 2, 2] if problem == "odd" else [1, 1, 1]
    fmt = torch.channels_last_3d if problem == "nhwc" else torch.contiguous_format
    x = torch.zeros(2, c, d, h, h, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.zeros(c, 1, 3, 3, 3, dtype=dtype)
    b = None if problem == "odd" else torch.zeros(c, dtype=dtype)
    y = depthwise3d.depthwise3d_forward(x, w, b, stride, padding, dilation)
    depthwise3d.depthwise3d_input_grad(y, w, x.shape, stride, padding, dilation)
    depthwise3d.depthwise3d_weight_grad(x, y, w.shape, stride, padding, dilation, split_k=4)


#: problems whose launches are captured a second time as on an sm_90 GPU (``force_tma``): the builds
#: of kernels with a TMA variant (KernelSpec.tma_configs) get the label ",tma" and compile for sm_90 only
TMA_PROBLEMS = ("nhwc", "wide")


def capture(problems=PROBLEMS, dtypes=("fp32", "fp16", "bf16", "fp64")) -> dict:
    """{(kernel name, dtype, problem): (args, kwargs)} of the launches the launchers make."""
    import torch

    from kernels._common import force_tma

    names = {spec.fn: spec.name for _, spec in all_specs()}
    torch_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
    out = {}
    for problem in problems:
        for dt in dtypes:
            records = []
            with _captured_launches(records):
                _run_problem(problem, torch_dtypes[dt])
            for fn, args, kwargs in records:
                out.setdefault((names[fn], dt, problem + _build_tag(kwargs, args)), (args, kwargs))
            if problem not in TMA_PROBLEMS:
                continue
            records = []
            with _captured_launches(records), force_tma():
                _run_problem(problem, torch_dtypes[dt])
            for fn, args, kwargs in records:
                tag = _build_tag(kwargs, args)
                if ",tma" in tag:  # the launches without a descriptor are the builds above
                    out.setdefault((names[fn], dt, problem + tag), (args, kwargs))
    return out


def _is_descriptor(arg) -> bool:
    return type(arg).__name__ == "TensorDescriptor"


def _build_tag(kwargs: dict, args=()) -> str:
    """A label for launches of one kernel within one problem that compile as a build of their own
    (the sub-pixel forward: the conv2d forward with its pixel shuffle fused, SHUFFLE_R > 1; the TMA
    variant: a launch that passes a tensor descriptor, ",tma")."""
    r = kwargs.get("SHUFFLE_R", 1)
    tag = f",subpixel{r}" if r > 1 else ""
    return tag + (",tma" if any(_is_descriptor(a) for a in args) else "")


def _variants(kwargs: dict, dtype: str):
    """(label, constexpr overrides) of the builds a launcher can select from the same arguments:
    TF32 on and off for fp32 GEMMs (torch's flags decide), 32- and 64-bit index arithmetic."""
    tf32s = [None]
    if "ALLOW_TF32" in kwargs and dtype == "fp32":
        tf32s = [True, False]
    idx = [False, True] if "IDX64" in kwargs else [None]
    for tf32 in tf32s:
        for i64 in idx:
            over, label = {}, ""
            if tf32 is not None:
                over["ALLOW_TF32"] = tf32
                label += ",tf32" if tf32 else ",ieee"
            if i64 is not None:
                over["IDX64"] = i64
                label += ",i64" if i64 else ""
            yield label, over, tf32, bool(i64)


def _specialise(fn, args, kwargs, arch: int):
    """Triton's own launch-time specialisation of ``fn(*args, **kwargs)`` for ``arch``:
    (signature, constexprs, attrs, options dict), as JITFunction.run would compile it."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, dict(options.__dict__)


# ----------------------------------------------------------------------------------- compiling
def _config_label(cfg) -> str:
    kw = ",".join(("tma" if v else "ptr") if k == "USE_TMA" else f"{k.replace('BLOCK_', '')}{v}"
                  for k, v in cfg.kwargs.items())
    return f"{kw},w{cfg.num_warps},s{cfg.num_stages}"


_LD = re.compile(r"\bld\.global(?:\.[a-zA-Z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")
_CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global(?:\.[a-zA-Z0-9_:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],"
                       r"\s*(0x[0-9a-f]+|\d+)")


_BULK_LOAD = re.compile(r"\bcp\.async\.bulk(?:\.tensor\.\dd)?\.shared::(?:cta|cluster)\.global\b")
_EXPECT_TX = re.compile(r"\bmbarrier\.(?:arrive\.)?expect_tx(?:\.[a-z:0-9]+)*\s+[^;]*,\s*(\d+)\s*;")


def _bulk_load_bytes(ptx: str) -> int:
    """Global-to-shared bytes of the bulk (TMA) copies in ``ptx``, one instruction each as for the
    other loads: a bulk copy's size is not in its instruction but in the transaction count its
    mbarrier expects (``mbarrier.arrive.expect_tx ..., bytes``), one per pipeline stage's copies,
    so the sum of those counts; 128 bytes a copy when none is found. TMA stores do not count."""
    copies = len(_BULK_LOAD.findall(ptx))
    if not copies:
        return 0
    expected = sum(int(v) for v in _EXPECT_TX.findall(ptx))
    return expected if expected else 128 * copies


def vector_share(ptx: str) -> float:
    """Share of the global-load bytes (as written in the PTX, one instruction each) that are
    issued as 8/16-byte vector loads, 8/16-byte cp.async, or bulk (TMA) copies."""
    vec = total = 0
    for m in _LD.finditer(ptx):
        n_bytes = int(m.group(1) or 1) * int(m.group(2)) // 8
        total += n_bytes
        vec += n_bytes if n_bytes >= 8 else 0
    for m in _CP_ASYNC.finditer(ptx):
        n_bytes = int(m.group(1), 0)
        total += n_bytes
        vec += n_bytes if n_bytes >= 8 else 0
    bulk = _bulk_load_bytes(ptx)
    vec, total = vec + bulk, total + bulk
    return vec / total if total else 1.0


def compile_one(job: dict) -> Result:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = next(s for s in importlib.import_module(job["module"]).AOT_SPECS if s.name == job["kernel"])
    res = Result(job["kernel"], job["dtype"], job["arch"], job["config"], job["default"], job["build"], False,
                 gemm=spec.gemm, index64=job["index64"], tf32=job["tf32"])
    t0 = time.time()
    try:
        src = ASTSource(spec.fn, job["signature"], constexprs=job["constexprs"], attrs=job["attrs"])
        # Triton's own ptxas run (its flags differ between versions) reports registers and spills:
        # recompile even when cached, and keep the log it prints.
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=job["options"])
    except Exception as exc:  # report, do not crash the table
        msg = str(exc).strip()
        res.error = f"{type(exc).__name__}: {msg.splitlines()[-1][:300] if msg else ''}"
        res.seconds = time.time() - t0
        return res
    ptx = compiled.asm["ptx"]
    info = log.getvalue()
    res.registers = int(re.search(r"Used (\d+) registers", info).group(1))
    res.spill_bytes = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    res.shared_bytes = int(compiled.metadata.shared)
    res.tensor_cores = "wgmma" if "wgmma" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "")
    res.vector_share = round(vector_share(ptx), 3)
    res.ok = True
    res.seconds = time.time() - t0
    return res


def jobs(archs=(80, 90), all_configs=False, kernels_filter=None, dtypes=None, problems=PROBLEMS) -> list:
    """One job per (build, config, arch), each with the signature a GPU launch would compile."""
    from kernels._common import config_class

    specs = {spec.name: (module, spec) for module, spec in all_specs()}
    launches = capture(problems, dtypes or ("fp32", "fp16", "bf16", "fp64"))
    missing = {name for name in specs if not any(k[0] == name for k in launches)}
    if missing:
        raise RuntimeError(f"no typical problem launches {sorted(missing)}: extend kernels.inspect._run_problem")
    out, seen = [], set()
    for (name, dt, problem), (args, kwargs) in sorted(launches.items(), key=lambda kv: kv[0]):
        if kernels_filter and name not in kernels_filter:
            continue
        module, spec = specs[name]
        tma = ",tma" in problem
        for label, over, tf32, i64 in _variants(kwargs, dt):
            # the table the launcher picks from (TF32-off fp32 and 64-bit builds have their own); a TMA
            # build compiles the TMA configs (its pointer configs are the builds without ",tma")
            table = spec.tma_configs if tma else spec.configs
            cls = config_class(spec.configs, dt, bool(tf32), i64)
            if not table or cls not in table:
                continue
            configs = table[cls]
            if spec.prune is not None:  # the configs the launcher's autotuner may try for these arguments
                configs = spec.prune(configs, dict(zip(spec.fn.arg_names, args), **kwargs))
            for ci, cfg in enumerate(configs if all_configs else configs[:1]):
                kw = dict(kwargs, **over, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                if getattr(cfg, "maxnreg", None):  # a config's register cap is part of its build (.maxnreg)
                    kw["maxnreg"] = cfg.maxnreg
                for arch in archs:
                    if tma and arch != 90:  # TMA descriptors and wgmma: Hopper only
                        continue
                    sig, cx, attrs, options = _specialise(spec.fn, args, kw, arch)
                    # problems that specialise alike (e.g. a kernel that ignores the layout) compile once
                    ident = (name, dt, arch, _config_label(cfg), repr(sig), repr(sorted(cx.items())),
                             repr(sorted(attrs.items())))
                    if ident in seen:
                        continue
                    seen.add(ident)
                    out.append(dict(module=module, kernel=name, dtype=dt, arch=arch, config=_config_label(cfg),
                                    default=ci == 0, build=problem + label, tf32=tf32, index64=i64,
                                    signature=sig, constexprs=cx, attrs=attrs, options=options))
    return out


def run(archs=(80, 90), all_configs=False, kernels_filter=None, dtypes=None, problems=PROBLEMS, workers=None):
    todo = jobs(archs, all_configs, kernels_filter, dtypes, problems)
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_one, todo, chunksize=4))


def format_table(results, shown=None) -> str:
    """The table of the ``shown`` results (default: all), then the per-kernel summary of all."""
    head = (f"{'kernel':<22}{'dtype':<6}{'sm':<4}{'build':<16}{'config':<24}{'regs':>5}{'spill':>6}{'smem':>7}"
            f"  {'tc':<6}{'vec':>5}  status")
    lines = [head, "-" * len(head)]
    for r in results if shown is None else shown:
        status = r.problem or "ok"
        if r.error:
            status += f" ({r.error})"
        tc = r.tensor_cores or ("-" if not r.gemm else "none")
        cfg = r.config + (" *" if r.default else "")
        lines.append(f"{r.kernel:<22}{r.dtype:<6}{r.arch:<4}{r.build:<16}{cfg:<24}{r.registers:>5}{r.spill_bytes:>6}"
                     f"{r.shared_bytes:>7}  {tc:<6}{r.vector_share:>5.0%}  {status}")
    lines += ["", summary(results)]
    n_bad = sum(bool(r.problem) for r in results)
    lines.append(f"{len(results)} compiles, {n_bad} problems (* = default config; tc = tensor-core instructions; "
                 f"vec = share of global-load bytes vectorised)")
    return "\n".join(lines)


#: the problems whose launches are "typical" for the vectorisation proxy (channel counts that are
#: multiples of 16; "odd" has 3 and 5 channels, whose rows cannot be 16-byte aligned)
TYPICAL_PROBLEMS = ("nchw", "nhwc")
#: the bar for the share of global-load bytes a hot kernel's default 16-bit build moves vectorised
VECTOR_BAR = 0.8


def typical_16bit(results) -> dict:
    """{kernel: [results]} of the default fp16/bf16 builds of typical problems with 32-bit
    indexing (what a typical call compiles), for the vectorisation proxy."""
    out = {}
    for r in results:
        if r.ok and r.default and r.dtype in ("fp16", "bf16") and not r.index64 \
                and r.build.split(",")[0] in TYPICAL_PROBLEMS:
            out.setdefault(r.kernel, []).append(r)
    return out


def summary(results) -> str:
    """Per kernel: the lowest vectorised-load share over its typical default 16-bit builds, its
    tensor-core instructions there, and the most registers / spills / shared memory of any build."""
    typical = typical_16bit(results)
    lines = [f"{'kernel':<22}{'vec16 min':>10}  {'tc16':<12}{'max regs':>9}{'spills':>7}{'max smem':>9}"]
    for name in sorted({r.kernel for r in results}):
        rows = [r for r in results if r.kernel == name and r.ok]
        t = typical.get(name, [])
        vec = f"{min(r.vector_share for r in t):.0%}" if t else "-"
        tc = "/".join(sorted({r.tensor_cores or ("none" if r.gemm else "-") for r in t})) if t else "-"
        short = " (< {:.0%})".format(VECTOR_BAR) if t and min(r.vector_share for r in t) < VECTOR_BAR else ""
        lines.append(f"{name:<22}{vec:>10}  {tc:<12}{max((r.registers for r in rows), default=-1):>9}"
                     f"{sum(r.spill_bytes > 0 for r in rows):>7}{max((r.shared_bytes for r in rows), default=-1):>9}"
                     + short)
    lines.append(f"vec16 min: lowest share of global-load bytes moved vectorised over the default fp16/bf16 builds "
                 f"of {'/'.join(TYPICAL_PROBLEMS)} (32-bit index); spills: builds that spill")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities (x10)")
    ap.add_argument("--all-configs", action="store_true", help="every shipped autotune config, not only defaults")
    ap.add_argument("--kernels", nargs="+", help="restrict to these kernel names")
    ap.add_argument("--dtypes", nargs="+", choices=["fp16", "bf16", "fp32", "fp64"], help="restrict to these dtypes")
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS + EXTRA_PROBLEMS, default=list(PROBLEMS),
                    help="typical problems whose launch specialisations are compiled")
    ap.add_argument("--problems-only", action="store_true", help="print only the builds with a problem")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Interpreted kernels cannot be compiled; run again without the interpreter.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "kernels.inspect", *(argv or sys.argv[1:])], env=env)
    t0 = time.time()
    results = run(args.arch, args.all_configs, args.kernels, args.dtypes, args.problems, args.workers)
    shown = [r for r in results if r.problem] if args.problems_only else results
    print(format_table(results, shown))
    import triton

    print(f"triton {triton.__version__}, {time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(asdict(r), problem=r.problem) for r in results], f, indent=1)
    return 1 if any(r.problem for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
