"""Markdown summary + PNG plots from a benchmarks results JSON.

    python -m benchmarks.report benchmarks/results/<file>.json   # -> <file>.md, <file>_<family>.png

Ratio = peer median / convlab median (> 1: convlab faster). Per op family the summary gives the
geometric mean of the ratio per mode (fwd, bwd, fwd_bwd), overall and per dtype.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Iterable, List, Optional

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


def render_markdown(data: dict, plots: List[str]) -> str:
    env, rows = data["environment"], data["results"]
    s = summarize(rows)
    out = ["# convlab benchmark results", ""]
    out.append(f"- device: {env.get('device')} (sm {env.get('capability')})")
    out.append(f"- torch {env.get('torch')}, triton {env.get('triton')}, torchvision {env.get('torchvision')}, "
               f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}")
    out.append(f"- git commit {env.get('git_commit')}, date {env.get('date')}")
    if env.get("synthetic"):
        out.append(f"- **SYNTHETIC DATA: {env['synthetic']}**")
    out += ["", "Ratio = peer median time / convlab median time (> 1: convlab faster). Peer: cuDNN (F.conv2d), "
            "torchvision.ops.deform_conv2d for deform. Geometric means over cases with both timings.", "",
            f"Bytes model: {env.get('bytes_model', '-')}. FLOPs model: {env.get('flops_model', '-')}.", "",
            "## Geometric-mean ratio per op family", "",
            "| family | cases | fwd | bwd | fwd+bwd |", "|---|---:|---:|---:|---:|"]
    for fam in sorted(s["family"]):
        g = s["family"][fam]
        out.append(f"| {fam} | {s['counts'].get(fam, 0)} | " + " | ".join(_fmt(g.get(m)) for m in MODES) + " |")
    out += ["", "## Per family and dtype", "", "| family | dtype | fwd | bwd | fwd+bwd |", "|---|---|---:|---:|---:|"]
    for (fam, dt) in sorted(s["family_dtype"]):
        g = s["family_dtype"][(fam, dt)]
        out.append(f"| {fam} | {dt} | " + " | ".join(_fmt(g.get(m)) for m in MODES) + " |")
    out += ["", "## All cases", "",
            "| case | mode | convlab ms (p20-p80) | peer ms (p20-p80) | ratio | convlab GB/s | convlab TFLOP/s "
            "| convlab / peer peak MiB | note |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("mode") not in MODES:
            out.append(f"| {r.get('id')} | - | - | - | - | - | - | - | {r.get('error', '')} |")
            continue
        ours = f"{_fmt(r.get('ours_median_ms'), '.4f')} ({_fmt(r.get('ours_p20_ms'), '.4f')}-{_fmt(r.get('ours_p80_ms'), '.4f')})"
        peer = f"{_fmt(r.get('peer_median_ms'), '.4f')} ({_fmt(r.get('peer_p20_ms'), '.4f')}-{_fmt(r.get('peer_p80_ms'), '.4f')})"
        note = " ".join(x for x in (r.get("peer_note", ""), r.get("error", "")) if x).replace("|", "/")
        out.append(f"| {r['id']} | {r['mode']} | {ours} | {peer} | {_fmt(r.get('ratio'))} | "
                   f"{_fmt(r.get('ours_gbps'), '.0f')} | {_fmt(r.get('ours_tflops'), '.1f')} | "
                   f"{_fmt(r.get('ours_peak_mb'), '.1f')} / {_fmt(r.get('peer_peak_mb'), '.1f')} | {note} |")
    if plots:
        out += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
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
    ap.add_argument("results", help="results JSON written by benchmarks.bench")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    stem = os.path.splitext(args.results)[0]
    plots = [] if args.no_plots else render_plots(data["results"], stem)
    with open(stem + ".md", "w") as f:
        f.write(render_markdown(data, plots))
    print(f"wrote {stem}.md" + "".join(f", {p}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
