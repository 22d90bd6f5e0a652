"""Analytic roofline model of every benchmark case: FLOPs, compulsory bytes, the bytes the kernel's
tiling moves, arithmetic intensity and the roofline bound time on a named GPU.

Per case and mode (``fwd``, ``bwd``, ``fwd_bwd``):

* ``flops``          ``Case.flops`` (2 per multiply-add; deformable bilinear sampling not counted).
* ``bytes``          ``Case.bytes_moved``: compulsory traffic, every tensor read or written once.
* ``tiled_bytes``    the load / store traffic the default config of convlab's kernels issues, from
                     their block sizes (imported from ``kernels/*.py``, never copied): an operand
                     tile is counted each time a program loads it, so re-reads across tiles count
                     (implicit GEMM: the input once per output-channel tile, the packed weight once
                     per pixel tile; depthwise: every input segment with its halo and alignment
                     slack, once per filter row; deformable: 4 corner loads per bilinear sample,
                     once per output-channel tile), plus what the launchers add (NCHW -> channels_last
                     copies, weight packing, split-K fp32 workspaces and their sum, fp32 atomics and
                     the grad-input workspace of the deformable data gradient). Reuse in L1 / L2 is
                     NOT modelled, so this is an upper bound of DRAM traffic, and a tile's taps are
                     assumed to share their input rows (the gather of one program reads each input
                     element it touches once). Masked-off lanes at tile edges are counted as loaded.
                     The 32-bit index build's configs are used. ``None`` where no kernel config is
                     known (a family whose kernels have not landed: conv3d is modelled as conv2d's
                     implicit GEMM once kernels.conv3d defines GEMM_CONFIGS, INPUT_GRAD_CONFIGS and
                     WEIGHT_GRAD_CONFIGS; depthwise3d has no tiling model yet).
* ``intensity``      flops / bytes (FLOP per byte); ``tiled_intensity`` flops / tiled_bytes.
* ``bound_ms``       max(flops / peak, bytes / bandwidth): no kernel can beat it on that GPU.
  ``tiled_bound_ms`` the same with tiled_bytes: what the kernel's tiling allows at best.
* ``pct_roofline``   bound_ms / measured median * 100 (``percent_of_roofline``).

Peak for a case: tensor-core peak for the GEMM families (standard, grouped, dilated, deform,
conv3d, subpixel) in fp16 / bf16 / tf32, the CUDA-core fp32 peak for ``fp32`` (TF32 off); the
depthwise and RoI families run fp32 FMAs on CUDA cores whatever the storage dtype (they accumulate
in fp32 and have no channel reduction for a tensor core), so they use the fp32 CUDA-core peak.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

from .suite import ELEMENT_BYTES, KERNEL_DTYPES, Case

MODES = ("fwd", "bwd", "fwd_bwd")

#: Peak rates per GPU, dense (no 2:4 sparsity). Sources: NVIDIA H100 Tensor Core GPU datasheet and the
#: NVIDIA H100 (Hopper) architecture whitepaper, H100 SXM5 column: HBM3 3.35 TB/s; FP16 / BF16 tensor
#: 1979 TFLOPS with sparsity = 989.4 dense; TF32 tensor 989 with sparsity = 494.7 dense; FP32 (CUDA
#: cores) 66.9 TFLOPS; 132 SMs. NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column: HBM3e 4.8 TB/s,
#: the same compute as H100 SXM (FP16 / BF16 tensor 1979 sparse = 989.4 dense, TF32 989 sparse = 494.7
#: dense, FP32 67 TFLOPS), 132 SMs. Units: bandwidth GB/s (1e9 B/s), peaks TFLOP/s (1e12).
GPUS: Dict[str, dict] = {
    "H100-SXM": {"hbm_gbps": 3350.0, "fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "sms": 132,
                 "source": "NVIDIA H100 datasheet / Hopper whitepaper (SXM5), dense"},
    "H200": {"hbm_gbps": 4800.0, "fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9, "sms": 132,
             "source": "NVIDIA H200 datasheet (SXM), dense"},
}
#: the dry run's and the CPU rehearsal's GPU (the device machine lent to this project is an H200)
DEFAULT_GPU = "H200"
#: families whose kernels are GEMMs on tensor cores (others: CUDA-core fp32 FMAs)
GEMM_FAMILIES = ("standard", "grouped", "dilated", "deform", "conv3d", "subpixel")


def gpu_for_device(name: Optional[str]) -> Optional[str]:
    """Key of GPUS for a CUDA device name (``torch.cuda.get_device_name``), or None if unknown."""
    n = (name or "").upper()
    if "H200" in n:
        return "H200"
    if "H100" in n and "PCIE" not in n and "NVL" not in n:
        return "H100-SXM"
    return None


def peak_tflops(case: Case, gpu: str) -> float:
    g = GPUS[gpu]
    if case.family not in GEMM_FAMILIES:
        return g["fp32"]
    return g[case.dtype]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------ implicit GEMM
def _pruned(configs, prune, **named):
    """The default (first) config of ``configs`` after the kernel's own pruner, as a dict."""
    cfgs = prune(configs, named) if prune is not None else configs
    return dict(cfgs[0].kwargs)


