"""Benchmark convlab's ops against their peers in the same run.

Peers: F.conv2d (cuDNN) for standard / grouped / depthwise / dilated convolutions,
torchvision.ops.deform_conv2d for deformable convolution (DCNv1, and DCNv2 with mask).
Timed with ``triton.testing.do_bench`` (quantiles 0.5 / 0.2 / 0.8) for three modes:
``fwd``, ``bwd`` (autograd.grad of a retained graph) and ``fwd_bwd``. Headline: ratio =
peer median / convlab median (> 1: convlab is faster). Also peak extra memory of one call,
achieved GB/s (``Case.bytes_moved``) and TFLOP/s (``Case.flops``).

    python -m benchmarks.bench                                   # full suite, needs a GPU
    python -m benchmarks.bench --family depthwise --dtype bf16 --batch 32 --limit 10
    python -m benchmarks.bench --dry-run [filters]               # CPU: validate + AOT compile sm_90

Writes benchmarks/results/<date>_<device>.json and .csv (``--out`` to choose the stem).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

from .suite import (BATCHES, DTYPES, FAMILIES, FAMILY_KERNELS, KERNEL_DTYPES, LAYOUTS, PEERS, Case, build_suite,
                    validate)

MODES = ("fwd", "bwd", "fwd_bwd")
QUANTILES = [0.5, 0.2, 0.8]
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------ formulas
def ratio(peer_ms: Optional[float], ours_ms: Optional[float]) -> Optional[float]:
    """Headline speed ratio: peer time / convlab time (> 1 means convlab is faster)."""
    if not peer_ms or not ours_ms:
        return None
    return peer_ms / ours_ms


def gbps(n_bytes: int, ms: Optional[float]) -> Optional[float]:
    return n_bytes / (ms * 1e-3) / 1e9 if ms else None


def tflops(flops: int, ms: Optional[float]) -> Optional[float]:
    return flops / (ms * 1e-3) / 1e12 if ms else None


# ---------------------------------------------------------------------------------- environment
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def environment() -> dict:
    import triton

    cuda = torch.cuda.is_available()
    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:
        tv = None
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu (no CUDA)",
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "torch": torch.__version__, "triton": triton.__version__, "torchvision": tv,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "host": platform.node(),
        "git_commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quantiles": QUANTILES,
        "bytes_model": "each of input, weight, output (+offset, mask) read/written once; bwd reads grad_output, "
                       "input, weight(, offset, mask) and writes grad_input, grad_weight(, grad_offset, grad_mask)",
        "flops_model": "2*N*OH*OW*Cout*Cin/g*KH*KW per pass; fwd 1, bwd 2, fwd_bwd 3 passes",
    }


# ------------------------------------------------------------------------------------ timing
def make_inputs(case: Case, device: str = "cuda") -> Dict[str, torch.Tensor]:
    L = case.layer
    dt = case.torch_dtype
    shapes = case.shapes()
    g = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if case.layout == "cl" else torch.contiguous_format
    t = {"input": torch.randn(shapes["input"], device=device, dtype=dt, generator=g).to(memory_format=fmt),
         "weight": (torch.randn(shapes["weight"], device=device, dtype=dt, generator=g)
                    / (shapes["weight"][1] * L.k * L.k) ** 0.5).to(memory_format=fmt)}
    if L.deform:
        t["offset"] = torch.randn(shapes["offset"], device=device, dtype=dt, generator=g).to(memory_format=fmt)
        if "mask" in shapes:
            t["mask"] = torch.rand(shapes["mask"], device=device, dtype=dt, generator=g).to(memory_format=fmt)
    for v in t.values():
        v.requires_grad_(True)
    return t


def op_fns(case: Case):
    """(convlab forward, peer forward or None, peer note), each taking the input dict."""
    import torch.nn.functional as F
    import layers

    L = case.layer
    if L.deform:
        def ours(t):
            return layers.deform_conv2d(t["input"], t["offset"], t["weight"], None, L.stride, L.padding, L.dilation,
                                        t.get("mask"))
        if case.dtype == "bf16":  # torchvision's CUDA deform_conv2d has no bf16 kernel
            return ours, None, "torchvision deform_conv2d has no bf16 CUDA kernel"
        from torchvision.ops import deform_conv2d as tv_deform

        def peer(t):
            return tv_deform(t["input"], t["offset"], t["weight"], None, L.stride, L.padding, L.dilation,
                             t.get("mask"))
        return ours, peer, ""

    def ours(t):
        return layers.conv2d(t["input"], t["weight"], None, L.stride, L.padding, L.dilation, L.groups)

    def peer(t):
        return F.conv2d(t["input"], t["weight"], None, L.stride, L.padding, L.dilation, L.groups)
    return ours, peer, ""


def mode_fn(fwd: Callable, t: Dict[str, torch.Tensor], mode: str) -> Callable[[], object]:
    leaves = list(t.values())
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fwd(t)
        return run
    y = fwd(t)
    gy = torch.randn_like(y)
    if mode == "bwd":
        return lambda: torch.autograd.grad(y, leaves, gy, retain_graph=True)
    return lambda: torch.autograd.grad(fwd(t), leaves, gy)


def peak_extra_mb(fn: Callable[[], object]) -> float:
    """Peak memory above what was allocated before one call, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def time_fn(fn: Callable[[], object], warmup: int, rep: int) -> dict:
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=QUANTILES)
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}


