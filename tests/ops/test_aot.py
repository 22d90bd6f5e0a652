"""Ahead-of-time compile check (no GPU needed): the default config of every build the launchers
can select (dtype x TF32 on/off x 32/64-bit index x the launch-time specialisations of typical
problems) compiles for sm_80 and sm_90, spills nothing, and GEMM kernels use tensor cores for
fp16/bf16. The interpreter accepts code the GPU compiler rejects, hence this test.
``python -m kernels.inspect --all-configs`` covers every shipped config (not run here)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.aot


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels.inspect", "--problems-only", "--json", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    rows_ok = proc.returncode == 0
    return rows, rows_ok, proc.stdout[-3000:]


def test_every_build_compiles_for_sm80_sm90(rows):
    rows, _, _ = rows
    errors = [(r["kernel"], r["dtype"], r["arch"], r["build"], r["error"]) for r in rows if not r["ok"]]
    assert not errors, errors
    assert {r["arch"] for r in rows} == {80, 90}
    kernels = {r["kernel"] for r in rows}
    assert {"conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight", "depthwise_fwd", "depthwise_bwd_input",
            "depthwise_bwd_weight", "deform_fwd", "deform_bwd_data", "deform_bwd_weight", "bilinear_gather_fwd",
            "bilinear_gather_bwd", "deform_roi_pool_fwd", "deform_roi_pool_bwd", "conv3d_fwd", "conv3d_bwd_input",
            "conv3d_bwd_weight"} <= kernels
    for r in rows:
        assert r["registers"] > 0


def test_builds_cover_tf32_index64_and_specialisations(rows):
    rows, _, _ = rows
    fwd32 = {r["build"] for r in rows if r["kernel"] == "conv2d_fwd" and r["dtype"] == "fp32" and r["arch"] == 90
             and ",tma" not in r["build"]}
    assert fwd32 == {f"{p}{s},{t}{i}" for p in ("nchw", "nhwc", "odd") for t in ("tf32", "ieee") for i in ("", ",i64")
                     for s in ("", ",subpixel3" if p == "odd" else ",subpixel2")}
    assert any(r["index64"] for r in rows if r["kernel"] == "depthwise_fwd")
    # the TF32-off build takes its own (smaller) config table
    ieee = {r["config"] for r in rows if r["kernel"] == "conv2d_fwd" and r["tf32"] is False}
    tf32 = {r["config"] for r in rows if r["kernel"] == "conv2d_fwd" and r["tf32"] is True}
    assert ieee and tf32 and ieee != tf32


def test_tma_builds_for_sm90_only(rows):
    """The conv2d forward's TMA variant (captured as on an sm_90 GPU, kernels._common.force_tma):
    one build per TMA config class for channels_last, compiled for sm_90 only, its default config a
    TMA one, with wgmma, and its weight tiles counted as bulk (TMA) bytes. 3 compiles."""
    rows, _, _ = rows
    tma = [r for r in rows if ",tma" in r["build"]]
    assert {(r["kernel"], r["dtype"], r["arch"], r["build"]) for r in tma} == {
        ("conv2d_fwd", "fp16", 90, "nhwc,tma"), ("conv2d_fwd", "bf16", 90, "nhwc,tma"),
        ("conv2d_fwd", "fp32", 90, "nhwc,tma,tf32")}
    for r in tma:
        assert r["ok"] and r["default"] and ",tma," in r["config"] and r["tensor_cores"] == "wgmma", r
        assert r["spill_bytes"] == 0 and r["vector_share"] >= 0.99, r


def test_bulk_copies_count_as_vectorised_load_bytes():
    """TMA loads carry no size in their instruction: their bytes are the mbarrier's expected
    transaction counts; TMA stores are not loads."""
    from kernels import inspect

    ld = "ld.global.b16 { %rs1 }, [ %rd1 + 0 ];\n"
    bulk = ("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r52], 8192;\n"
            "cp.async.bulk.tensor.3d.shared::cta.global.mbarrier::complete_tx::bytes [%r63], [%rd8, {%r1, %r2, %r3}], [%r52];\n")
    assert inspect.vector_share(ld * 4 + bulk) == pytest.approx(8192 / (8192 + 8))
    store = "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%rd1, {%r1, %r2}], [%r3];\n"
    assert inspect.vector_share(ld + store) == 0.0


def test_default_builds_do_not_spill_and_use_tensor_cores(rows):
    rows, ok, stdout = rows
    spilling = [(r["kernel"], r["dtype"], r["arch"], r["build"], r["spill_bytes"]) for r in rows if r["spill_bytes"] > 0]
    assert not spilling, spilling
    for r in rows:
        if r["gemm"] and r["dtype"] in ("fp16", "bf16"):
            assert r["tensor_cores"] in ("mma", "wgmma"), r
    assert ok, stdout


#: The hot kernels (convolution main loops): each is held to the bar in every typical build.
HOT = ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight", "depthwise_fwd", "depthwise_bwd_input",
       "depthwise_bwd_weight", "deform_fwd", "deform_bwd_data", "deform_bwd_weight",
       "conv3d_fwd", "conv3d_bwd_input", "conv3d_bwd_weight")


def test_hot_kernels_load_vectorised(rows):
    """The static speed proxy: every hot kernel moves >= 80% of its global-load bytes with
    vectorised instructions (ld.global.v2/v4, 8/16-byte cp.async, TMA) in each default fp16/bf16
    build a typical call compiles (64 channels, NCHW and channels_last, sm_80 and sm_90), and the
    GEMM ones use tensor cores there."""
    rows, _, _ = rows
    typical = {}
    for r in rows:
        if r["ok"] and r["default"] and r["dtype"] in ("fp16", "bf16") and not r["index64"] \
                and r["build"].split(",")[0] in ("nchw", "nhwc"):
            typical.setdefault(r["kernel"], []).append(r)
    assert set(HOT) <= set(typical), sorted(typical)
    for name in HOT:
        builds = typical[name]
        assert {(r["arch"], r["build"].split(",")[0]) for r in builds} == {(a, p) for a in (80, 90)
                                                                           for p in ("nchw", "nhwc")}
        short = [(r["dtype"], r["arch"], r["build"], r["vector_share"]) for r in builds if r["vector_share"] < 0.8]
        assert not short, (name, short)
        if builds[0]["gemm"]:
            assert all(r["tensor_cores"] in ("mma", "wgmma") for r in builds), name


def test_depthwise3d_builds_load_vectorised(rows):
    """The 3-D depthwise kernels (X3D's channelwise 3x3x3; their problems in kernels.inspect) are
    built for every typical problem and held to the same bar: >= 80% of global-load bytes
    vectorised in each default fp16/bf16 build (NCDHW and channels_last_3d, sm_80 and sm_90)."""
    rows, _, _ = rows
    for name in ("depthwise3d_fwd", "depthwise3d_bwd_input", "depthwise3d_bwd_weight"):
        builds = [r for r in rows if r["kernel"] == name and r["ok"] and r["default"] and not r["index64"]
                  and r["dtype"] in ("fp16", "bf16") and r["build"].split(",")[0] in ("nchw", "nhwc")]
        assert {(r["arch"], r["build"].split(",")[0]) for r in builds} == {(a, p) for a in (80, 90)
                                                                           for p in ("nchw", "nhwc")}, name
        short = [(r["dtype"], r["arch"], r["build"], r["vector_share"]) for r in builds if r["vector_share"] < 0.8]
        assert not short, (name, short)


def test_aot_alias_and_summary():
    """``python -m kernels.aot`` is the same command; the per-kernel summary reports the proxies."""
    from kernels import aot, inspect

    assert aot.main is inspect.main
    res = [inspect.Result("k", "fp16", 90, "c", True, build, True, registers=r, spill_bytes=0, shared_bytes=1024,
                          tensor_cores="wgmma", vector_share=v, gemm=True)
           for build, r, v in (("nchw", 100, 0.9), ("nhwc", 120, 0.5), ("odd", 200, 0.0))]
    line = next(line for line in inspect.summary(res).splitlines() if line.startswith("k "))
    assert line.split()[1:6] == ["50%", "wgmma", "200", "0", "1024"] and "(< 80%)" in line


_SPECIALISE = """
import json
from kernels import conv2d
from kernels.inspect import _specialise, capture
launches = capture(problems=("nchw", "nhwc"), dtypes=("fp16",))
names = conv2d._conv2d_fwd_kernel.arg_names
out = {}
for problem in ("nchw", "nhwc"):
    args, kwargs = launches[("conv2d_fwd", "fp16", problem)]
    kw = dict(kwargs, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3)
    sig, _, attrs, _ = _specialise(conv2d._conv2d_fwd_kernel, args, kw, 90)
    out[problem] = {"sig": sig, "attrs": {n: attrs.get((names.index(n),)) for n in ("x_ptr", "w_ptr", "stride_xw",
                                                                                    "COUT_LD")}}
print(json.dumps(out))
"""


def test_capture_specialises_like_a_launch():
    """The builds come from Triton's own binder: 16-byte aligned pointers and multiples of 16 are
    marked so (which decides vectorisation). The forward reads activations channels-innermost in
    both layouts (NCHW is converted at the op boundary), so the NCHW build is the channels_last one:
    no channel stride, a pixel stride divisible by 16, the packed weight's rows 16-aligned."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, not interpreted
    proc = subprocess.run([sys.executable, "-c", _SPECIALISE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for problem in ("nchw", "nhwc"):
        sig, attrs = got[problem]["sig"], got[problem]["attrs"]
        assert sig["x_ptr"] == "*fp16" and sig["w_ptr"] == "*fp16" and sig["stride_xw"] == "i32", (problem, sig)
        assert "stride_xc" not in sig, sig
        for name in ("x_ptr", "w_ptr", "stride_xw", "COUT_LD"):
            assert attrs[name] == [["tt.divisibility", 16]], (problem, name, attrs)
    assert got["nchw"]["attrs"] == got["nhwc"]["attrs"]
