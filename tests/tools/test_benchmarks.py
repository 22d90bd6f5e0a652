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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
            "resnet50_dcn", "det_dcn", "faster_rcnn_r50_fpn"} <= models
    assert {31, 29, 27, 13} <= {L.k for L in layers_ if L.model == "replknet31b"}
    assert {2, 4, 12, 24, 36} <= {L.dilation for L in layers_ if L.family == "dilated"}
    assert {1, 2} == {L.stride for L in layers_ if L.model == "mobilenet_v2"}
    assert {"v1", "v2"} == {L.deform for L in layers_ if L.family == "deform"}
    roi = [L for L in layers_ if L.family == "roi"]  # R50-FPN box head: RoI Align and deformable, P2-P5
    assert {"", "v1"} == {L.deform for L in roi} and {4, 8, 16, 32} == {L.stride for L in roi}
    assert all((L.rois, L.c_in, L.k, L.sampling_ratio) == (512, 256, 7, 2) for L in roi)
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

    def fake(archs, kernels_filter, dtypes, problems, workers):
        return [Result(name, dt, arch, "cfg", True, "nchw", ok, registers=64 if ok else -1, spill_bytes=0,
                       error="" if ok else "CompilationError: boom")
                for name in kernels_filter for dt in dtypes for arch in archs]
    return fake


def test_dry_run_exit_status(monkeypatch, capsys):
    good = build_suite(["standard"], ["fp16"], [1], ["nchw"], limit=2)
    monkeypatch.setattr("kernels.inspect.run", _fake_compile(ok=True))
    assert bench.dry_run(good) == 0
    invalid = Case(Layer("standard", "x", "bad", 64, 64, 2, 2, 7), 1, "fp16", "nchw")
    assert bench.dry_run(good + [invalid]) == 1
    monkeypatch.setattr("kernels.inspect.run", _fake_compile(ok=False))
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
        regs = int(line.split()[4])
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


def test_roi_family_shapes_formulas_boxes_and_dry_run(monkeypatch, capsys):
    case = next(c for c in build_suite(["roi"], ["bf16"], [1], ["nchw"]) if c.layer.name == "p3_100x152_r512_deform")
    s = case.shapes()
    assert s == {"input": (1, 256, 100, 152), "rois": (512, 5), "offset": (512, 2, 7, 7), "output": (512, 256, 7, 7)}
    samples = 512 * 256 * 49 * 4  # sampling ratio 2: 4 samples per bin
    assert case.flops("fwd") == 8 * samples and case.flops("fwd_bwd") == 3 * case.flops("fwd")
    assert case.bytes_moved("fwd") == (4 * samples + 512 * 2 * 49 + 512 * 256 * 49) * 2
    boxes = bench.roi_boxes(Case(case.layer, 2, "fp32", "nchw"), "cpu")
    assert boxes.shape == (512, 5) and set(boxes[:, 0].tolist()) == {0.0, 1.0}
    assert (boxes[:, 1:3] >= 0).all() and (boxes[:, 3] <= 1216).all() and (boxes[:, 4] <= 800).all()
    assert (boxes[:, 3:] > boxes[:, 1:3]).all()
    monkeypatch.setattr("kernels.inspect.run", _fake_compile(ok=True))
    assert bench.dry_run([case]) == 0
    out = capsys.readouterr().out
    for name in ("deform_roi_pool_fwd", "deform_roi_pool_bwd", "deform_roi_bwd_offset"):
        assert f"  {name} " in out
    assert "peer: torchvision roi_align" in out