def gemm_split_k(M: int, tiles: int, sms: int) -> int:
    """``kernels.deform._split_k`` for a GPU with ``sms`` SMs (the kernels read the SM count from
    the device): the shared rule of ``kernels._common.split_k`` with the deformable weight
    gradient's parameters. The conv2d weight gradient has its own (``_weight_grad_split``)."""
    from kernels._common import split_k

    return split_k(M, tiles, sms, min_chunk=2048)


def _gemm_geometry(case: Case) -> dict:
    """The convolution a GEMM-family case runs (subpixel: its convolution; transposed: the forward
    convolution whose input gradient it is), spatial dims as tuples."""
    L = case.layer
    s = case.shapes()
    x, w = s["input"], s["weight"]
    if L.transposed:  # conv_transpose(x) = input grad of conv(y_shape) with weight w
        y, xx = x, s["output"]
        return dict(N=case.batch, c_in=xx[1], c_out=y[1], groups=L.groups, in_sp=tuple(xx[2:]), out_sp=tuple(y[2:]),
                    k=tuple(w[2:]), stride=case.strides(), padding=case.paddings(), dilation=case.dilations())
    y = s["conv_output"] if "conv_output" in s else s["output"]
    return dict(N=case.batch, c_in=x[1], c_out=w[0], groups=L.groups, in_sp=tuple(x[2:]), out_sp=tuple(y[2:]),
                k=tuple(w[2:]), stride=case.strides(), padding=case.paddings(), dilation=case.dilations())


def _gemm_tables(case: Case):
    """(module, fwd table, input-grad table, weight-grad table, prunes) of the case's implicit GEMM, or None."""
    import importlib

    name = "kernels.conv3d" if case.layer.d else "kernels.conv2d"
    try:
        mod = importlib.import_module(name)
        return mod, mod.GEMM_CONFIGS, mod.INPUT_GRAD_CONFIGS, mod.WEIGHT_GRAD_CONFIGS, (
            getattr(mod, "_fwd_prune", None), getattr(mod, "_bwd_input_prune", None),
            getattr(mod, "_bwd_weight_prune", None))
    except (ImportError, AttributeError):
        return None


def _torch_dtype(case: Case):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[KERNEL_DTYPES[case.dtype]]


def _gemm_cls(table, case: Case) -> str:
    from kernels._common import config_class

    return config_class(table, KERNEL_DTYPES[case.dtype], case.dtype == "tf32")


def _pack(groups, k_ch, n_ch, mod) -> int:
    fn = getattr(mod, "_group_pack", None)
    return fn(groups, k_ch, n_ch) if fn is not None else 1


def _phases(size, k, s, p, d):
    from kernels.conv2d import _phases as ph

    return ph(size, k, s, p, d)


