"""Benchmark convlab's ops against their peers in the same run.

Peers: F.conv2d (cuDNN) for standard / grouped / depthwise / dilated convolutions,
torchvision.ops.deform_conv2d for deformable convolution (DCNv1, and DCNv2 with mask),
torchvision.ops.roi_align (aligned=False, same sampling) for RoI Align and deformable RoI pooling.
Timed with ``triton.testing.do_bench`` (quantiles 0.5 / 0.2 / 0.8) for three modes:
``fwd``, ``bwd`` (autograd.grad of a retained graph) and ``fwd_bwd``. Headline: ratio =
peer median / convlab median (> 1: convlab is faster). Also peak extra memory of one call,
achieved GB/s (``Case.bytes_moved``) and TFLOP/s (``Case.flops``), and the case's roofline model
(``benchmarks.roofline``: compulsory and tiled bytes, arithmetic intensity, the bound time on a named
GPU's peaks) with the measured time as a percentage of the bound. Cases whose convlab op is not in
the tree (``suite.unavailable``: e.g. layers.conv3d before it lands) are reported as skipped.

    python -m benchmarks.bench                                   # full suite, needs a GPU
    python -m benchmarks.bench --family depthwise --dtype bf16 --batch 32 --limit 10
    python -m benchmarks.bench --dry-run [filters]               # CPU: validate + AOT compile sm_90
    python -m benchmarks.bench --preset session --time-budget 120 --resume benchmarks/results/*.json --out run
    python -m benchmarks.bench --match 'deform/*/b32/fp16/*' 'depthwise/*k31*' --order match --list
    TRITON_INTERPRET=1 python -m benchmarks.bench --device cpu --preset rehearsal --warmup 0 --rep 0 --out /tmp/r

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

from . import roofline
from .suite import (BATCHES, DTYPES, FAMILIES, FAMILY_KERNEL_PREFIXES, FAMILY_KERNELS, KERNEL_DTYPES, LAYOUTS, PEERS,
                    PRESETS, SUITES, Case, build_suite, order_cases, unavailable, validate)

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
#: Paths whose last commit identifies the measured code (``code_commit``): a results file measured at
#: the same code commit on the same device can be resumed even after later commits that only add
#: results or docs.
CODE_PATHS = ("kernels", "layers", "benchmarks/bench.py", "benchmarks/suite.py")
#: Written by scripts/prepare_gpu_session.sh for machines whose copy of the tree has no .git.
STAMP = os.path.join(ROOT, ".session", "commit.json")


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    if out.returncode:
        raise RuntimeError(out.stderr.strip())
    return out.stdout.strip()


def source_version() -> dict:
    """``git_commit`` (HEAD, ``-dirty`` with uncommitted changes to tracked files), ``code_commit``
    (last commit touching CODE_PATHS, ``-dirty`` when they have uncommitted changes) and where they
    came from. Order: CONVLAB_COMMIT / CONVLAB_CODE_COMMIT environment variables, git, the stamp
    file, else "unknown" (never resumable)."""
    if os.environ.get("CONVLAB_COMMIT"):
        commit = os.environ["CONVLAB_COMMIT"]
        return {"git_commit": commit, "code_commit": os.environ.get("CONVLAB_CODE_COMMIT", commit),
                "commit_source": "environment"}
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        code = _git("log", "-1", "--format=%H", "--", *CODE_PATHS) or head
        code_dirty = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
        return {"git_commit": head + ("-dirty" if dirty else ""), "code_commit": code + ("-dirty" if code_dirty else ""),
                "commit_source": "git"}
    except Exception:
        pass
    try:
        with open(STAMP) as f:
            st = json.load(f)
        return {"git_commit": st["git_commit"], "code_commit": st["code_commit"],
                "commit_source": f"stamp written {st.get('date', '?')}"}
    except Exception:
        return {"git_commit": "unknown", "code_commit": "unknown", "commit_source": "none"}


def git_commit() -> str:
    return source_version()["git_commit"]


def environment(device: str = "cuda") -> dict:
    import triton

    cuda = device == "cuda" and torch.cuda.is_available()
    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:
        tv = None
    fake = os.environ.get("CONVLAB_FAKE_DEVICE")
    name = torch.cuda.get_device_name() if cuda else "cpu (no CUDA)"
    env = {
        "device": fake or name,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "torch": torch.__version__, "triton": triton.__version__, "torchvision": tv,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "host": platform.node(),
        **source_version(),
        "date": _now(),
        "quantiles": QUANTILES,
        "timer": "triton.testing.do_bench (CUDA events)" if cuda else "time.perf_counter (CPU)",
        "bytes_model": "each of input, weight, output (+offset, mask) read/written once; bwd reads grad_output, "
                       "input, weight(, offset, mask) and writes grad_input, grad_weight(, grad_offset, grad_mask); "
                       "roi: the 4 corners of every sample (R*C*PH*PW*SR^2*4) read (bwd: added into), output "
                       "(, offset) once; subpixel: input, weight, shuffled output (the conv output is an intermediate)",
        "flops_model": "2*N*OH*OW*Cout*Cin/g*KH*KW per pass (3-D: *OD*KD); fwd 1, bwd 2, fwd_bwd 3 passes; roi: 8 per "
                       "sample and channel per pass",
        "roofline_model": "bound_ms = max(flops / peak, bytes / HBM bandwidth) on roofline_gpu (benchmarks.roofline.GPUS, "
                          "dense datasheet peaks); tiled_bytes: loads and stores of the default-config kernels' tiles, "
                          "no L1/L2 reuse (an upper bound); pct_roofline = bound_ms / convlab median * 100",
    }
    if fake:
        env["fake_device"] = f"device name set by CONVLAB_FAKE_DEVICE; really ran on: {name}"
    if not cuda:
        env["rehearsal"] = ("CPU run through Triton's interpreter (TRITON_INTERPRET=1): checks that the harness "
                            "works end to end; the times are not measurements of the kernels")
    return env


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------ timing
def roi_boxes(case: Case, device: str = "cuda", generator=None) -> torch.Tensor:
    """(R, 5) boxes (batch index, x1, y1, x2, y2) in image pixels for a family "roi" case: R boxes
    spread round-robin over the batch's images, inside the image (map size x stride), with sides of
    0.5-2x the size FPN assigns to the map's level (224 * stride / 16)."""
    L = case.layer
    g = generator or torch.Generator(device=device).manual_seed(0)
    img_h, img_w = L.h * L.stride, L.w * L.stride
    side = 224.0 * L.stride / 16
    wh = (torch.rand(L.rois, 2, device=device, generator=g) * 1.5 + 0.5) * side
    wh = torch.minimum(wh, torch.tensor([img_w - 1.0, img_h - 1.0], device=device))
    xy = torch.rand(L.rois, 2, device=device, generator=g) * (torch.tensor([img_w, img_h], device=device) - wh)
    idx = (torch.arange(L.rois, device=device) % case.batch).float()
    return torch.cat([idx[:, None], xy, xy + wh], 1).to(case.torch_dtype)


