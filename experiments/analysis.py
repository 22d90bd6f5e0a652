"""Collect the summary.json files of runs or sweeps into one table, one row per conv variant.

    python -m experiments.analysis multirun/compare_variants/2025-01-01_12-00-00
    python -m experiments.analysis outputs multirun --csv results.csv

Runs on different data sets (cifar10 / synthetic), devices, swapped stages or model sizes are kept apart.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load_summaries(paths: list[str | Path]) -> list[dict]:
    found = []
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob("summary.json"))
        for f in files:
            try:
                s = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as err:
                print(f"skipping {f}: {err}", file=sys.stderr)
                continue
            s["_path"] = str(f)
            found.append(s)
    return found


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(summaries: list[dict], metric: str = "val/acc") -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in summaries:
        if s.get("status") != "finished":
            continue
        key = (s["conv"]["variant"], s["dataset"]["name"], s["device"]["name"], tuple(s.get("swap_stages") or ()),
               s["model"].get("params"))
        groups[key].append(s)
    rows = []
    for (variant, dataset, device, stages, _), runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        best = [r["best"]["score"] if r["best"].get("score") is not None else r["metrics"].get(metric) for r in runs]
        acc, acc_std = _mean_std(best)
        thr, _ = _mean_std([r["timing"].get("throughput") for r in runs])
        rows.append({"variant": variant, "dataset": dataset, "device": device, "swap_stages": list(stages),
                     "runs": len(runs), f"best {metric}": acc, "std": acc_std,
                     "params": runs[0]["model"].get("params"), "MFLOPs": (runs[0]["model"].get("flops") or 0) / 1e6,
                     "train img/s": thr, "epochs": max(r["epochs_completed"] for r in runs)})
    return rows


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no finished runs)"
    cols = list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders or summary.json files")
    parser.add_argument("--metric", default="val/acc")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--plot", help="also save accuracy against MFLOPs (PNG/PDF) to this file")
    args = parser.parse_args(argv)
    rows = table(load_summaries(args.paths), args.metric)
    print(to_markdown(rows))
    if args.csv and rows:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot and rows:
        plot(rows, args.plot, args.metric)
    return 0


def plot(rows: list[dict], path: str, metric: str = "val/acc") -> None:
    """Best accuracy (mean, with the std over seeds as error bars) against forward MFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r[f"best {metric}"] is None:
            continue
        ax.errorbar(r["MFLOPs"], r[f"best {metric}"], yerr=r["std"] or 0.0, fmt="o", capsize=3)
        ax.annotate(f"{r['variant']} ({r['dataset']})", (r["MFLOPs"], r[f"best {metric}"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("forward MFLOPs per image")
    ax.set_ylabel(f"best {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
