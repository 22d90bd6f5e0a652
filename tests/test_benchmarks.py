"""The benchmark harness (benchmarks/): suite, validation, dry run, formulas, report. No GPU needed;
no timings are taken here. The results JSON used for the report is a synthetic fixture written
to pytest's tmp_path (never to benchmarks/results/)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import bench, report
from benchmarks.suite import FAMILIES, Case, Layer, build_suite, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_suite_builds_and_every_case_validates():
    cases = build_suite()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert {c.family for c in cases} == set(FAMILIES)
    bad = [(c.id, why) for c in cases for why in [validate(c)] if why]
    assert not bad, bad[:5]
    layers_ = {c.layer for c in cases}
    models = {L.model for L in layers_}
    assert {"resnet50", "resnext50_32x4d", "mobilenet_v2", "convnext_t", "replknet31b", "deeplabv3",
            "resnet50_dcn", "det_dcn"} <= models
    assert {31, 29, 27, 13} <= {L.k for L in layers_ if L.model == "replknet31b"}
    assert {2, 4, 12, 24, 36} <= {L.dilation for L in layers_ if L.family == "dilated"}
    assert {1, 2} == {L.stride for L in layers_ if L.model == "mobilenet_v2"}
    assert {"v1", "v2"} == {L.deform for L in layers_ if L.family == "deform"}
    assert all(L.groups == 32 for L in layers_ if L.family == "grouped")
    # every layer appears at both batches, all dtypes and both layouts
    assert len(cases) == len(layers_) * 2 * 4 * 2


def test_filters_and_stable_ids():
    cases = build_suite(["depthwise"], ["bf16"], [1], ["cl"], limit=3)
    assert len(cases) == 3
    assert cases[0].id == "depthwise/mobilenet_v2/c32_112_k3/b1/bf16/cl"
    assert all(c.family == "depthwise" and c.dtype == "bf16" and c.batch == 1 and c.layout == "cl" for c in cases)
    with pytest.raises(ValueError):
        build_suite(["nope"])


def test_invalid_cases_are_reported():
    bad_groups = Case(Layer("grouped", "x", "bad", 30, 64, 8, 8, 3, 1, 1, 1, 32), 1, "fp32", "nchw")
    too_small = Case(Layer("dilated", "x", "tiny", 16, 16, 4, 4, 3, 1, 0, 4), 1, "fp32", "nchw")
    assert "divisible" in validate(bad_groups)
    assert "not positive" in validate(too_small)


def _fake_compile(ok=True):
    from kernels.inspect import Result

    def fake(job):
        module, name, dtype, index, arch = job
        return Result(name, dtype, arch, "cfg", True, ok, registers=64 if ok else -1, spill_bytes=0,
                      error="" if ok else "CompilationError: boom")
    return fake


def test_dry_run_exit_status(monkeypatch, capsys):
    good = build_suite(["standard"], ["fp16"], [1], ["nchw"], limit=2)
    monkeypatch.setattr(bench, "_compile", _fake_compile(ok=True))
    assert bench.dry_run(good) == 0
    invalid = Case(Layer("standard", "x", "bad", 64, 64, 2, 2, 7), 1, "fp16", "nchw")
    assert bench.dry_run(good + [invalid]) == 1
    monkeypatch.setattr(bench, "_compile", _fake_compile(ok=False))
    assert bench.dry_run(good) == 1
    out = capsys.readouterr().out
    assert "INVALID standard/x/bad" in out and "COMPILE ERROR" in out and "dry run FAILED" in out


def test_dry_run_cli_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--dry-run", "--family", "depthwise",
                           "--dtype", "bf16", "--batch", "1", "--layout", "nchw"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "dry run OK" in out and "18 cases, 18 valid" in out
    for name in ("depthwise_fwd", "depthwise_bwd_input", "depthwise_bwd_weight"):
        line = next(l for l in out.splitlines() if l.strip().startswith(name))
        regs = int(line.split()[3])
        assert " bf16 " in line and " 90 " in line and regs > 0 and line.rstrip().endswith("ok"), line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_timing_without_gpu_says_use_dry_run(capsys):
    assert bench.main(["--family", "standard", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert "GPU" in err and "--dry-run" in err


def test_geomean():
    assert report.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert report.geomean([1.0, 10.0, 100.0]) == pytest.approx(10.0)
    assert report.geomean([0.5, 2.0, None]) == pytest.approx(1.0)
    assert report.geomean([None, 0.0]) is None


def test_formulas_for_resnet50_layer():
    case = next(c for c in build_suite(["standard"], ["fp32"], [32], ["nchw"]) if c.layer.name == "c64_56")
    n, c, hw, k = 32, 64, 56, 3
    fwd_flops = 2 * n * hw * hw * c * c * k * k
    assert case.flops("fwd") == fwd_flops == 7_398_752_256
    assert case.flops("bwd") == 2 * fwd_flops and case.flops("fwd_bwd") == 3 * fwd_flops
    act, w = n * c * hw * hw, c * c * k * k
    assert case.bytes_moved("fwd") == (act + w + act) * 4
    assert case.bytes_moved("bwd") == (act + act + w + act + w) * 4
    assert bench.ratio(2.0, 1.0) == 2.0 and bench.ratio(None, 1.0) is None
    assert bench.tflops(fwd_flops, 1.0) == pytest.approx(7.398752256)
    assert bench.gbps(case.bytes_moved("fwd"), 0.5) == pytest.approx((2 * act + w) * 4 / 0.5e-3 / 1e9)
    half = Case(case.layer, 32, "bf16", "cl")
    assert half.bytes_moved("fwd") * 2 == case.bytes_moved("fwd")
    dcn = next(c for c in build_suite(["deform"], ["fp16"], [1], ["nchw"]) if c.layer.deform == "v2")
    s = dcn.shapes()
    assert s["offset"][1] == 18 and s["mask"][1] == 9 and s["offset"][2:] == s["output"][2:]


def _synthetic_results(path):
    """SYNTHETIC fixture: made-up timings, for rendering tests only."""
    rows = []
    cases = build_suite(["depthwise"], ["bf16"], [1], ["nchw"], limit=2) + \
        build_suite(["deform"], ["fp16"], [1], ["nchw"], limit=1)
    for i, case in enumerate(cases):
        for mode, peer_ms in zip(bench.MODES, (2.0, 4.0, 8.0)):
            ours_ms = peer_ms / (1 + i)  # ratios 1, 2, 3 per case
            row = dict(case.as_dict(), mode=mode, peer="synthetic", peer_note="", error="", flops=case.flops(mode),
                       bytes=case.bytes_moved(mode), ours_median_ms=ours_ms, ours_p20_ms=ours_ms * 0.9,
                       ours_p80_ms=ours_ms * 1.1, peer_median_ms=peer_ms, peer_p20_ms=peer_ms * 0.9,
                       peer_p80_ms=peer_ms * 1.1, ours_peak_mb=1.0, peer_peak_mb=2.0)
            row["ratio"] = bench.ratio(peer_ms, ours_ms)
            row["ours_gbps"], row["ours_tflops"] = bench.gbps(row["bytes"], ours_ms), bench.tflops(row["flops"], ours_ms)
            rows.append(row)
    env = {"device": "synthetic-test-fixture", "torch": torch.__version__, "synthetic": "test fixture, not a measurement"}
    path.write_text(json.dumps({"environment": env, "results": rows}))


def test_report_renders_markdown_and_png(tmp_path):
    res = tmp_path / "synthetic.json"
    _synthetic_results(res)
    assert report.main([str(res)]) == 0
    md = (tmp_path / "synthetic.md").read_text()
    assert "SYNTHETIC" in md and "| depthwise | 2 | 1.41 | 1.41 | 1.41 |" in md  # geomean(1, 2) = 1.414
    assert "| deform | 1 | 3.00 | 3.00 | 3.00 |" in md  # third case: ratio 3
    for fam in ("depthwise", "deform"):
        png = tmp_path / f"synthetic_{fam}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"synthetic_{fam}.png" in md
    s = report.summarize(json.loads(res.read_text())["results"])
    assert s["family"]["depthwise"]["fwd"] == pytest.approx(math.sqrt(2))