def case_format(case: Case) -> torch.memory_format:
    """The memory format of layout ``cl``: channels_last (4-D) or channels_last_3d (5-D)."""
    if case.layout != "cl":
        return torch.contiguous_format
    return torch.channels_last_3d if case.spatial_dims == 3 else torch.channels_last


def _numel(shape) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


def make_inputs(case: Case, device: str = "cuda") -> Dict[str, torch.Tensor]:
    """Input tensors by name; the ones that require grad are the leaves the backward differentiates."""
    L = case.layer
    dt = case.torch_dtype
    shapes = case.shapes()
    g = torch.Generator(device=device).manual_seed(0)
    fmt = case_format(case)
    if L.family == "roi":
        t = {"input": torch.randn(shapes["input"], device=device, dtype=dt, generator=g).to(memory_format=fmt),
             "rois": roi_boxes(case, device, g)}
        if L.deform:
            t["offset"] = torch.randn(shapes["offset"], device=device, dtype=dt, generator=g)
        for name in ("input", "offset"):
            if name in t:
                t[name].requires_grad_(True)
        return t
    t = {"input": torch.randn(shapes["input"], device=device, dtype=dt, generator=g).to(memory_format=fmt),
         "weight": (torch.randn(shapes["weight"], device=device, dtype=dt, generator=g)
                    / (shapes["weight"][1] * _numel(shapes["weight"][2:])) ** 0.5).to(memory_format=fmt)}
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
    if L.d:
        st, pd, dl = case.strides(), case.paddings(), case.dilations()
        if L.transposed:
            def ours(t):
                return layers.conv_transpose3d(t["input"], t["weight"], None, st, pd, 0, L.groups, dl)

            def peer(t):
                return F.conv_transpose3d(t["input"], t["weight"], None, st, pd, 0, L.groups, dl)
            return ours, peer, ""

        def ours(t):
            return layers.conv3d(t["input"], t["weight"], None, st, pd, dl, L.groups)

        def peer(t):
            return F.conv3d(t["input"], t["weight"], None, st, pd, dl, L.groups)
        return ours, peer, ""
    if L.family == "subpixel":
        def ours(t):
            return layers.subpixel_conv2d(t["input"], t["weight"], None, L.upscale, padding="same")

        def peer(t):
            return F.pixel_shuffle(F.conv2d(t["input"], t["weight"], None, 1, "same"), L.upscale)
        return ours, peer, ""
    if L.family == "roi":
        def ours(t):
            return layers.deform_roi_pool(t["input"], t["rois"], t.get("offset"), L.k, 1.0 / L.stride,
                                          L.sampling_ratio)
        from torchvision.ops import roi_align

        def peer(t):  # no offset: what deformable RoI pooling replaces, at the same sampling
            return roi_align(t["input"], t["rois"], L.k, 1.0 / L.stride, L.sampling_ratio, aligned=False)
        return ours, peer, "" if L.deform else "both sides RoI Align (no offset)"
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
    leaves = [v for v in t.values() if v.requires_grad]  # not RoI boxes
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fwd(t)
        return run
    y = fwd(t)
    gy = torch.randn_like(y)
    # allow_unused: roi_align, the peer of deformable RoI pooling, has no offset to differentiate
    if mode == "bwd":
        return lambda: torch.autograd.grad(y, leaves, gy, retain_graph=True, allow_unused=True)
    return lambda: torch.autograd.grad(fwd(t), leaves, gy, allow_unused=True)