def bench_case(case: Case, warmup: int = 25, rep: int = 100) -> List[dict]:
    import layers

    rows = []
    tf32 = case.dtype == "tf32"
    prev = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        t = make_inputs(case)
        ours_fwd, peer_fwd, note = op_fns(case)
        for mode in MODES:
            row = dict(case.as_dict(), mode=mode, peer=PEERS[case.family], peer_note=note,
                       flops=case.flops(mode), bytes=case.bytes_moved(mode), error="")
            for side, fwd in (("ours", ours_fwd), ("peer", peer_fwd)):
                row.update({f"{side}_{k}": None for k in ("median_ms", "p20_ms", "p80_ms", "peak_mb")})
                if fwd is None:
                    continue
                try:
                    with layers.use_backend("triton") if side == "ours" else _null():
                        fn = mode_fn(fwd, t, mode)
                        fn()  # compile / autotune outside the timed region
                        row[f"{side}_peak_mb"] = peak_extra_mb(fn)
                        row.update({f"{side}_{k}": v for k, v in time_fn(fn, warmup, rep).items()})
                except Exception as exc:
                    row["error"] += f"{side}: {type(exc).__name__}: {str(exc)[:200]} "
            row["ratio"] = ratio(row["peer_median_ms"], row["ours_median_ms"])
            for side in ("ours", "peer"):
                row[f"{side}_gbps"] = gbps(row["bytes"], row[f"{side}_median_ms"])
                row[f"{side}_tflops"] = tflops(row["flops"], row[f"{side}_median_ms"])
            rows.append(row)
        del t
    except Exception as exc:  # e.g. out of memory while allocating inputs
        rows.append(dict(case.as_dict(), mode="all", error=f"{type(exc).__name__}: {str(exc)[:300]}"))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
        torch.cuda.empty_cache()
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------ output
def write_results(env: dict, rows: List[dict], stem: Optional[str] = None) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    if stem is None:
        dev = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
        stem = os.path.join(RESULTS_DIR, f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{dev}")
    with open(stem + ".json", "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=1)
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return stem + ".json"


# ------------------------------------------------------------------------------------ dry run
def dry_run(cases: List[Case], arch: int = 90, workers: int = 1) -> int:
    """Validate every case and AOT-compile (sm_<arch>, default config) the kernels the selected
    families use, for the selected dtypes. Returns the exit status (1 on any problem)."""
    from kernels.inspect import all_specs

    t0 = time.time()
    invalid = [(c.id, why) for c in cases for why in [validate(c)] if why]
    print(f"suite: {len(cases)} cases, {len(cases) - len(invalid)} valid, {len(invalid)} invalid")
    fams = sorted({c.family for c in cases})
    for fam in fams:
        n = sum(c.family == fam for c in cases)
        print(f"  {fam:<10} {n:>5} cases  peer: {PEERS[fam]}")
    for cid, why in invalid:
        print(f"  INVALID {cid}: {why}")

    specs = {name: module for module, spec in all_specs() for name in [spec.name]}
    kdtypes = sorted({KERNEL_DTYPES[c.dtype] for c in cases})
    jobs, missing = [], []
    for name in sorted({k for fam in fams for k in FAMILY_KERNELS[fam]}):
        if name not in specs:
            missing.append(name)
            continue
        jobs += [(specs[name], name, dt, 0, arch) for dt in kdtypes]
    for name in missing:
        print(f"  MISSING kernel spec {name}")
    print(f"compiling {len(jobs)} kernels for sm_{arch} (default config), dtypes {kdtypes}"
          + (" [fp32 = the spec's fp32 build, ALLOW_TF32 per kernels' AOT_SPECS]" if "fp32" in kdtypes else ""))
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_compile, jobs))
    else:
        results = [_compile(j) for j in jobs]
    head = f"  {'kernel':<24}{'dtype':<6}{'sm':<4}{'regs':>5}{'spill':>7}{'smem':>8}  {'tc':<6}{'s':>6}  status"
    print(head)
    errors = 0
    for r in results:
        status = "ok"
        if not r.ok:
            status, errors = f"COMPILE ERROR {r.error}", errors + 1
        elif r.spill_bytes > 0:
            status = "spills (warning)"
        tc = r.tensor_cores or ("none" if r.gemm else "-")
        print(f"  {r.kernel:<24}{r.dtype:<6}{r.arch:<4}{r.registers:>5}{r.spill_bytes:>7}{r.shared_bytes:>8}  "
              f"{tc:<6}{r.seconds:>6.1f}  {status}")
    bad = bool(invalid or errors or missing)
    print(f"dry run {'FAILED' if bad else 'OK'}: {len(invalid)} invalid cases, {errors} compile errors, "
          f"{len(missing)} missing kernels ({time.time() - t0:.1f} s; no timings, no GPU used)")
    return 1 if bad else 0


