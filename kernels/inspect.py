"""Ahead-of-time compile check: every kernel x shipped autotune config x dtype x GPU arch.

Runs on a machine without a GPU: ``triton.compile`` targets sm_80 / sm_90 directly and the
``ptxas`` bundled with Triton reports registers, spills and shared memory (``-v``).
For GEMM-like kernels it also reports whether fp16/bf16 use tensor cores (mma / wgmma).

    python -m kernels.inspect                    # table for sm_80 and sm_90, all configs
    python -m kernels.inspect --arch 90 --default-only --json out.json
    python -m kernels.inspect --index64 --default-only   # the 64-bit index variants

Exit status 1 when a kernel fails to compile, a default config spills (64-bit index variants
are reported only), or a GEMM kernel's default fp16/bf16 config has no tensor-core instruction.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

_PTR_TYPES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32", "fp64": "*fp64"}


@dataclass
class Result:
    kernel: str
    dtype: str
    arch: int
    config: str
    default: bool
    ok: bool
    registers: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    tensor_cores: str = ""  # "wgmma", "mma" or "" (none found)
    gemm: bool = False
    index64: bool = False
    seconds: float = 0.0
    error: str = ""

    @property
    def problem(self) -> str:
        if not self.ok:
            return "compile error"
        # 64-bit index variants (tensors past 2**31 elements) are reported, not gated on spills.
        if self.default and self.spill_bytes > 0 and not self.index64:
            return "spills"
        if self.default and self.gemm and self.dtype in ("fp16", "bf16") and not self.tensor_cores:
            return "no tensor cores"
        return ""


def all_specs():
    """(module name, KernelSpec) for every ``AOT_SPECS`` entry in the kernels package."""
    import kernels

    out = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name.startswith("_") or info.name == "inspect":
            continue
        mod = importlib.import_module(f"kernels.{info.name}")
        out += [(mod.__name__, spec) for spec in getattr(mod, "AOT_SPECS", [])]
    return out


def _ptxas() -> str:
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")


def _config_label(cfg) -> str:
    kw = ",".join(f"{k.replace('BLOCK_', '')}{v}" for k, v in cfg.kwargs.items())
    return f"{kw},w{cfg.num_warps},s{cfg.num_stages}"


def compile_one(module: str, name: str, dtype: str, index: int, arch: int, index64: bool = False) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = next(s for s in importlib.import_module(module).AOT_SPECS if s.name == name)
    cfg = spec.configs[dtype][index]
    constexprs = dict(cfg.kwargs, **(spec.constexprs(dtype) if spec.constexprs else {}))
    label = _config_label(cfg)
    if index64 and "IDX64" in constexprs:  # the variant launched for tensors past 2**31 elements
        constexprs["IDX64"] = True
        label += ",i64"
    res = Result(name, dtype, arch, label, index == 0, False, gemm=spec.gemm, index64=label.endswith(",i64"))
    fn = spec.fn
    acc = "fp64" if dtype == "fp64" else "fp32"
    signature = {}
    for p in fn.params:
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name == "ws_ptr":
            signature[p.name] = _PTR_TYPES[acc]
        elif p.name.endswith("_ptr"):
            signature[p.name] = _PTR_TYPES[dtype]
        else:
            signature[p.name] = "i32"
    t0 = time.time()
    try:
        src = ASTSource(fn, signature, constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    except Exception as exc:  # report, do not crash the table
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        res.seconds = time.time() - t0
        return res
    ptx = compiled.asm["ptx"]
    target = re.search(r"\.target\s+(\S+)", ptx).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([_ptxas(), "-v", f"--gpu-name={target}", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    info = out.stdout + out.stderr
    res.registers = int(re.search(r"Used (\d+) registers", info).group(1))
    res.spill_bytes = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    res.shared_bytes = int(compiled.metadata.shared)
    res.tensor_cores = "wgmma" if "wgmma" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "")
    res.ok = True
    res.seconds = time.time() - t0
    return res


def run(archs=(80, 90), default_only=False, kernels_filter=None, dtypes=None, workers=None, index64=False):
    jobs = []
    for module, spec in all_specs():
        if kernels_filter and spec.name not in kernels_filter:
            continue
        for dt in spec.dtypes:
            if dtypes and dt not in dtypes:
                continue
            n = 1 if default_only else len(spec.configs[dt])
            jobs += [(module, spec.name, dt, i, arch, index64) for i in range(n) for arch in archs]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(compile_one, *job) for job in jobs]
        return [f.result() for f in futures]


def format_table(results) -> str:
    head = f"{'kernel':<26}{'dtype':<6}{'sm':<4}{'config':<30}{'regs':>5}{'spill':>7}{'smem':>8}  {'tc':<6}{'s':>6}  status"
    lines = [head, "-" * len(head)]
    for r in results:
        status = r.problem or "ok"
        if r.error:
            status += f" ({r.error})"
        tc = r.tensor_cores or ("-" if not r.gemm else "none")
        cfg = r.config + (" *" if r.default else "")
        lines.append(f"{r.kernel:<26}{r.dtype:<6}{r.arch:<4}{cfg:<30}{r.registers:>5}{r.spill_bytes:>7}"
                     f"{r.shared_bytes:>8}  {tc:<6}{r.seconds:>6.1f}  {status}")
    n_bad = sum(bool(r.problem) for r in results)
    lines.append(f"{len(results)} compiles, {n_bad} problems (* = default config; tc = tensor-core instructions)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA compute capabilities (x10)")
    ap.add_argument("--default-only", action="store_true", help="only each kernel's default config")
    ap.add_argument("--kernels", nargs="+", help="restrict to these kernel names")
    ap.add_argument("--dtypes", nargs="+", choices=sorted(_PTR_TYPES), help="restrict to these dtypes")
    ap.add_argument("--index64", action="store_true", help="compile the 64-bit index variants instead")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Interpreted kernels cannot be compiled; run again without the interpreter.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "kernels.inspect", *(argv or sys.argv[1:])], env=env)
    results = run(args.arch, args.default_only, args.kernels, args.dtypes, args.workers, args.index64)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(asdict(r), problem=r.problem) for r in results], f, indent=1)
    return 1 if any(r.problem for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