def peak_extra_mb(fn: Callable[[], object]) -> Optional[float]:
    """Peak memory above what was allocated before one call, in MiB (None off CUDA)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def time_fn(fn: Callable[[], object], warmup: int, rep: int, device: str = "cuda") -> dict:
    if device == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup, rep=rep, quantiles=QUANTILES)
        return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
    return cpu_time(fn, warmup, rep)


def cpu_time(fn: Callable[[], object], warmup: int, rep: int, max_iters: int = 100) -> dict:
    """do_bench's contract on the CPU (wall clock): about ``warmup`` ms of untimed calls, then about
    ``rep`` ms of timed calls, quantiles QUANTILES of the per-call times. The first call is timed
    too; it is the only sample when one call outlasts ``warmup`` and ``rep`` (the rehearsal's case)."""
    t0 = time.perf_counter()
    fn()
    times = [(time.perf_counter() - t0) * 1e3]
    one = max(times[0], 1e-6)
    if warmup >= one:
        for _ in range(min(max_iters, int(warmup / one))):
            fn()
        times = []
    while len(times) < max(1, min(max_iters, int(rep / one))):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    med, p20, p80 = (_quantile(times, q) for q in QUANTILES)
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}


def _quantile(values: List[float], q: float) -> float:
    """Linear-interpolation quantile (as torch.quantile / numpy's default)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _set_tf32(cudnn: bool, matmul: Optional[bool] = None):
    """Set TF32 for cuDNN and matmul (convlab's fp32 GEMMs follow the cuDNN flag); returns the old pair."""
    prev = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = cudnn
    torch.backends.cuda.matmul.allow_tf32 = cudnn if matmul is None else matmul
    return prev


def _empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def roofline_fields(case: Case, mode: str, gpu: Optional[str]) -> dict:
    """The roofline model's fields of a row (``benchmarks.roofline.model``); flops and bytes only
    when no GPU peak table applies."""
    if gpu is None:
        return {"flops": case.flops(mode), "bytes": case.bytes_moved(mode)}
    return roofline.model(case, mode, gpu)


def add_percentages(row: dict) -> dict:
    """Measured medians as % of the roofline bounds (None where either is missing)."""
    for side in ("ours", "peer"):
        pre = "" if side == "ours" else "peer_"
        row[f"{pre}pct_roofline"] = roofline.percent_of_roofline(row.get("bound_ms"), row.get(f"{side}_median_ms"))
        row[f"{pre}pct_tiled_roofline"] = roofline.percent_of_roofline(row.get("tiled_bound_ms"),
                                                                       row.get(f"{side}_median_ms"))
    return row


def bench_case(case: Case, warmup: int = 25, rep: int = 100, device: str = "cuda",
               gpu: Optional[str] = roofline.DEFAULT_GPU) -> List[dict]:
    import layers

    why = unavailable(case)
    if why:  # the op is not in this tree: one row that says so, measured again by a later run
        return [dict(case.as_dict(), mode="all", error=f"skipped: {why}", skipped=True, measured_at=_now())]
    rows = []
    prev = _set_tf32(case.dtype == "tf32")
    try:
        t = make_inputs(case, device)
        ours_fwd, peer_fwd, note = op_fns(case)
        for mode in MODES:
            row = dict(case.as_dict(), mode=mode, peer=PEERS[case.family], peer_note=note,
                       **roofline_fields(case, mode, gpu), error="", measured_at=_now())
            for side, fwd in (("ours", ours_fwd), ("peer", peer_fwd)):
                row.update({f"{side}_{k}": None for k in ("median_ms", "p20_ms", "p80_ms", "peak_mb")})
                if fwd is None:
                    continue
                try:
                    with layers.use_backend("triton") if side == "ours" else _null():
                        fn = mode_fn(fwd, t, mode)
                        if device == "cuda":
                            fn()  # compile / autotune outside the timed region
                            row[f"{side}_peak_mb"] = peak_extra_mb(fn)
                        row.update({f"{side}_{k}": v for k, v in time_fn(fn, warmup, rep, device).items()})
                except Exception as exc:
                    row["error"] += f"{side}: {type(exc).__name__}: {str(exc)[:200]} "
            row["ratio"] = ratio(row["peer_median_ms"], row["ours_median_ms"])
            for side in ("ours", "peer"):
                row[f"{side}_gbps"] = gbps(row["bytes"], row[f"{side}_median_ms"])
                row[f"{side}_tflops"] = tflops(row["flops"], row[f"{side}_median_ms"])
            rows.append(add_percentages(row))
        del t
    except Exception as exc:  # e.g. out of memory while allocating inputs
        rows.append(dict(case.as_dict(), mode="all", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                         measured_at=_now()))
    finally:
        _set_tf32(*prev)
        _empty_cache(device)
    return rows


def warm_case(case: Case, device: str = "cuda") -> str:
    """One forward + backward of convlab's op on the case's inputs (no timing): compiles and autotunes
    its kernels, filling Triton's cache for a later timed run. Returns '' or the error."""
    import layers

    why = unavailable(case)
    if why:
        return f"skipped: {why}"
    prev = _set_tf32(case.dtype == "tf32")
    try:
        t = make_inputs(case, device)
        ours_fwd, _, _ = op_fns(case)
        with layers.use_backend("triton"):
            mode_fn(ours_fwd, t, "fwd_bwd")()
        if device == "cuda":
            torch.cuda.synchronize()
        return ""
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        _set_tf32(*prev)
        _empty_cache(device)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------ output
def default_stem(env: dict) -> str:
    dev = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
    return os.path.join(RESULTS_DIR, f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}_{dev}")


def _atomic_write(path: str, write: Callable) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)  # a kill leaves the old file or the new one, never half of one