def implicit_gemm_passes(case: Case, sms: int) -> Optional[Dict[str, int]]:
    """Tiled traffic in bytes of the implicit-GEMM passes {"fwd", "bwd_input", "bwd_weight"} of the
    convolution ``_gemm_geometry`` describes, or None without kernel configs. See the module doc."""
    t = _gemm_tables(case)
    if t is None:
        return None
    mod, fwd_t, in_t, wt_t, (fwd_p, in_p, wt_p) = t
    g = _gemm_geometry(case)
    e, acc = ELEMENT_BYTES[case.dtype], 4
    N, G = g["N"], g["groups"]
    cin_g, cout_g = g["c_in"] // G, g["c_out"] // G
    taps = math.prod(g["k"])
    x_el = N * g["c_in"] * math.prod(g["in_sp"])
    y_el = N * g["c_out"] * math.prod(g["out_sp"])
    w_el = g["c_out"] * cin_g * taps
    M = N * math.prod(g["out_sp"])
    copy = case.layout == "nchw"  # activations are copied to channels-innermost once per pass
    out = {}

    # forward: Y[M, cout'] = X~[M, K] W[K, cout'], K = taps * cin'
    P = _pack(G, cin_g, cout_g, mod)
    Gp, ci, co = G // P, cin_g * P, cout_g * P
    cfg = _pruned(fwd_t[_gemm_cls(fwd_t, case)], fwd_p, CIN_G=ci, COUT_G=co)
    w_pk = Gp * taps * ci * cdiv(co, 16) * 16  # packed (G, taps, cin', COUT_LD), rows padded to 16
    out["fwd"] = e * (x_el * cdiv(co, cfg["BLOCK_N"]) + w_pk * cdiv(M, cfg["BLOCK_M"]) + y_el
                      + (2 * x_el if copy else 0) + w_el + w_pk)

    # input gradient: one dense GEMM per stride phase; dY once per input-channel tile and phase
    P = _pack(G, cout_g, cin_g, mod)
    Gp, ci, co = G // P, cin_g * P, cout_g * P
    cfg = _pruned(in_t[_gemm_cls(in_t, case)], in_p, CIN_G=ci, COUT_G=co)
    axes = [_phases(size, k, s, p, d) for size, k, s, p, d in
            zip(g["in_sp"], g["k"], g["stride"], g["padding"], g["dilation"])]
    ld = cdiv(ci, 16) * 16
    total = 0
    for combo in _product(axes):
        rows = math.prod(a[1] for a in combo)
        ptaps = math.prod(a[6] for a in combo)
        Mp = N * rows
        if ptaps:
            total += y_el * cdiv(ci, cfg["BLOCK_N"]) + Gp * ptaps * co * ld * cdiv(Mp, cfg["BLOCK_M"])
    out["bwd_input"] = e * (total + x_el + (2 * y_el if copy else 0) + w_el + Gp * taps * co * ld)

    # weight gradient: one program per (cout tile, cin tile x tap, group x split); fp32 workspace
    P = _pack(G, cin_g, cout_g, mod)
    Gp, ci, co = G // P, cin_g * P, cout_g * P
    cfg = _pruned(wt_t[_gemm_cls(wt_t, case)], wt_p, COUT_G=co, CIN_G=ci)
    # the launchers' own split rule: kernels.conv2d's, which kernels.conv3d calls with (KD * KH, KW) taps
    from kernels.conv2d import _weight_grad_split

    k2 = (math.prod(g["k"][:-1]), g["k"][-1])
    split = _weight_grad_split(M, co, ci, *k2, Gp, _torch_dtype(case), sms, case.dtype == "tf32")
    split = cdiv(M, cdiv(M, split))
    ws = split * g["c_out"] * ci * taps
    loads = y_el * cdiv(ci, cfg["BLOCK_N"]) * taps + M * ci * Gp * taps * cdiv(co, cfg["BLOCK_M"])
    reduce_ = (ws + g["c_out"] * ci * taps) * acc if split > 1 else 0  # ws.sum(0): read, write fp32
    out["bwd_weight"] = e * (loads + (2 * (x_el + y_el) if copy else 0) + w_el) + acc * ws + reduce_ + (
        acc * g["c_out"] * ci * taps)  # the .to(dtype) reads the fp32 sum
    return out


def _product(axes):
    if not axes:
        yield ()
        return
    for a in axes[0]:
        for rest in _product(axes[1:]):
            yield (a,) + rest


