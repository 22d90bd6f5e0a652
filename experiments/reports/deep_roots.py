"""Deep Roots report: ``python -m experiments.report deep_roots RUNS_DIR... [--out DIR]``.

Gathers every ``summary.json`` under the given folders (single runs or multirun sweeps of
``experiment=deep_roots``) and writes to ``--out`` (default: the first folder's ``report/``):

* ``report.md``: one row per root: validation accuracy mean ± std over seeds, number of seeds,
  parameters, conv multiply-adds, training throughput, the block-diagonality index of the
  conv2c x conv3a correlation (raw / ZCA-whitened) and of conv3a's intra-layer correlation against
  1/g, and the paper's accuracy and multiply-adds (Ioannou et al. 2017) for reference;
* ``heatmaps.png``: the correlation matrices side by side, one column per root (lowest seed),
  rows inter raw / inter whitened / intra raw / intra whitened;
* ``results.json``: the aggregated numbers.
"""
from __future__ import annotations

import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from experiments.reports import load_finished_runs, markdown_table, study_main

from experiments.classification.models.nin import PAPER

INDEX_KEYS = ("inter_raw", "inter_whitened", "intra_raw", "intra_whitened")


def load_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    return load_finished_runs(dirs, "deep_roots")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def aggregate(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_root: dict[int, list[dict]] = {}
    for s in runs:
        root = max(1, int(s["deep_roots"].get("root", 1)))
        by_root.setdefault(root, []).append(s)
    out = {}
    for root, group in sorted(by_root.items()):
        group.sort(key=lambda s: (s.get("seed") is None, s.get("seed")))
        accs = [s["metrics"].get("val/acc") for s in group if s["metrics"].get("val/acc") is not None]
        thr = [s["timing"].get("throughput") for s in group if s["timing"].get("throughput")]
        d0 = group[0]["deep_roots"]
        index = {k: mean(s["deep_roots"]["index"][k]["index"] for s in group) for k in INDEX_KEYS}
        out[root] = {
            "root": root, "conv_groups": d0.get("conv_groups"), "groups": d0["groups"], "one_over_g": 1 / d0["groups"],
            "intra_chance": d0["index"]["intra_raw"]["chance"],
            "seeds": [s.get("seed") for s in group], "n": len(group),
            "acc_mean": mean(accs) if accs else None, "acc_std": stdev(accs) if len(accs) > 1 else None,
            "params": group[0]["model"].get("params"), "macs": d0.get("macs"),
            "throughput": mean(thr) if thr else None, "index": index,
            "dataset": sorted({s["dataset"]["name"] for s in group}),
            "epochs": sorted({s.get("epochs_completed") for s in group}),
            "steps": sorted({s.get("global_step") for s in group}),
            "device": group[0].get("device", {}).get("name") or group[0].get("device", {}).get("type"),
            "correlations": d0.get("correlations"), "paper": PAPER.get(root),
            "runs": [s["_path"] for s in group],
        }
    return out


def render_table(agg: dict[int, dict[str, Any]]) -> str:
    table = []
    for root, r in agg.items():
        name = "NiN" if root == 1 else f"root-{root}"
        acc = "n/a" if r["acc_mean"] is None else f"{100 * r['acc_mean']:.2f}" + (
            f" ± {100 * r['acc_std']:.2f}" if r["acc_std"] is not None else " (one seed)")
        g = r["conv_groups"] or []
        paper = r["paper"] or {}
        idx = r["index"]
        table.append([name, f"({', '.join(map(str, g))})", r["n"], acc, f"{r['params']:,}",
                      _fmt(r["macs"] / 1e6, ".1f"), _fmt(r["throughput"], ".0f"), _fmt(idx["inter_raw"]),
                      _fmt(idx["inter_whitened"]), _fmt(idx["intra_raw"]), _fmt(idx["intra_whitened"]),
                      _fmt(r["one_over_g"]), _fmt(paper.get("acc"), ".2f"), _fmt(paper.get("macs_m"), ".1f")])
    return markdown_table(["model", "groups (conv2a, conv3a)", "seeds", "val acc % (mean ± std)", "params", "MACs (M)",
                           "img/s", "inter raw", "inter whitened", "intra raw", "intra whitened", "1/g", "paper acc %",
                           "paper MACs (M)"], table)


def plot(agg: dict[int, dict[str, Any]], path: Path) -> Path | None:
    """The matrices of every root side by side (rows: inter raw / whitened, intra raw / whitened), each
    with its colour bar, lines between the g diagonal blocks and its block index against 1/g."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from experiments.roots import draw_heatmap, heatmap_title

    cols = [(root, r) for root, r in agg.items() if r.get("correlations") and Path(r["correlations"]).is_file()]
    if not cols:
        return None
    fig, axes = plt.subplots(len(INDEX_KEYS), len(cols), figsize=(3.6 * len(cols) + 1.5, 3.3 * len(INDEX_KEYS)),
                             squeeze=False, layout="constrained")
    for j, (root, r) in enumerate(cols):
        data = torch.load(r["correlations"], map_location="cpu")
        layers = data.get("layers") or ["conv2c", "conv3a"]
        for i, key in enumerate(INDEX_KEYS):
            ax = axes[i][j]
            idx = data["index"][key]
            title = f"{'NiN' if root == 1 else f'root-{root}'} (g={r['groups']})\n" if i == 0 else ""
            title += f"{key.replace('_', ' ')}: index {idx['index']:.3f} (1/g={idx['one_over_g']:.3f})"
            draw_heatmap(ax, data["matrices"][key], key, int(data.get("groups") or r["groups"]), title, fontsize=7,
                         labels=None)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(heatmap_title(key, layers).replace(", ", "\n", 1), fontsize=7)
    fig.suptitle("|correlation| (lowest seed per root): inter = conv2c (rows) x conv3a (cols), intra = conv3a x "
                 "conv3a; colour scale 0..1 raw, 0..99th percentile whitened; white lines: the g diagonal blocks",
                 fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(agg: dict[int, dict[str, Any]]) -> str:
    """report.md without the figure: the runs behind it, the table and what its columns mean."""
    any_run = next(iter(agg.values()))
    chance = ", ".join(f"{r['intra_chance']:.3f}" for r in agg.values())
    datasets = sorted({d for r in agg.values() for d in r["dataset"]})
    paths = [p for r in agg.values() for p in r["runs"]]  # every run's summary.json, each in one root's row
    sweeps = sorted({str(Path(p).parent.parent) for p in paths})
    text = [
        "# Deep Roots: NiN root variants on CIFAR-10",
        "",
        f"{len(paths)} runs from {', '.join(sweeps)}; data: {', '.join(datasets)}; "
        f"epochs completed: {sorted({e for r in agg.values() for e in r['epochs']})}, "
        f"optimizer steps: {sorted({s for r in agg.values() for s in r['steps']})}; device: {any_run['device']}.",
        "",
        render_table(agg),
        "",
        "- val acc: final validation accuracy of each run (val/acc), mean ± sample std over seeds.",
        "- MACs: multiply-adds of the convolutions for one 3x32x32 image; paper columns: Ioannou et al., CVPR 2017 "
        "(full training; short runs are not comparable).",
        "- inter / intra: block-diagonality index, the share of |correlation| mass inside the g diagonal blocks "
        "(g = conv3a's groups) of the conv2c x conv3a matrix (inter) and of conv3a's own matrix without its "
        "diagonal (intra), for raw and ZCA-whitened responses; 1/g is the share without structure "
        f"(intra without the diagonal: {chance}).",
    ]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    return study_main("deep_roots", __doc__, argv, aggregate, render, plot, figure="heatmaps.png",
                      caption="heatmaps")