def write_results(env: dict, rows: List[dict], stem: Optional[str] = None) -> str:
    """Write ``<stem>.json`` ({"environment", "results"}) and ``<stem>.csv``; returns the JSON path."""
    if stem is None:
        stem = default_stem(env)
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    _atomic_write(stem + ".json", lambda f: json.dump({"environment": env, "results": rows}, f, indent=1))
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def csv_rows(f):
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    _atomic_write(stem + ".csv", csv_rows)
    return stem + ".json"


def resumable(env: dict, paths: List[str]) -> Dict[str, List[dict]]:
    """Rows from earlier results files that this run can keep instead of measuring again: same device
    name, same code commit (``code_commit``; "unknown" and "-dirty" never match) and same timing
    settings. Returns {case id: rows}; a case whose only row is an error row (``mode == "all"``, e.g.
    out of memory) is measured again. Later files win. Missing or unreadable files are skipped."""
    keep: Dict[str, List[dict]] = {}
    want = (env["device"], env.get("code_commit"), env.get("timing"))
    if not env.get("code_commit") or env["code_commit"] == "unknown" or env["code_commit"].endswith("-dirty"):
        return keep
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        e = data.get("environment", {})
        if (e.get("device"), e.get("code_commit"), e.get("timing")) != want:
            continue
        by_id: Dict[str, List[dict]] = {}
        for r in data.get("results", []):
            by_id.setdefault(r.get("id"), []).append(r)
        for cid, rows in by_id.items():
            if cid and any(r.get("mode") in MODES for r in rows):
                keep[cid] = [dict(r, resumed_from=r.get("resumed_from") or os.path.basename(path)) for r in rows]
    return keep