# ------------------------------------------------------------------------------ depthwise (2-D)
def depthwise_passes(case: Case, sms: int) -> Optional[Dict[str, int]]:
    """Tiled traffic of kernels.depthwise: a program owns BLOCK_H rows x BLOCK_C channels x a run
    of columns and loads, per filter row, one BLOCK_IW-wide aligned segment per (row, channel) for
    every KC taps (the segment holds their halo)."""
    if case.layer.d:
        return None
    from kernels import depthwise as dwk
    from kernels._common import config_class

    L = case.layer
    e, acc = ELEMENT_BYTES[case.dtype], 4
    cfg = dwk.DW_CONFIGS[config_class(dwk.DW_CONFIGS, KERNEL_DTYPES[case.dtype])][0].kwargs  # the default
    BH, BC, BW, BIW = cfg["BLOCK_H"], cfg["BLOCK_C"], cfg["BLOCK_W"], cfg["BLOCK_IW"]
    N, C, H, W, K = case.batch, L.c_out, L.h, L.w, L.k
    OH, OW = case.out_hw
    s, d = L.stride, L.dilation
    x_el, y_el, taps = N * C * H * W, N * C * OH * OW, K * K
    # forward (the KC formulas are the kernels' own: see _dw_fwd_kernel / _dw_bwd_input_kernel)
    cols = dwk.out_cols(cfg, s)
    kc = (BIW - 8 - (cols - 1) * s) // d + 1
    progs = dwk.spatial_tiles(cfg, N, OH, OW, s) * cdiv(C, BC)
    fwd = progs * K * cdiv(K, kc) * BH * BC * BIW + progs * taps * BC + y_el
    # input gradient: programs tile the input; segments of dy
    kcb = (s * (BIW - 8) - (BW - 1)) // d + 1
    progs_b = dwk.spatial_tiles(cfg, N, H, W, out_tile=False) * cdiv(C, BC)
    bin_ = progs_b * K * cdiv(K, kcb) * BH * BC * BIW + progs_b * taps * BC + x_el
    # weight gradient: split over the N * OH rows (kernels.depthwise.weight_grad_split); per (row tile, column tile) dy once and the input segments per
    # filter row; fp32 workspace: zero fill, a read-modify-write per tile and tap, the split sum
    rows = N * OH
    split = dwk.weight_grad_split(rows, C, taps, sms)
    split = cdiv(rows, cdiv(rows, split))
    tiles = cdiv(C, BC) * split * cdiv(cdiv(rows, split), BH) * cdiv(OW, cols)
    bwt = tiles * (BH * BC * BW + K * cdiv(K, kc) * BH * BC * BIW)
    ws = split * taps * C
    bwt_bytes = e * bwt + acc * (ws + tiles * taps * BC * 2 + ws + 2 * taps * C) + e * taps * C
    return {"fwd": e * fwd, "bwd_input": e * bin_, "bwd_weight": bwt_bytes}