def _compile(job):
    from kernels.inspect import compile_one

    return compile_one(*job)


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="convlab kernels vs cuDNN / torchvision")
    ap.add_argument("--family", nargs="+", choices=FAMILIES)
    ap.add_argument("--dtype", nargs="+", choices=DTYPES)
    ap.add_argument("--batch", nargs="+", type=int, choices=BATCHES)
    ap.add_argument("--layout", nargs="+", choices=LAYOUTS)
    ap.add_argument("--limit", type=int, help="keep only the first N cases")
    ap.add_argument("--dry-run", action="store_true", help="CPU only: validate the suite and AOT-compile kernels")
    ap.add_argument("--arch", type=int, default=90, help="dry run: compute capability x10 (default 90)")
    ap.add_argument("--workers", type=int, default=1, help="dry run: parallel compiles")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--out", help="results path stem (default benchmarks/results/<date>_<device>)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") == "1":
        # Interpreted @triton.jit functions cannot be compiled ahead of time: run again without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "benchmarks.bench", *(sys.argv[1:] if argv is None else argv)],
                               env=env, cwd=ROOT)
    try:
        cases = build_suite(args.family, args.dtype, args.batch, args.layout, args.limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cases, args.arch, args.workers)
    if not torch.cuda.is_available():
        print("error: no CUDA GPU found; timing needs a GPU. On this machine run "
              "`python -m benchmarks.bench --dry-run` to validate the suite and compile the kernels.",
              file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("error: TRITON_INTERPRET=1 is set; unset it to benchmark compiled kernels", file=sys.stderr)
        return 2
    env = environment()
    print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  CUDA {env['cuda']}  cuDNN {env['cudnn']}  "
          f"commit {env['git_commit']}  {len(cases)} cases")
    rows = []
    for i, case in enumerate(cases):
        case_rows = bench_case(case, args.warmup, args.rep)
        rows += case_rows
        parts = [f"{r['mode']}: {r['ratio']:.2f}x" if r.get("ratio") else f"{r['mode']}: -" for r in case_rows]
        errs = " ".join(r["error"] for r in case_rows if r.get("error"))
        print(f"[{i + 1}/{len(cases)}] {case.id}  " + "  ".join(parts) + (f"  ERR {errs}" if errs else ""), flush=True)
    path = write_results(env, rows, args.out)
    print(f"wrote {path} (+ .csv); report: python -m benchmarks.report {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