def _synthetic_results(path):
    """SYNTHETIC fixture: made-up timings, for rendering tests only."""
    rows = []
    cases = build_suite(["depthwise"], ["bf16"], [1], ["nchw"], limit=2) + \
        build_suite(["deform"], ["fp16"], [1], ["nchw"], limit=1)
    for i, case in enumerate(cases):
        for mode, peer_ms in zip(bench.MODES, (2.0, 4.0, 8.0)):
            ours_ms = peer_ms / (1 + i)  # ratios 1, 2, 3 per case
            row = dict(case.as_dict(), mode=mode, peer="synthetic", peer_note="", error="",
                       **bench.roofline_fields(case, mode, "H200"), ours_median_ms=ours_ms, ours_p20_ms=ours_ms * 0.9,
                       ours_p80_ms=ours_ms * 1.1, peer_median_ms=peer_ms, peer_p20_ms=peer_ms * 0.9,
                       peer_p80_ms=peer_ms * 1.1, ours_peak_mb=1.0, peer_peak_mb=2.0)
            row["ratio"] = bench.ratio(peer_ms, ours_ms)
            row["ours_gbps"], row["ours_tflops"] = bench.gbps(row["bytes"], ours_ms), bench.tflops(row["flops"], ours_ms)
            rows.append(bench.add_percentages(row))
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
    rows = json.loads(res.read_text())["results"]
    s = report.summarize(rows)
    assert s["family"]["depthwise"]["fwd"] == pytest.approx(math.sqrt(2))
    # roofline: per-row bound and % in the table, per-family geometric mean of the %
    deform_fwd = next(r for r in rows if r["family"] == "deform" and r["mode"] == "fwd")
    pct = 100 * deform_fwd["bound_ms"] / (2.0 / 3)  # synthetic convlab time 2/3 ms
    assert deform_fwd["pct_roofline"] == pytest.approx(pct)
    assert f"| deform | {pct:.0f} |" in md and "% of the roofline bound" in md
    assert f"| {deform_fwd['bound_ms']:.4f} ({deform_fwd['tiled_bound_ms']:.4f}) | {pct:.0f} / " in md


# ------------------------------------------------------------------ partial runs: selection, resume, merge
def _select(*argv):
    return [c.id for c in bench.select_cases(bench.parse_args(list(argv)))]


def test_match_globs_and_priority_order():
    globs = ("depthwise/*k31*/b1/bf16/nchw", "standard/*/b1/bf16/cl")
    ids = _select("--match", *globs, "--order", "match")  # priority: the first glob's cases first
    assert ids[0] == "depthwise/replknet31b/c128_56_k31/b1/bf16/nchw" and ids[-1] == "standard/resnet50/c512_7/b1/bf16/cl"
    assert len(ids) == 1 + 7
    suite_order = _select("--match", *globs)  # suite order: standard layers come first in the suite
    assert suite_order[0] == "standard/resnet50/c64_56/b1/bf16/cl" and sorted(suite_order) == sorted(ids)
    assert _select("--match", "nothing/*") == []


def test_session_preset_order_covers_every_family_first():
    from benchmarks.suite import SESSION_CORE, SESSION_PRIORITY, match_case

    ids = _select("--preset", "session")
    assert len(ids) == len(set(ids)) == len(build_suite())  # the whole suite, each case once
    assert all(i.startswith("deform/resnet50_dcn/") and "/b32/fp32/nchw" in i for i in ids[:6])
    assert all(i.startswith("deform/resnet50_dcn/") and "/b32/fp16/nchw" in i for i in ids[6:12])
    newer = {"conv3d", "depthwise3d", "subpixel"}  # added after the core list (issue 17)
    assert {i.split("/")[0] for i in ids[:18]} == set(FAMILIES) - {"roi"} - newer  # every family vs its peer, NCHW
    assert {i.rsplit("/", 1)[1] for i in ids[18:36]} == {"cl"}  # then channels_last
    assert {"k3", "k7", "k31"} <= {i.split("/")[2].rsplit("_", 1)[1] for i in ids[:18] if i.startswith("depthwise")}
    cases = build_suite()
    for g in SESSION_PRIORITY:  # a glob matching nothing would silently drop its cases from the order
        assert any(match_case(c.id, [g]) is not None for c in cases), g
    assert len(_select("--preset", "session", "--match", *SESSION_CORE)) == 36
    # low priority after the core: RoI pooling vs roi_align, R50-FPN P3, fp32 then bf16
    assert [i.split("/")[2] + "/" + i.split("/")[4] for i in ids[36:40]] == [
        "p3_100x152_r512_align/fp32", "p3_100x152_r512_deform/fp32", "p3_100x152_r512_align/bf16",
        "p3_100x152_r512_deform/bf16"]
    # then a few cases of each newer family, before the rest of the suite
    assert {i.split("/")[0] for i in ids[40:53]} == newer and ids[53].split("/")[0] not in newer
    assert "conv3d/unet3d/up2_c128_32/b1/bf16/cl" in ids[40:53] and "subpixel/espcn/x3_c32_360x640/b32/bf16/cl" in ids


def test_shards_partition_the_selection():
    whole = _select("--preset", "session", "--limit", "20")
    shards = [_select("--preset", "session", "--limit", "20", "--shard", f"{i}/3") for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(whole) and shards[0][:2] == [whole[0], whole[3]]
    with pytest.raises(ValueError):
        _select("--shard", "3/3")


def test_quantiles_and_cpu_timer():
    assert bench._quantile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert bench._quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)
    calls = []
    t = bench.cpu_time(lambda: calls.append(1), warmup=0, rep=0)
    assert len(calls) == 1 and t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]