# ------------------------------------------------------------------------------ deformable
def deform_passes(case: Case, sms: int) -> Dict[str, int]:
    """Tiled traffic of kernels.deform: 4 corner loads per bilinear sample (channels_last), the
    offsets (and mask) once per pixel tile and tap, fp32 split-K workspace for the weight gradient,
    fp32 atomics (one per corner) into a zeroed grad-input workspace for the data gradient."""
    from kernels import deform as dk
    from kernels._common import config_class

    L = case.layer
    e, acc = ELEMENT_BYTES[case.dtype], 4
    kd, tf32 = KERNEL_DTYPES[case.dtype], case.dtype == "tf32"
    N, C_in, C_out, K = case.batch, L.c_in, L.c_out, L.k
    OH, OW = case.out_hw
    G, og = L.groups, L.offset_groups
    cin_g, cout_g, cpog = C_in // G, C_out // G, C_in // og
    seg = math.gcd(cin_g, cpog)
    n_seg = cin_g // seg
    taps, M = K * K, N * OH * OW
    aux = 2 + (L.deform == "v2")  # offset (dy, dx) and mask per tap, pixel and offset group
    x_el, y_el, w_el = N * C_in * L.h * L.w, N * C_out * OH * OW, C_out * cin_g * taps
    aux_el = M * taps * og * aux
    samples = M * taps * C_in
    copy = 2 * x_el if case.layout == "nchw" else 0
    # forward: one program per (pixel tile, output-channel block of the group, group)
    cls = config_class(dk.FWD_CONFIGS, kd, tf32)
    cfg = dk.FWD_CONFIGS[cls][0].kwargs
    nt = cdiv(cout_g, dk._wide_block(cout_g, cls))
    fwd = e * (nt * (4 * samples + aux_el) + w_el * cdiv(M, cfg["BLOCK_M"]) + y_el + copy)
    # data gradient: one program per (pixel tile, offset group x tap), channel blocks inside
    cls = config_class(dk.DATA_CONFIGS, kd, tf32)
    cfg = dk.DATA_CONFIGS[cls][0].kwargs
    nb_og = (cpog // seg) * cdiv(seg, cfg["BLOCK_N"])  # channel blocks per offset group, each re-reads dY
    data = e * (y_el * taps * og * nb_og // G + w_el * cdiv(M, cfg["BLOCK_M"]) + 4 * samples
                + aux_el + aux_el + x_el + copy) + acc * (4 * samples + 2 * x_el)
    # weight gradient: one program per (cout block, tap x segment x cin block, group x split)
    cls = config_class(dk.WEIGHT_CONFIGS, kd, tf32)
    cfg = dk.WEIGHT_CONFIGS[cls][0].kwargs
    mt = cdiv(cout_g, dk._wide_block(cout_g, cls))
    cb = n_seg * cdiv(seg, cfg["BLOCK_N"])
    split = gemm_split_k(M, cdiv(cout_g, 64) * cdiv(cin_g, 64) * taps * G, sms)
    split = cdiv(M, cdiv(M, split))
    wgt = e * (y_el * taps * cb + mt * (4 * samples + M * taps * aux * cb * G) + copy + w_el) \
        + acc * (split * w_el + ((split + 1) * w_el if split > 1 else 0) + w_el)
    return {"fwd": fwd, "bwd_input": data, "bwd_weight": wgt}


# ------------------------------------------------------------------------------ per case
def tiled_bytes(case: Case, mode: str, sms: int = 132) -> Optional[int]:
    """Bytes the default-config kernels of ``case`` load and store in ``mode`` (module doc), or
    None when no kernel model exists for the family (yet)."""
    fam = case.family
    if fam == "roi":  # the compulsory model already counts the 4 corner loads of every sample
        return case.bytes_moved(mode)
    if fam in ("depthwise", "depthwise3d"):
        p = depthwise_passes(case, sms)
    elif fam == "deform":
        p = deform_passes(case, sms)
    elif case.layer.d:  # conv3d: the 2-D implicit-GEMM model with kernels.conv3d's default configs, when
        try:            # it has conv2d's three tables; None when it is missing or tiles differently
            p = implicit_gemm_passes(case, sms)
        except (KeyError, AttributeError, TypeError, ValueError):
            p = None
    else:  # standard, grouped, dilated, subpixel: implicit GEMM (kernels.conv2d)
        p = implicit_gemm_passes(case, sms)
        if p is not None and fam == "subpixel":
            # kernels.conv2d fuses the shuffle into the forward's store (no copy) and, from
            # _SUBPIXEL_FUSED_MIN_CHANNELS shuffled channels up, into the input gradient's loads; the
            # weight gradient (and a narrower input gradient) unshuffles grad_output once: one read
            # and one write of it each
            from kernels.conv2d import _SUBPIXEL_FUSED_MIN_CHANNELS

            s = case.shapes()
            copy = 2 * _numel(s["output"]) * ELEMENT_BYTES[case.dtype]
            narrow = s["output"][1] < _SUBPIXEL_FUSED_MIN_CHANNELS  # shuffled channels
            p = dict(p, bwd_input=p["bwd_input"] + (copy if narrow else 0), bwd_weight=p["bwd_weight"] + copy)
        if p is not None and case.layer.transposed:  # conv_transpose: the roles of the passes swap
            p = {"fwd": p["bwd_input"], "bwd_input": p["fwd"], "bwd_weight": p["bwd_weight"]}
    if p is None:
        return None
    bwd = p["bwd_input"] + p["bwd_weight"]
    return {"fwd": p["fwd"], "bwd": bwd, "fwd_bwd": p["fwd"] + bwd}[mode]


def _numel(shape) -> int:
    return math.prod(shape)


def bound_ms(flops: int, n_bytes: Optional[int], peak_tflops_: float, gbps: float) -> Optional[float]:
    """Roofline bound, ms: max(flops / peak, bytes / bandwidth)."""
    if n_bytes is None:
        return None
    return max(flops / (peak_tflops_ * 1e12), n_bytes / (gbps * 1e9)) * 1e3


def percent_of_roofline(bound: Optional[float], measured_ms: Optional[float]) -> Optional[float]:
    """bound / measured * 100: 100 % = at the roofline."""
    if not bound or not measured_ms:
        return None
    return 100.0 * bound / measured_ms


def model(case: Case, mode: str, gpu: str = DEFAULT_GPU) -> dict:
    """Roofline fields of one (case, mode) row: flops, bytes, tiled_bytes, intensity,
    tiled_intensity, peak_tflops, hbm_gbps, bound_ms, tiled_bound_ms, bound_by, roofline_gpu."""
    g = GPUS[gpu]
    flops, nb = case.flops(mode), case.bytes_moved(mode)
    tb = tiled_bytes(case, mode, g["sms"])
    peak = peak_tflops(case, gpu)
    b = bound_ms(flops, nb, peak, g["hbm_gbps"])
    return {"flops": flops, "bytes": nb, "tiled_bytes": tb, "intensity": flops / nb if nb else None,
            "tiled_intensity": flops / tb if tb else None, "peak_tflops": peak, "hbm_gbps": g["hbm_gbps"],
            "bound_ms": b, "tiled_bound_ms": bound_ms(flops, tb, peak, g["hbm_gbps"]),
            "bound_by": "compute" if flops / (peak * 1e12) >= nb / (g["hbm_gbps"] * 1e9) else "memory",
            "roofline_gpu": gpu}