# ------------------------------------------------------------------------------------ dry run
def _us(v: Optional[float]) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def print_roofline(cases: List[Case], gpu: str) -> None:
    """The roofline model of every case (no timing): per case GFLOP, compulsory MB, tiled / compulsory
    bytes, FLOP per byte, and the bound (compulsory bytes) and tiled bound in microseconds, per mode."""
    g = roofline.GPUS[gpu]
    print(f"roofline model on {gpu} ({g['source']}: HBM {g['hbm_gbps']:.0f} GB/s, fp16/bf16 {g['fp16']} / tf32 "
          f"{g['tf32']} tensor, fp32 {g['fp32']} TFLOP/s); a model, not a measurement. bound = max(FLOP/peak, "
          f"bytes/bandwidth), us; tiled = the default-config kernels' tile traffic (no cache reuse)")
    print(f"  {'case':<58}{'mode':<8}{'GFLOP':>9}{'MB':>9}{'tiled/MB':>9}{'FLOP/B':>8}{'bound us':>10}"
          f"{'tiled us':>10}  by")
    for c in cases:
        for mode in MODES:
            m = roofline.model(c, mode, gpu)
            ratio_ = "-" if m["tiled_bytes"] is None else f"{m['tiled_bytes'] / m['bytes']:.2f}"
            print(f"  {c.id:<58}{mode:<8}{m['flops'] / 1e9:>9.3f}{m['bytes'] / 1e6:>9.2f}{ratio_:>9}"
                  f"{m['intensity']:>8.1f}{_us(m['bound_ms']):>10}{_us(m['tiled_bound_ms']):>10}  {m['bound_by']}")