def _fake_rows(case, *a, **k):
    """SYNTHETIC rows for one case (no kernel runs): ratio 2 in every mode."""
    return [dict(case.as_dict(), mode=m, error="", ours_median_ms=1.0, peer_median_ms=2.0, ratio=2.0,
                 measured_at="synthetic") for m in bench.MODES]


def test_results_written_after_every_case_and_resumed(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CONVLAB_COMMIT", "c0ffee")
    monkeypatch.setenv("CONVLAB_FAKE_DEVICE", "test-device")
    stem = str(tmp_path / "run")
    seen = []

    def fake(case, *a, **k):  # what a kill during this case would leave on disk
        with open(stem + ".json") as f:
            seen.append(len({r["id"] for r in json.load(f)["results"]}))
        if len(seen) == 3:
            raise KeyboardInterrupt  # the run dies during its third case
        return _fake_rows(case)

    monkeypatch.setattr(bench, "bench_case", fake)
    sel = ["--device", "cpu", "--preset", "rehearsal", "--warmup", "0", "--rep", "0"]
    with pytest.raises(KeyboardInterrupt):
        bench.main(sel + ["--out", stem])
    assert seen == [0, 1, 2]
    first = json.loads(open(stem + ".json").read())
    assert [r["id"] for r in first["results"][::3]] == _select("--preset", "rehearsal")[:2]
    assert first["environment"]["complete"] is False and first["environment"]["code_commit"] == "c0ffee"
    assert len(open(stem + ".csv").read().splitlines()) == 1 + 6

    measured = []
    monkeypatch.setattr(bench, "bench_case", lambda case, *a, **k: measured.append(case.id) or _fake_rows(case))
    assert bench.main(sel + ["--out", str(tmp_path / "second"), "--resume", stem + ".json",
                             str(tmp_path / "missing.json")]) == 0
    second = json.loads((tmp_path / "second.json").read_text())
    assert measured == _select("--preset", "rehearsal")[2:]  # only the case the first run lost
    env = second["environment"]
    assert (env["cases_selected"], env["cases_resumed"], env["cases_measured"], env["complete"]) == (3, 2, 1, True)
    assert {r["resumed_from"] for r in second["results"] if "resumed_from" in r} == {"run.json"}

    # other code, other timing settings or a dirty tree: nothing is resumed
    for var, val, extra in (("CONVLAB_COMMIT", "beef", []), ("CONVLAB_COMMIT", "c0ffee", ["--rep", "5"]),
                            ("CONVLAB_COMMIT", "c0ffee-dirty", [])):
        monkeypatch.setenv(var, val)
        measured.clear()
        assert bench.main(sel + extra + ["--out", str(tmp_path / "third"), "--resume", stem + ".json"]) == 0
        assert len(measured) == 3, (val, extra)


def test_time_budget_stops_before_the_next_case(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(bench, "bench_case", lambda case, *a, **k: _fake_rows(case))
    assert bench.main(["--device", "cpu", "--preset", "rehearsal", "--time-budget", "0",
                       "--out", str(tmp_path / "b")]) == 0
    env = json.loads((tmp_path / "b.json").read_text())["environment"]
    assert env["cases_measured"] == 0 and env["complete"] is False


def test_cpu_device_needs_the_interpreter(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert bench.main(["--device", "cpu", "--preset", "rehearsal"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err


def test_report_merges_partial_files_and_lists_unmeasured(tmp_path):
    by_id = {c.id: c for c in build_suite()}
    core = [by_id[i] for i in report.expected_ids(None)]  # the session's core list, in priority order
    assert len(core) == 36
    env = {"device": "dev", "code_commit": "abc", "date": "2026-01-01T00:00:00", "synthetic": "test fixture"}
    a = {"environment": dict(env, complete=False), "results": sum((_fake_rows(c) for c in core[:2]), [])}
    b_rows = sum((_fake_rows(c) for c in core[1:3]), [])
    for r in b_rows:
        r["ratio"] = 4.0  # core[1] measured again later: the later file wins
    b = {"environment": env, "results": b_rows}
    for name, d in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(d))
    assert report.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--no-plots"]) == 2  # needs --out
    assert report.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--no-plots",
                        "--out", str(tmp_path / "merged")]) == 0
    md = (tmp_path / "merged.md").read_text()
    assert "Merged from 2 files" in md and "SYNTHETIC" in md
    assert {c.family for c in core[:3]} == {"deform"}
    assert "| deform | 3 | 3.17 | 3.17 | 3.17 |" in md  # geomean(2, 4, 4): core[1] counted once, at 4
    merged = report.merge([("a.json", a), ("b.json", b)])
    ratios = {r["id"]: r["ratio"] for r in merged["results"] if r["mode"] == "fwd"}
    assert ratios == {core[0].id: 2.0, core[1].id: 4.0, core[2].id: 4.0}
    assert "**Not yet measured**: 33 of the 36 expected cases" in md
    assert f"| {core[3].id} | - | - | - | - | - | - | - | - | - | - | not yet measured |" in md
    assert f"- {core[0].id}\n" not in md
    # rows written without the roofline fields get them from the model (device "dev": the default H200)
    from benchmarks import roofline
    bound = roofline.model(core[0], "fwd", "H200")["bound_ms"]
    assert f"| {bound:.4f} (" in md and f"| {100 * bound / 1.0:.0f} / " in md
    with pytest.raises(ValueError):
        report.readme_table(merged)  # synthetic: not a measurement


def test_readme_table_says_what_is_not_measured():
    case = build_suite(["deform"], ["fp16"], [32], ["nchw"], limit=1)[0]
    data = {"sources": [("gpu.json", {"device": "NVIDIA H200", "date": "2026-12-01T10:00:00", "code_commit": "0123456789abc"}, 3)],
            "results": [dict(r, source="gpu.json") for r in _fake_rows(case)]}
    table = report.readme_table(data)
    assert "| deform | 1 | 2.00 | 2.00 | 2.00 | NVIDIA H200 | 2026-12-01 | 0123456789 |" in table
    for fam in ("standard", "grouped", "depthwise", "dilated"):
        assert f"| {fam} | 0 | not measured yet |" in table


# ------------------------------------------------------------------ roofline model, newer families (issue 14 / 17)
def _case(cid):
    suite = "tiny" if "/tiny/" in cid else "full"
    return next(c for c in build_suite(suite=suite) if c.id == cid)


def test_roofline_implicit_gemm_by_hand():
    """ResNet-50 c64_56, b32 bf16 NCHW, forward on an H200: the block sizes are read from kernels.conv2d
    (its default bf16 config, BLOCK_N cut to the 64 output channels by its pruner), the rest by hand."""
    from benchmarks import roofline
    from kernels.conv2d import GEMM_CONFIGS

    case = _case("standard/resnet50/c64_56/b32/bf16/nchw")
    cfg = GEMM_CONFIGS["bf16"][0].kwargs
    bm, bn = cfg["BLOCK_M"], min(cfg["BLOCK_N"], 64)
    x = y = 32 * 64 * 56 * 56
    w = 64 * 64 * 9  # packed weight: same size (64 channels, a multiple of 16)
    m = 32 * 56 * 56
    # input once per output-channel tile, packed weight once per pixel tile, output once, the NCHW input
    # copied to channels_last (read + write), the weight packed (read + write)
    tiled = 2 * (x * -(-64 // bn) + w * -(-m // bm) + y + 2 * x + w + w)
    assert roofline.tiled_bytes(case, "fwd") == tiled
    r = roofline.model(case, "fwd", "H200")
    assert r["flops"] == 7_398_752_256 and r["bytes"] == 2 * (2 * x + w)
    assert r["bound_by"] == "compute" and r["bound_ms"] == pytest.approx(7_398_752_256 / 989.4e12 * 1e3)
    assert r["tiled_bound_ms"] == pytest.approx(max(7_398_752_256 / 989.4e12, tiled / 4.8e12) * 1e3)
    assert r["intensity"] == pytest.approx(7_398_752_256 / (2 * (2 * x + w)))
    assert roofline.percent_of_roofline(r["bound_ms"], 2 * r["bound_ms"]) == pytest.approx(50.0)
    assert roofline.percent_of_roofline(r["bound_ms"], None) is None
    # memory-bound on the same GPU: ESPCN's last layer (32 -> 9 channels, x3)
    sp = roofline.model(_case("subpixel/espcn/x3_c32_360x640/b32/bf16/cl"), "fwd", "H200")
    assert sp["bound_by"] == "memory" and sp["bound_ms"] == pytest.approx(sp["bytes"] / 4.8e12 * 1e3)
    # fp32 (TF32 off) runs on CUDA cores, tf32 on tensor cores; H100 SXM has less bandwidth
    assert roofline.peak_tflops(Case(case.layer, 32, "fp32", "nchw"), "H100-SXM") == 66.9
    assert roofline.peak_tflops(Case(case.layer, 32, "tf32", "nchw"), "H100-SXM") == 494.7
    assert roofline.gpu_for_device("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert roofline.gpu_for_device("NVIDIA H200") == "H200" and roofline.gpu_for_device("cpu (no CUDA)") is None


def test_roofline_depthwise_tile_and_halo_by_hand():
    """MobileNetV2 c144_56 3x3, b1 bf16: every program loads, per filter row, one BLOCK_IW-wide segment
    per (row, channel) (its output columns plus halo and alignment), its weights, and writes its outputs."""
    from benchmarks import roofline
    from kernels.depthwise import DW_CONFIGS

    cfg = DW_CONFIGS["bf16"][0].kwargs
    bh, bc, bw, biw = cfg["BLOCK_H"], cfg["BLOCK_C"], cfg["BLOCK_W"], cfg["BLOCK_IW"]
    cols = min(bw, biw - 8 + 1)  # output columns whose input span fits a segment (stride 1)
    kc = biw - 8 - (cols - 1) + 1  # taps per segment
    progs = -(-56 // bh) * -(-56 // cols) * -(-144 // bc)
    elems = progs * 3 * -(-3 // kc) * bh * bc * biw + progs * 9 * bc + 144 * 56 * 56
    case = _case("depthwise/mobilenet_v2/c144_56_k3/b1/bf16/nchw")
    assert roofline.tiled_bytes(case, "fwd") == 2 * elems
    assert case.bytes_moved("fwd") == 2 * (2 * 144 * 56 * 56 + 144 * 9)
    assert roofline.peak_tflops(case, "H200") == 66.9  # CUDA-core fp32 FMAs whatever the storage dtype
    bwd = roofline.tiled_bytes(case, "bwd")
    assert roofline.tiled_bytes(case, "fwd_bwd") == 2 * elems + bwd and bwd > case.bytes_moved("bwd")


def test_split_k_copy_matches_the_kernels(monkeypatch):
    from types import SimpleNamespace

    from benchmarks import roofline
    from kernels import deform

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: SimpleNamespace(multi_processor_count=132))
    dev = SimpleNamespace(type="cuda")
    for m, tiles in ((100352, 9), (1568, 9 * 4 * 4), (6272, 1), (3_000_000, 500)):
        assert roofline.gemm_split_k(m, tiles, 132) == deform._split_k(m, tiles, dev)
    # conv2d's weight gradient has its own rule (tests/ops/test_conv2d.py), which the model calls


def test_roofline_fields_cover_the_suite():
    from benchmarks import roofline

    cases = build_suite(batches=[1], dtypes=["bf16"], layouts=["cl"])
    for c in cases:
        r = roofline.model(c, "fwd_bwd")
        assert r["flops"] > 0 and r["bytes"] > 0 and r["bound_ms"] > 0, c.id
        if c.family in ("conv3d", "depthwise3d"):
            continue  # tiled model when their kernels land (kernels.conv3d), else None
        assert r["tiled_bytes"] >= r["bytes"] * 0.99, c.id  # the tiles move at least the compulsory bytes
        assert r["tiled_bound_ms"] >= r["bound_ms"] * 0.99, c.id
    dcn = roofline.model(_case("deform/resnet50_dcn/stage4_c256_14_v2/b32/fp16/nchw"), "bwd")
    # the data gradient's fp32 atomics alone: 4 corners x every sample (N * OH * OW * taps * C_in)
    assert dcn["tiled_bytes"] > 4 * 4 * 32 * 14 * 14 * 9 * 256


def test_new_families_shapes_and_flops():
    up = _case("conv3d/unet3d/up2_c128_32/b1/bf16/cl")  # 2x2x2 stride-2 transposed conv, 32^3 -> 64^3
    assert up.shapes() == {"input": (1, 128, 32, 32, 32), "weight": (128, 128, 2, 2, 2), "output": (1, 128, 64, 64, 64)}
    assert up.flops("fwd") == 2 * 32 ** 3 * 128 * 128 * 8
    r3d = _case("conv3d/r3d_18/c128_16x56_s2/b32/fp16/nchw")
    assert r3d.shapes()["output"] == (32, 128, 8, 28, 28)
    assert r3d.flops("fwd") == 2 * 32 * 8 * 28 * 28 * 128 * 64 * 27
    pair = [_case(f"conv3d/r2plus1d_18/c64_16x56_{k}/b1/bf16/nchw") for k in ("1x3x3", "3x1x1")]
    assert pair[0].shapes()["weight"] == (144, 64, 1, 3, 3) and pair[1].shapes()["weight"] == (64, 144, 3, 1, 1)
    dw = _case("depthwise3d/x3d_m/c108_16x56_s2/b1/bf16/cl")
    assert dw.shapes()["output"] == (1, 108, 16, 28, 28) and dw.flops("fwd") == 2 * 108 * 16 * 28 * 28 * 27
    sp = _case("subpixel/espcn/x4_c32_270x480/b1/fp16/nchw")
    s = sp.shapes()
    assert s["weight"] == (16, 32, 3, 3) and s["output"] == (1, 1, 1080, 1920) and s["conv_output"] == (1, 16, 270, 480)
    # compulsory: input, weight, shuffled output (the conv output is an intermediate)
    assert sp.bytes_moved("fwd") == 2 * (32 * 270 * 480 + 16 * 32 * 9 + 1080 * 1920)
    assert not validate(sp) and not validate(up) and not validate(dw)
    assert "divisible" in validate(Case(Layer("subpixel", "x", "bad", 8, 10, 6, 6, 3, 1, 1, upscale=2), 1, "fp32", "nchw"))
    ids = [c.id for c in build_suite()]
    assert "standard/resnet50/c64_56/b32/bf16/nchw" in ids  # existing ids unchanged, the old families first
    old = ("standard", "grouped", "depthwise", "dilated", "deform", "roi")
    assert len(ids) == 1520 and all(i.split("/")[0] in old for i in ids[:976])


def _drop_op(monkeypatch, name):
    import layers

    monkeypatch.delattr(layers, name, raising=False)


def test_missing_conv3d_is_skipped_not_a_crash(monkeypatch, capsys):
    """The guard (layers.conv3d / conv_transpose3d absent): dry run OK with the cases listed as skipped,
    the benchmark writes a skipped row per case."""
    from benchmarks.suite import unavailable

    _drop_op(monkeypatch, "conv3d")
    _drop_op(monkeypatch, "conv_transpose3d")
    cases = build_suite(["conv3d", "depthwise3d", "subpixel"], ["bf16"], [1], ["cl"], suite="tiny")
    assert [c.family for c in cases if unavailable(c)] == ["conv3d", "conv3d", "depthwise3d"]
    monkeypatch.setattr("kernels.inspect.run", _fake_compile(ok=True))
    assert bench.dry_run(cases) == 0
    out = capsys.readouterr().out
    assert "3 skipped" in out and "SKIPPED 2 cases (conv3d, depthwise3d): layers.conv3d is not available" in out
    from kernels.inspect import all_specs

    if not any(spec.name.startswith("conv3d_") for _, spec in all_specs()):  # kernels.conv3d not in the tree
        assert "compile check of family conv3d skipped" in out
    assert "conv3d/tiny/c8_4x6/b1/bf16/cl" in out  # roofline row
    rows = bench.bench_case(cases[0], device="cpu")
    assert len(rows) == 1 and rows[0]["mode"] == "all" and rows[0]["error"].startswith("skipped: layers.conv3d")
    assert bench.warm_case(cases[0], "cpu").startswith("skipped:")


def test_conv3d_family_runs_when_the_op_exists(monkeypatch):
    """With a stand-in layers.conv3d (F.conv3d; the real op lands separately) the 3-D harness path runs on
    the CPU: channels_last_3d inputs, both sides timed, roofline fields and percentages in every row."""
    import torch.nn.functional as F

    import layers

    monkeypatch.setattr(layers, "conv3d", lambda *a: F.conv3d(*a), raising=False)
    case = build_suite(["conv3d"], ["fp32"], [1], ["cl"], suite="tiny")[0]
    assert not validate(case)
    t = bench.make_inputs(case, "cpu")
    assert t["input"].is_contiguous(memory_format=torch.channels_last_3d)
    rows = bench.bench_case(case, warmup=0, rep=0, device="cpu")
    assert [r["mode"] for r in rows] == list(bench.MODES) and not any(r["error"] for r in rows)
    for r in rows:
        assert r["ours_median_ms"] > 0 and r["peer_median_ms"] > 0 and r["bound_ms"] > 0 and r["roofline_gpu"] == "H200"
        assert r["pct_roofline"] == pytest.approx(100 * r["bound_ms"] / r["ours_median_ms"])
