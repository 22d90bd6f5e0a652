"""Detection report: ``python -m experiments.report detection RUNS_DIR... [--out DIR]``.

Gathers every finished ``summary.json`` of ``experiment=detection`` under the given folders (single
runs or multirun sweeps) and writes to ``--out`` (default: the first folder's ``report/``):

* ``report.md``: one row per (conv variant, RoI pooling): mAP@0.5 and COCO mAP (mean ± std over
  seeds, last validation), best mAP@0.5, number of seeds, parameters, GFLOPs, training throughput,
  median step time and wall time; the data set and image size in the header;
* ``results.json``: the aggregated numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any

from experiments.reports import load_finished_runs, report_inputs


def load_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    return load_finished_runs(dirs, "detection")


def _ms(values: list[float], spec: str = ".4f") -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(mean(values), spec)} ± {format(stdev(values), spec)}"


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for s in runs:
        key = (s.get("conv", {}).get("variant", "?"), s["detection"].get("roi_pool", "standard"))
        groups.setdefault(key, []).append(s)
    order = {"standard": 0, "deformable": 1, "deformable_v2": 2}
    rows = []
    for (variant, roi), group in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][0],
                                                                       order.get(kv[0][1], 9))):
        det = [s["detection"] for s in group]
        model, timing = group[0].get("model", {}), [s.get("timing", {}) for s in group]
        rows.append({
            "conv": variant, "roi_pool": roi, "seeds": sorted(s.get("seed") for s in group if s.get("seed") is not None),
            "n": len(group),
            "map_50": [d.get("map_50") for d in det], "map": [d.get("map") for d in det],
            "map_50_best": [d.get("map_50_best") for d in det],
            "params": model.get("params"), "flops": model.get("flops"),
            "throughput": [t.get("throughput") for t in timing], "step_time_ms": [t.get("step_time_ms") for t in timing],
            "wall_time_s": [t.get("wall_time_s") for t in timing],
            "dataset": group[0].get("dataset", {}).get("name"), "image_size": det[0].get("image_size"),
            "epochs": [s.get("epochs_completed") for s in group], "steps": [s.get("global_step") for s in group],
        })
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    datasets = sorted({str(r["dataset"]) for r in rows})
    sizes = sorted({str(r["image_size"]) for r in rows})
    lines = [f"# Detection: convolution variant x RoI pooling ({', '.join(datasets)}, {', '.join(sizes)} px)", "",
             "Faster R-CNN (ResNet-18, one stride-32 map). mAP on the validation split after the last epoch; "
             "mean ± std over seeds.", "",
             "| conv | roi_pool | seeds | mAP@0.5 | mAP@[.5:.95] | best mAP@0.5 | params (M) | GFLOPs | img/s (train) "
             "| step (ms) | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = "n/a" if r["params"] is None else f"{r['params'] / 1e6:.2f}"
        flops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"
        lines.append(f"| {r['conv']} | {r['roi_pool']} | {r['n']} | {_ms(r['map_50'])} | {_ms(r['map'])} | "
                     f"{_ms(r['map_50_best'])} | {params} | {flops} | {_ms(r['throughput'], '.2f')} | "
                     f"{_ms(r['step_time_ms'], '.0f')} | {_ms(r['wall_time_s'], '.0f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    inputs = report_inputs("detection", __doc__, argv)
    if inputs is None:
        return 1
    runs, out = inputs
    rows = aggregate(runs)
    text = render(rows)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(text)
    print(f"written to {out}")
    return 0