def family_kernels(fam: str, specs) -> List[str]:
    """AOT spec names of a family: FAMILY_KERNELS, or the specs named with FAMILY_KERNEL_PREFIXES."""
    if fam in FAMILY_KERNEL_PREFIXES:
        return sorted(n for n in specs if n.startswith(FAMILY_KERNEL_PREFIXES[fam]))
    return list(FAMILY_KERNELS[fam])


def dry_run(cases: List[Case], arch: int = 90, workers: int = 1, gpu: str = roofline.DEFAULT_GPU,
            show_roofline: bool = True) -> int:
    """Validate every case, print its roofline model on ``gpu``, and AOT-compile (sm_<arch>, default
    config) the kernels the selected families use, for the selected dtypes. Cases whose convlab op
    is not in the tree (``unavailable``) are listed as skipped; they are still validated against
    torch's shape rules. Returns the exit status (1 on any problem; skipped cases are none)."""
    from kernels.inspect import all_specs
    from kernels.inspect import run as run_builds

    t0 = time.time()
    invalid = [(c.id, why) for c in cases for why in [validate(c)] if why]
    skipped = [(c, why) for c in cases for why in [unavailable(c)] if why]
    print(f"suite: {len(cases)} cases, {len(cases) - len(invalid)} valid, {len(invalid)} invalid, "
          f"{len(skipped)} skipped (op not in this tree)")
    fams = sorted({c.family for c in cases})
    for fam in fams:
        n = sum(c.family == fam for c in cases)
        print(f"  {fam:<11} {n:>5} cases  peer: {PEERS[fam]}")
    for cid, why in invalid:
        print(f"  INVALID {cid}: {why}")
    for why in sorted({w for _, w in skipped}):
        ids = [c.id for c, w in skipped if w == why]
        print(f"  SKIPPED {len(ids)} cases ({', '.join(sorted({i.split('/')[0] for i in ids}))}): {why}")
    if show_roofline:
        print_roofline(cases, gpu)

    specs = {spec.name for _, spec in all_specs()}
    kdtypes = sorted({KERNEL_DTYPES[c.dtype] for c in cases})
    names = sorted({k for fam in fams for k in family_kernels(fam, specs)})
    for fam in fams:
        if fam in FAMILY_KERNEL_PREFIXES and not family_kernels(fam, specs):
            print(f"  no AOT spec named {' / '.join(p + '*' for p in FAMILY_KERNEL_PREFIXES[fam])} yet: compile check "
                  f"of family {fam} skipped")
    missing = [n for n in names if n not in specs]
    for name in missing:
        print(f"  MISSING kernel spec {name}")
    names = [n for n in names if n in specs]
    print(f"compiling the default config of {len(names)} kernels for sm_{arch}, dtypes {kdtypes}, every build "
          f"(TF32 on/off, 32/64-bit index) of an NCHW launch (kernels.inspect)")
    results = run_builds(archs=(arch,), kernels_filter=names, dtypes=kdtypes, problems=("nchw",),
                         workers=workers) if names else []
    head = f"  {'kernel':<24}{'dtype':<6}{'sm':<4}{'build':<16}{'regs':>5}{'spill':>7}{'smem':>8}  {'tc':<6}{'s':>6}  status"
    print(head)
    errors = 0
    for r in results:
        status = "ok"
        if not r.ok:
            status, errors = f"COMPILE ERROR {r.error}", errors + 1
        elif r.spill_bytes > 0:
            status = "spills (warning)"
        tc = r.tensor_cores or ("none" if r.gemm else "-")
        print(f"  {r.kernel:<24}{r.dtype:<6}{r.arch:<4}{r.build:<16}{r.registers:>5}{r.spill_bytes:>7}{r.shared_bytes:>8}  "
              f"{tc:<6}{r.seconds:>6.1f}  {status}")
    bad = bool(invalid or errors or missing)
    print(f"dry run {'FAILED' if bad else 'OK'}: {len(invalid)} invalid cases, {errors} compile errors, "
          f"{len(missing)} missing kernels, {len(skipped)} skipped cases ({time.time() - t0:.1f} s; no timings, "
          f"no GPU used)")
    return 1 if bad else 0


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="convlab kernels vs cuDNN / torchvision")
    ap.add_argument("--family", nargs="+", choices=FAMILIES)
    ap.add_argument("--dtype", nargs="+", choices=DTYPES)
    ap.add_argument("--batch", nargs="+", type=int, choices=BATCHES)
    ap.add_argument("--layout", nargs="+", choices=LAYOUTS)
    ap.add_argument("--match", nargs="+", metavar="GLOB",
                    help="keep cases whose id matches one of these globs (fnmatch), e.g. 'deform/*/b32/fp16/*'")
    ap.add_argument("--order", choices=("suite", "match"), default=None,
                    help="'match': run cases in the order of the first --match glob they match (a priority "
                         "order); 'suite' (default without a preset): suite order")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="'session': the GPU session's priority order over the whole suite (benchmarks.suite."
                         "SESSION_PRIORITY); 'rehearsal': tiny layers for the CPU rehearsal. Filters still apply")
    ap.add_argument("--suite", choices=SUITES, default=None, help="layer set (default full; 'tiny' for rehearsals)")
    ap.add_argument("--limit", type=int, help="keep only the first N cases (after ordering)")
    ap.add_argument("--shard", help="I/N: keep every N-th case starting at I (0-based), for parallel warm-up")
    ap.add_argument("--dry-run", action="store_true", help="CPU only: validate the suite and AOT-compile kernels")
    ap.add_argument("--list", action="store_true", help="print the selected case ids in run order and exit")
    ap.add_argument("--warm-only", action="store_true",
                    help="run convlab's forward + backward once per case (compile + autotune), no timing, no files")
    ap.add_argument("--arch", type=int, default=90, help="dry run: compute capability x10 (default 90)")
    ap.add_argument("--workers", type=int, default=1, help="dry run: parallel compiles")
    ap.add_argument("--roofline-gpu", choices=sorted(roofline.GPUS), default=None,
                    help="peak table of the roofline model (default: the device's when it is in the table, else "
                         f"{roofline.DEFAULT_GPU}; the dry run uses {roofline.DEFAULT_GPU})")
    ap.add_argument("--no-roofline", action="store_true", help="dry run: do not print the per-case roofline table")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--time-budget", type=float, default=None, metavar="S",
                    help="start no new case after S seconds (the results so far are already written)")
    ap.add_argument("--resume", nargs="+", default=[], metavar="JSON",
                    help="earlier results files: cases they measured on this device at the same code commit "
                         "with the same --warmup/--rep are copied, not measured again (missing files are skipped)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu: rehearsal through Triton's interpreter (needs TRITON_INTERPRET=1); times are "
                         "not measurements")
    ap.add_argument("--out", help="results path stem (default benchmarks/results/<date>_<device>)")
    return ap.parse_args(argv)


