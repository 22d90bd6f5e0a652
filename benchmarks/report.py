"""Markdown summary + PNG plots from one or more benchmarks results JSON files.

    python -m benchmarks.report benchmarks/results/<file>.json   # -> <file>.md, <file>_<family>.png
    python -m benchmarks.report a.json b.json --out merged        # merge partial runs -> merged.md, merged_*.png
    python -m benchmarks.report a.json b.json --readme            # print the README's per-family table

Ratio = peer median / convlab median (> 1: convlab faster). Per op family the summary gives the
geometric mean of the ratio per mode (fwd, bwd, fwd_bwd), overall and per dtype. Several files (partial
runs, e.g. one per GPU lease) are merged per (case, mode); where two files measured the same case, the
one given later wins. Cases of the expected set (``--expect``, default the GPU session's core list) that
no file measured are listed as "not yet measured".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Iterable, List, Optional, Sequence, Tuple

MODES = ("fwd", "bwd", "fwd_bwd")


def geomean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Geometric mean of the positive values (None / non-positive are skipped); None if none."""
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _fmt(v: Optional[float], spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def summarize(rows: List[dict]) -> dict:
    """{family: {mode: geomean ratio}} and {(family, dtype): {mode: geomean}}, with case counts."""
    by_fam, by_fam_dt = defaultdict(lambda: defaultdict(list)), defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("mode") not in MODES:
            continue
        by_fam[r["family"]][r["mode"]].append(r.get("ratio"))
        by_fam_dt[(r["family"], r["dtype"])][r["mode"]].append(r.get("ratio"))
    fam = {f: {m: geomean(v) for m, v in d.items()} for f, d in by_fam.items()}
    fam_dt = {k: {m: geomean(v) for m, v in d.items()} for k, d in by_fam_dt.items()}
    counts = {f: len(d.get("fwd", [])) for f, d in by_fam.items()}
    return {"family": fam, "family_dtype": fam_dt, "counts": counts}


def fill_roofline(data: dict) -> dict:
    """Add the roofline fields (``benchmarks.roofline``) to timed rows that lack them (files written
    before the model existed), for cases still in the suite; the GPU table is the one of the row's
    source file's device when known, else the default. Returns ``data`` (rows updated in place)."""
    from . import roofline
    from .bench import add_percentages
    from .suite import SUITES, build_suite

    todo = [r for r in data["results"] if r.get("mode") in MODES and "bound_ms" not in r]
    if not todo:
        return data
    by_id = {c.id: c for suite in SUITES for c in build_suite(suite=suite)}
    devices = {name: env.get("device") for name, env, _ in data.get("sources", [])}
    for r in todo:
        case = by_id.get(r.get("id"))
        if case is None:
            continue
        dev = devices.get(r.get("source")) or (next(iter(devices.values())) if len(devices) == 1 else None)
        gpu = roofline.gpu_for_device(dev) or roofline.DEFAULT_GPU
        r.update(roofline.model(case, r["mode"], gpu))
        add_percentages(r)
    return data


def roofline_summary(rows: List[dict]) -> dict:
    """{family: {mode: geometric mean of convlab's % of roofline}} over rows that have one."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("mode") in MODES and r.get("pct_roofline"):
            by[r["family"]][r["mode"]].append(r["pct_roofline"])
    return {f: {m: geomean(v) for m, v in d.items()} for f, d in by.items()}


def merge(datas: Sequence[Tuple[str, dict]]) -> dict:
    """Merge results files [(name, {"environment", "results"})] into one: rows keyed by (id, mode),
    later files win; each row records its ``source`` file. Returns {"sources": [(name, env, n_rows)],
    "results": rows}. A case measured in a later file drops all of its rows from earlier files."""
    by_case: dict = {}
    sources = []
    for name, data in datas:
        rows = data.get("results", [])
        sources.append((name, data.get("environment", {}), len(rows)))
        fresh: dict = defaultdict(list)
        for r in rows:
            fresh[r.get("id")].append(dict(r, source=name))
        by_case.update(fresh)
    return {"sources": sources, "results": [r for rows in by_case.values() for r in rows]}


def coverage(rows: List[dict], expected: List[str]) -> Tuple[dict, List[str]]:
    """({family: (measured cases, suite cases)}, expected case ids with no timed row). The suite is the
    full one, or the tiny one when every row is a tiny (rehearsal) case."""
    from .suite import build_suite

    measured = {r["id"] for r in rows if r.get("mode") in MODES}
    suite = "tiny" if rows and all(r.get("model") == "tiny" for r in rows) else "full"  # a rehearsal's rows
    per = {}
    for c in build_suite(suite=suite):
        m, n = per.get(c.family, (0, 0))
        per[c.family] = (m + (c.id in measured), n + 1)
    return per, [cid for cid in expected if cid not in measured]


def expected_ids(globs: Optional[Sequence[str]]) -> List[str]:
    from .suite import SESSION_CORE, SUITES, build_suite, order_cases

    return [c.id for suite in SUITES for c in order_cases(build_suite(suite=suite), list(globs or SESSION_CORE))]


def _env_line(name: str, env: dict, n: int) -> str:
    return (f"- `{name}`: {n} rows; device {env.get('device')} (sm {env.get('capability')}); torch {env.get('torch')}, "
            f"triton {env.get('triton')}, torchvision {env.get('torchvision')}, CUDA {env.get('cuda')}, "
            f"cuDNN {env.get('cudnn')}; commit {env.get('git_commit')} (code {env.get('code_commit', '-')}); "
            f"date {env.get('date')}" + ("" if env.get("complete", True) else " (partial run)"))


def render_markdown(data: dict, plots: List[str], expected: Optional[List[str]] = None, max_missing: int = 60) -> str:
    """``data``: one results file ({"environment", "results"}) or ``merge``'s output."""
    sources = data.get("sources") or [("results", data.get("environment", {}), len(data["results"]))]
    rows = data["results"]
    s = summarize(rows)
    out = ["# convlab benchmark results", ""]
    if len(sources) == 1:
        env = sources[0][1]
        out.append(f"- device: {env.get('device')} (sm {env.get('capability')})")
        out.append(f"- torch {env.get('torch')}, triton {env.get('triton')}, torchvision {env.get('torchvision')}, "
                   f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}")
        out.append(f"- git commit {env.get('git_commit')}, date {env.get('date')}")
    else:
        out.append(f"Merged from {len(sources)} files (a later file wins for a case measured twice):")
        out += [_env_line(*src) for src in sources]
    for name, env, _ in sources:
        for key, label in (("synthetic", "SYNTHETIC DATA"), ("rehearsal", "REHEARSAL, NOT A MEASUREMENT"),
                           ("fake_device", "FAKE DEVICE NAME")):
            if env.get(key):
                out.append(f"- **{label}** ({name}): {env[key]}")
    env = sources[-1][1]
    out += ["", "Ratio = peer median time / convlab median time (> 1: convlab faster). Peer: cuDNN (F.conv2d), "
            "torchvision.ops.deform_conv2d for deform, torchvision.ops.roi_align for roi. Geometric means over "
            "cases with both timings.", "",
            f"Bytes model: {env.get('bytes_model', '-')}. FLOPs model: {env.get('flops_model', '-')}.", "",
            f"Roofline: {env.get('roofline_model', '-')}; peaks of {env.get('roofline_gpu', '-')}. \"bound\" uses "
            "the compulsory bytes, \"tiled\" the bytes the kernels' tiles move; % of roofline = bound / convlab "
            "median (100 % = at the bound).", "",
            "## Geometric-mean ratio per op family", "",
            "| family | cases | fwd | bwd | fwd+bwd |", "|---|---:|---:|---:|---:|"]
    for fam in sorted(s["family"]):
        g = s["family"][fam]
        out.append(f"| {fam} | {s['counts'].get(fam, 0)} | " + " | ".join(_fmt(g.get(m)) for m in MODES) + " |")
    roof = roofline_summary(rows)
    if roof:
        out += ["", "## Convlab's median as % of the roofline bound (geometric mean)", "",
                "| family | fwd | bwd | fwd+bwd |", "|---|---:|---:|---:|"]
        out += [f"| {fam} | " + " | ".join(_fmt(roof[fam].get(m), ".0f") for m in MODES) + " |" for fam in sorted(roof)]
    out += ["", "## Per family and dtype", "", "| family | dtype | fwd | bwd | fwd+bwd |", "|---|---|---:|---:|---:|"]
    for (fam, dt) in sorted(s["family_dtype"]):
        g = s["family_dtype"][(fam, dt)]
        out.append(f"| {fam} | {dt} | " + " | ".join(_fmt(g.get(m)) for m in MODES) + " |")
    if expected is not None:
        per, missing = coverage(rows, expected)
        out += ["", "## Coverage", "", "Cases with timings out of the full suite's cases, per family:", "",
                "| family | measured | in suite |", "|---|---:|---:|"]
        out += [f"| {fam} | {m} | {n} |" for fam, (m, n) in sorted(per.items())]
        out += ["", f"**Not yet measured**: {len(missing)} of the {len(expected)} expected cases"
                + (":" if missing else ".")]
        if missing:
            out += [""] + [f"- {cid}" for cid in missing[:max_missing]]
            if len(missing) > max_missing:
                out.append(f"- ... and {len(missing) - max_missing} more")
    out += ["", "## All cases", "",
            "| case | mode | convlab ms (p20-p80) | peer ms (p20-p80) | ratio | convlab GB/s | convlab TFLOP/s "
            "| convlab / peer peak MiB | FLOP/B | bound ms (tiled) | % of roofline convlab / peer | note |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("mode") not in MODES:
            out.append(f"| {r.get('id')} | - | - | - | - | - | - | - | - | - | - | {r.get('error', '')} |")
            continue
        ours = f"{_fmt(r.get('ours_median_ms'), '.4f')} ({_fmt(r.get('ours_p20_ms'), '.4f')}-{_fmt(r.get('ours_p80_ms'), '.4f')})"
        peer = f"{_fmt(r.get('peer_median_ms'), '.4f')} ({_fmt(r.get('peer_p20_ms'), '.4f')}-{_fmt(r.get('peer_p80_ms'), '.4f')})"
        note = " ".join(x for x in (r.get("peer_note", ""), r.get("error", "")) if x).replace("|", "/")
        out.append(f"| {r['id']} | {r['mode']} | {ours} | {peer} | {_fmt(r.get('ratio'))} | "
                   f"{_fmt(r.get('ours_gbps'), '.0f')} | {_fmt(r.get('ours_tflops'), '.1f')} | "
                   f"{_fmt(r.get('ours_peak_mb'), '.1f')} / {_fmt(r.get('peer_peak_mb'), '.1f')} | "
                   f"{_fmt(r.get('intensity'), '.1f')} | {_fmt(r.get('bound_ms'), '.4f')} "
                   f"({_fmt(r.get('tiled_bound_ms'), '.4f')}) | {_fmt(r.get('pct_roofline'), '.0f')} / "
                   f"{_fmt(r.get('peer_pct_roofline'), '.0f')} | {note} |")
    if expected is not None:
        _, missing = coverage(rows, expected)
        out += [f"| {cid} | - | - | - | - | - | - | - | - | - | - | not yet measured |" for cid in missing[:max_missing]]
    if plots:
        out += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    return "\n".join(out) + "\n"


def readme_table(data: dict) -> str:
    """The README's "latest measured ratios" table: per family, geometric-mean ratio per mode, number
    of cases, and the device / date / commit of the files that measured them. Families nothing
    measured say so. Rehearsal or synthetic files are refused (they are not measurements)."""
    from .suite import FAMILIES

    sources = data.get("sources") or [("results", data.get("environment", {}), len(data["results"]))]
    for name, env, _ in sources:
        if env.get("rehearsal") or env.get("synthetic") or env.get("fake_device"):
            raise ValueError(f"{name} is not a GPU measurement (rehearsal / synthetic / fake device)")
    s = summarize(data["results"])
    out = ["| family | cases | fwd | bwd | fwd+bwd | device | date | commit |", "|---|---:|---:|---:|---:|---|---|---|"]
    for fam in FAMILIES:
        used = [env for name, env, _ in sources
                if any(r.get("source", name) == name and r.get("family") == fam and r.get("mode") in MODES
                       for r in data["results"])]
        if fam not in s["family"]:
            out.append(f"| {fam} | 0 | not measured yet | | | | | |")
            continue
        g = s["family"][fam]
        dev = ", ".join(sorted({e.get("device", "?") for e in used}))
        date = ", ".join(sorted({str(e.get("date", "?"))[:10] for e in used}))
        com = ", ".join(sorted({str(e.get("code_commit") or e.get("git_commit", "?"))[:10] for e in used}))
        out.append(f"| {fam} | {s['counts'].get(fam, 0)} | " + " | ".join(_fmt(g.get(m)) for m in MODES)
                   + f" | {dev} | {date} | {com} |")
    return "\n".join(out) + "\n"


def render_plots(rows: List[dict], stem: str) -> List[str]:
    """One PNG per family: ratio per case (x) for each mode, with the parity line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for fam in sorted({r["family"] for r in rows if r.get("mode") in MODES}):
        ids = []
        for r in rows:
            if r.get("family") == fam and r.get("mode") in MODES and r["id"] not in ids:
                ids.append(r["id"])
        fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(ids) + 2), 4.5))
        for mode, marker in zip(MODES, "o^s"):
            vals = {r["id"]: r.get("ratio") for r in rows if r.get("family") == fam and r.get("mode") == mode}
            xs = [i for i, cid in enumerate(ids) if vals.get(cid)]
            ax.plot(xs, [vals[ids[i]] for i in xs], marker, label=mode, alpha=0.8)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("peer time / convlab time")
        ax.set_title(f"{fam}: speed ratio per layer (> 1: convlab faster)")
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels([cid.split("/", 1)[1] for cid in ids], rotation=90, fontsize=6)
        ax.legend()
        fig.tight_layout()
        path = f"{stem}_{fam}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="results JSON files written by benchmarks.bench (merged in order)")
    ap.add_argument("--out", help="output stem (default: the single input's stem; required for several)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--expect", nargs="*", metavar="GLOB",
                    help="case-id globs of the cases that should have been measured (default: the GPU session's "
                         "core list, benchmarks.suite.SESSION_CORE); unmeasured ones are listed")
    ap.add_argument("--readme", action="store_true", help="print the README's per-family table and exit")
    args = ap.parse_args(argv)
    datas = []
    for path in args.results:
        with open(path) as f:
            datas.append((os.path.basename(path), json.load(f)))
    data = merge(datas) if len(datas) > 1 else dict(datas[0][1], sources=[(datas[0][0], datas[0][1].get(
        "environment", {}), len(datas[0][1].get("results", [])))])
    if args.readme:
        print(readme_table(data), end="")
        return 0
    if args.out is None and len(args.results) > 1:
        print("error: give --out STEM when merging several files", file=sys.stderr)
        return 2
    stem = args.out or os.path.splitext(args.results[0])[0]
    expected = expected_ids(args.expect) if args.expect is None or args.expect else None
    fill_roofline(data)
    plots = [] if args.no_plots else render_plots(data["results"], stem)
    with open(stem + ".md", "w") as f:
        f.write(render_markdown(data, plots, expected))
    print(f"wrote {stem}.md" + "".join(f", {p}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