def select_cases(args) -> List[Case]:
    """The cases to run, in run order, from the filters, --preset / --match / --order, --limit, --shard."""
    suite, globs, order = "full", None, args.order or "suite"
    if args.preset:
        suite, globs = PRESETS[args.preset]
        order = args.order or "match"
    suite = args.suite or suite
    cases = build_suite(args.family, args.dtype, args.batch, args.layout, None, suite)
    if globs is not None:
        cases = order_cases(cases, globs, by_glob=order == "match")
    if args.match:
        cases = order_cases(cases, args.match, by_glob=order == "match" and not args.preset)
    if args.limit:
        cases = cases[:args.limit]
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        if not 0 <= i < n:
            raise ValueError(f"--shard {args.shard}: need 0 <= I < N")
        cases = cases[i::n]
    return cases


def warm(cases: List[Case], device: str, budget: Optional[float]) -> int:
    t0 = time.time()
    for i, case in enumerate(cases):
        if budget is not None and time.time() - t0 > budget:
            print(f"warm: time budget {budget:.0f} s reached after {i} of {len(cases)} cases", flush=True)
            break
        err = warm_case(case, device)
        print(f"warm [{i + 1}/{len(cases)}] {case.id} {time.time() - t0:.1f}s" + (f"  ERR {err}" if err else ""),
              flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") == "1":
        # Interpreted @triton.jit functions cannot be compiled ahead of time: run again without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "benchmarks.bench", *(sys.argv[1:] if argv is None else argv)],
                               env=env, cwd=ROOT)
    try:
        cases = select_cases(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0
    if args.dry_run:
        return dry_run(cases, args.arch, args.workers, args.roofline_gpu or roofline.DEFAULT_GPU,
                       not args.no_roofline)
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: no CUDA GPU found; timing needs a GPU. On this machine run "
                  "`python -m benchmarks.bench --dry-run` to validate the suite and compile the kernels "
                  "(or `--device cpu` with TRITON_INTERPRET=1 to rehearse the harness).", file=sys.stderr)
            return 2
        if interp:
            print("error: TRITON_INTERPRET=1 is set; unset it to benchmark compiled kernels", file=sys.stderr)
            return 2
    elif not interp:
        print("error: --device cpu runs convlab's kernels through Triton's interpreter: set TRITON_INTERPRET=1 "
              "before starting", file=sys.stderr)
        return 2
    if args.warm_only:
        return warm(cases, args.device, args.time_budget)

    t0 = time.time()
    env = environment(args.device)
    env["timing"] = {"warmup_ms": args.warmup, "rep_ms": args.rep}
    env["selection"] = " ".join(sys.argv[1:] if argv is None else argv)
    gpu = args.roofline_gpu or roofline.gpu_for_device(env["device"]) or roofline.DEFAULT_GPU
    env["roofline_gpu"] = f"{gpu}: {roofline.GPUS[gpu]['source']}" + (
        "" if roofline.gpu_for_device(env["device"]) == gpu else f" (not the device, {env['device']})")
    stem = args.out or default_stem(env)
    done = resumable(env, args.resume)
    rows: List[dict] = []
    todo = []
    for case in cases:
        if case.id in done:
            rows += done[case.id]
        else:
            todo.append(case)
    env["cases_selected"], env["cases_resumed"] = len(cases), len(cases) - len(todo)
    env["cases_measured"], env["complete"] = 0, not todo
    print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  CUDA {env['cuda']}  cuDNN {env['cudnn']}  "
          f"commit {env['git_commit']} (code {env['code_commit']})  {len(cases)} cases, "
          f"{len(cases) - len(todo)} resumed, {len(todo)} to measure", flush=True)
    path = write_results(env, rows, stem)
    for i, case in enumerate(todo):
        if args.time_budget is not None and time.time() - t0 > args.time_budget:
            print(f"time budget {args.time_budget:.0f} s reached: {len(todo) - i} cases not measured", flush=True)
            break
        case_rows = bench_case(case, args.warmup, args.rep, args.device, gpu)
        rows += case_rows
        env["cases_measured"] = i + 1
        env["complete"] = i + 1 == len(todo)
        path = write_results(env, rows, stem)  # after every case: a kill loses at most the case in flight
        parts = [f"{r['mode']}: {r['ratio']:.2f}x" if r.get("ratio") else f"{r['mode']}: -" for r in case_rows]
        errs = " ".join(r["error"] for r in case_rows if r.get("error"))
        print(f"[{i + 1}/{len(todo)}] {case.id}  " + "  ".join(parts) + (f"  ERR {errs}" if errs else "")
              + f"  ({time.time() - t0:.0f} s)", flush=True)
    print(f"wrote {path} (+ .csv); report: python -m benchmarks.report {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
