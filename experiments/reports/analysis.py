"""Collect the summary.json files of runs or sweeps into one table, one row per conv variant and run length.

    python -m experiments.analysis multirun/compare_variants/2025-01-01_12-00-00
    python -m experiments.analysis outputs multirun --metric val/loss --csv results.csv
    python -m experiments.analysis multirun/compare_variants/<date>_<time> --out report/

Runs on different data sets (cifar10 / synthetic), devices, swapped stages, model sizes or numbers of
training steps are kept apart (one row each). ``best <metric>`` is the best value over each run's
logged history (the minimum for losses and error rates, the maximum otherwise), mean and std over the
runs of a row (std ``-`` for a single run). Runs that did not finish (failed, interrupted, time-capped,
still running) are listed below the table with their status, never averaged in.

``--out DIR`` also writes ``report.md``, ``results.csv``, ``learning_curves.png`` (train/val loss and
accuracy against the training step, mean +- std over the runs of each row, read from the runs' CSV
logs, else from their local W&B run files) and ``acc_vs_throughput.png`` / ``acc_vs_flops.png``, and
prints their paths.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# the learning-curve panels: (title, CSV columns to read it from, first found wins)
CURVES = [("train/loss", ("train/loss_epoch", "train/loss", "train/loss_step")),
          ("val/loss", ("val/loss",)),
          ("train/acc", ("train/acc_epoch", "train/acc", "train/acc_step")),
          ("val/acc", ("val/acc",))]


def metric_mode(metric: str) -> str:
    """``"min"`` for losses, error rates and times (lower is better), ``"max"`` otherwise (accuracy, mAP)."""
    name = metric.rsplit("/", 1)[-1].lower()
    return "min" if any(w in name for w in ("loss", "err", "time", "_ms")) else "max"


def load_summaries(paths: list[str | Path]) -> list[dict]:
    """Every ``summary.json`` under ``paths`` (folders are searched; a file is taken as it is), with its
    path under ``_path``. Raises FileNotFoundError naming a path that does not exist."""
    found = []
    for root in map(Path, paths):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or directory")
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


# ------------------------------------------------------------------------------------------ history


def _float(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B offline run file (``run-<id>.wandb``). Its layout is a LevelDB-style
    log: a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header: crc32 (4 bytes),
    length (2), type (1: a whole record, 2: first part, 3: middle, 4: last). A truncated tail (a run
    still being written) ends the list."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            try:
                record.ParseFromString(pending)
            except Exception:  # noqa: BLE001 - a partly written record at the end
                break
            records.append(record)
    return records


def wandb_history(run_dir: Path, run_id: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Like :func:`run_history`, from the W&B run files under ``run_dir/wandb`` (offline or online; those of
    ``run_id`` when given), keyed by Lightning's ``trainer/global_step``. Empty when there are none
    (or wandb is not installed)."""
    import json as _json

    # offline runs: wandb/offline-run-<date>-<id>/; online runs keep the same file in wandb/run-<date>-<id>/
    files = sorted(run_dir.glob(f"wandb/*run-*/run-{run_id or '*'}.wandb"))
    per_key: dict[str, dict[int, float]] = defaultdict(dict)
    for f in files:
        try:
            records = wandb_records(f)
        except (ImportError, OSError, ValueError) as err:
            print(f"skipping {f}: {err}", file=sys.stderr)
            continue
        for record in records:
            if record.WhichOneof("record_type") != "history":
                continue
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                try:
                    row[key] = _json.loads(item.value_json)
                except ValueError:
                    continue
            step = row.get("trainer/global_step")
            if not isinstance(step, (int, float)):
                continue
            for key, value in row.items():
                if key.startswith("_") or key == "trainer/global_step" or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    per_key[key][int(step)] = float(value)
    return {key: sorted(values.items()) for key, values in per_key.items()}


def run_history(summary: dict) -> dict[str, list[tuple[int, float]]]:
    """The run's logged metrics as ``{column: [(step, value), ...]}`` (sorted by step, one value per step,
    the last logged) from the CSV logger's ``metrics.csv`` files in the run folder, else from its W&B
    run files (:func:`wandb_history`); empty without either."""
    run_dir = Path(summary.get("_path", "")).parent
    files = sorted(run_dir.glob("csv/*/metrics.csv"))
    name = summary.get("run_name")
    if name and (run_dir / "csv" / name / "metrics.csv") in files:  # this run's own version
        files = [run_dir / "csv" / name / "metrics.csv"]
    per_col: dict[str, dict[int, float]] = defaultdict(dict)
    for f in files:
        try:
            with open(f, newline="") as fh:
                for row in csv.DictReader(fh):
                    step = _float(row.get("step"))
                    if step is None:
                        continue
                    for col, text in row.items():
                        value = _float(text)
                        if col not in ("step", "epoch") and value is not None:
                            per_col[col][int(step)] = value
        except OSError as err:
            print(f"skipping {f}: {err}", file=sys.stderr)
    if not per_col:
        return wandb_history(run_dir, (summary.get("wandb") or {}).get("id"))
    return {col: sorted(values.items()) for col, values in per_col.items()}


def best_of_run(summary: dict, metric: str, history: dict | None = None) -> tuple[float | None, str]:
    """The run's best ``metric`` (min or max by :func:`metric_mode`) and where it came from:
    ``"history"`` (the CSV or W&B log), ``"checkpoint"`` (the monitored best score, when ``metric`` is the
    run's optimised metric), ``"final"`` (only the last value is known) or ``"missing"``."""
    history = run_history(summary) if history is None else history
    values = [v for _, v in history.get(metric, [])]
    pick = min if metric_mode(metric) == "min" else max
    if values:
        return pick(values), "history"
    best = (summary.get("best") or {}).get("score")
    if best is not None and metric == summary.get("optimized_metric"):
        return best, "checkpoint"
    final = (summary.get("metrics") or {}).get(metric)
    if final is not None:
        return final, "final"
    return None, "missing"


# ---------------------------------------------------------------------------------------- the table


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std; std is None (shown as ``-``) for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _group_key(s: dict) -> tuple:
    return (s["conv"]["variant"], s["dataset"]["name"], s["device"]["name"], tuple(s.get("swap_stages") or ()),
            (s.get("model") or {}).get("params"), s.get("global_step"))


def group_runs(summaries: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Finished runs grouped by variant, data set, device, swapped stages, model size and training steps."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in summaries:
        if s.get("status") == "finished":
            groups[_group_key(s)].append(s)
    return sorted(groups.items(), key=lambda kv: str(kv[0]))


def metric_column(metric: str) -> str:
    return f"best {metric} ({metric_mode(metric)})"


def table(summaries: list[dict], metric: str = "val/acc") -> list[dict]:
    """One row per group of finished runs (:func:`group_runs`): the best ``metric`` of each run
    (:func:`best_of_run`), mean and std over the runs, parameters, MFLOPs, training images/s."""
    rows = []
    for (variant, dataset, device, stages, _, steps), runs in group_runs(summaries):
        picked = [best_of_run(r, metric) for r in runs]
        mean, std = _mean_std([v for v, _ in picked])
        thr, thr_std = _mean_std([(r.get("timing") or {}).get("throughput") for r in runs])
        sources = sorted({src for _, src in picked})
        rows.append({"variant": variant, "dataset": dataset, "device": device, "swap_stages": list(stages),
                     "steps": steps, "epochs": max(r.get("epochs_completed") or 0 for r in runs),
                     "runs": len(runs), metric_column(metric): mean, "std": std,
                     "params": runs[0]["model"].get("params"),
                     "MFLOPs": runs[0]["model"]["flops"] / 1e6 if runs[0]["model"].get("flops") else None,
                     "train img/s": thr, "img/s std": thr_std, "from": "+".join(sources)})
    return rows


def not_finished(summaries: list[dict]) -> list[dict]:
    """The runs left out of the table (status other than ``finished``), one row each."""
    rows = []
    for s in summaries:
        if s.get("status") == "finished":
            continue
        rows.append({"status": s.get("status", "?"), "variant": (s.get("conv") or {}).get("variant"),
                     "seed": s.get("seed"), "steps": s.get("global_step"),
                     "error": s.get("error") or "", "path": s["_path"]})
    return rows


def to_markdown(rows: list[dict], empty: str = "(no finished runs)") -> str:
    if not rows:
        return empty
    cols = list(rows[0])

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def report_text(rows: list[dict], unfinished: list[dict], metric: str) -> str:
    parts = [to_markdown(rows)]
    mixed = defaultdict(set)
    for r in rows:
        mixed[(r["variant"], r["dataset"], r["device"], tuple(r["swap_stages"]), r["params"])].add(r["steps"])
    lengths = sorted(k[0] for k, v in mixed.items() if len(v) > 1)
    if lengths:
        parts.append(f"\nnote: runs of different lengths are in separate rows (column steps): {', '.join(lengths)}")
    if any(r["from"] != "history" for r in rows):
        parts.append(f"\nfrom: where each run's best {metric} comes from: history (CSV or W&B log), checkpoint "
                     "(the monitored best), final (last value only: no log)")
    if unfinished:
        parts.append(f"\nNot finished, left out of the table ({len(unfinished)}):\n")
        parts.append(to_markdown(unfinished))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- plots


def _label(row: dict, rows: list[dict]) -> str:
    """The variant, plus whichever of data set / steps / stages / size tells the rows apart."""
    parts = [row["variant"]]
    for key, fmt in (("dataset", "{}"), ("swap_stages", "stages {}"), ("params", "{} params"),
                     ("steps", "{} steps"), ("device", "{}")):
        if len({str(r[key]) for r in rows}) > 1:
            parts.append(fmt.format(row[key]))
    return ", ".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(summaries: list[dict], metric: str = "val/acc") -> list[dict]:
    """Per row of :func:`table`: ``{"row": row, "series": {panel: (steps, mean, std)}}`` with mean and
    std over the row's runs at every logged step (std 0 where one run logged it)."""
    rows = table(summaries, metric)
    panels = list(CURVES)
    if metric not in {p for p, _ in panels}:
        panels.append((metric, (metric,)))
    out = []
    for row, (_, runs) in zip(rows, group_runs(summaries)):
        series = {}
        histories = [run_history(r) for r in runs]
        for panel, columns in panels:
            per_step: dict[int, list[float]] = defaultdict(list)
            for h in histories:
                col = next((c for c in columns if h.get(c)), None)
                for step, value in h.get(col, []) if col else []:
                    per_step[step].append(value)
            if per_step:
                steps = sorted(per_step)
                means = [statistics.fmean(per_step[s]) for s in steps]
                stds = [statistics.stdev(per_step[s]) if len(per_step[s]) > 1 else 0.0 for s in steps]
                series[panel] = (steps, means, stds)
        out.append({"row": row, "series": series})
    return out


def plot_curves(summaries: list[dict], path: str | Path, metric: str = "val/acc") -> Path | None:
    """Learning curves (one panel per metric, one line per row, shaded mean +- std over seeds) to ``path``;
    None (nothing written) when no run has a CSV history."""
    data = curves(summaries, metric)
    panels = [p for p in dict.fromkeys(name for d in data for name in d["series"])]
    if not panels:
        return None
    plt = _pyplot()
    cols = 2
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 3.6 * nrows), squeeze=False)
    rows = [d["row"] for d in data]
    for ax, panel in zip(axes.flat, panels):
        for i, d in enumerate(data):
            if panel not in d["series"]:
                continue
            steps, mean, std = d["series"][panel]
            color = f"C{i % 10}"
            ax.plot(steps, mean, marker="o" if len(steps) < 30 else None, ms=3, color=color,
                    label=f"{_label(d['row'], rows)} (n={d['row']['runs']})")
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.2, linewidth=0)
        ax.set_title(panel)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("learning curves: mean +- std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _scatter(rows: list[dict], path: str | Path, metric: str, x_key: str, xerr_key: str | None,
             xlabel: str, logx: bool = False) -> Path | None:
    col = metric_column(metric)
    points = [r for r in rows if r[col] is not None and r[x_key] is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(points):
        ax.errorbar(r[x_key], r[col], yerr=r["std"] or 0.0, xerr=(r.get(xerr_key) or 0.0) if xerr_key else None,
                    fmt="o", capsize=3, color=f"C{i % 10}", label=f"{_label(r, rows)} (n={r['runs']})")
        ax.annotate(r["variant"], (r[x_key], r[col]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(col)
    ax.set_title(f"{col} against {xlabel} (mean +- std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return Path(path)


def plot(rows: list[dict], path: str | Path, metric: str = "val/acc") -> Path | None:
    """Best ``metric`` (mean, with the std over seeds as error bars) against forward MFLOPs."""
    return _scatter(rows, path, metric, "MFLOPs", None, "forward MFLOPs per image")


def plot_throughput(rows: list[dict], path: str | Path, metric: str = "val/acc") -> Path | None:
    """Best ``metric`` against training throughput (images/s), both with their std over seeds."""
    return _scatter(rows, path, metric, "train img/s", "img/s std", "training images/s", logx=True)


def write_csv(rows: list[dict], path: str | Path) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


# --------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run folders, sweep folders or summary.json files")
    parser.add_argument("--metric", default="val/acc", help="metric to compare (min for losses, max otherwise)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--plot", help="also save the metric against MFLOPs (PNG/PDF) to this file")
    parser.add_argument("--out", type=Path, help="write report.md, results.csv, learning curves and plots here")
    args = parser.parse_args(argv)
    try:
        summaries = load_summaries(args.paths)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not summaries:
        print(f"error: no summary.json under {', '.join(args.paths)}", file=sys.stderr)
        return 1
    rows = table(summaries, args.metric)
    if rows and all(r[metric_column(args.metric)] is None for r in rows):
        known = sorted({k for s in summaries for k in (s.get("metrics") or {})})
        print(f"error: no finished run logged {args.metric!r}; metrics in these runs: {', '.join(known)}",
              file=sys.stderr)
        return 1
    unfinished = not_finished(summaries)
    text = report_text(rows, unfinished, args.metric)
    print(text)
    written: list[Path | None] = []
    if args.csv and rows:
        written.append(write_csv(rows, args.csv))
    if args.plot and rows:
        written.append(plot(rows, args.plot, args.metric))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(f"# {metric_column(args.metric)}\n\n{text}\n")
        written.append(args.out / "report.md")
        if rows:
            curves_png = plot_curves(summaries, args.out / "learning_curves.png", args.metric)
            if curves_png is None:
                print("no learning curves: no run has a CSV log (logger=csv or logger=many) or a local W&B run file",
                      file=sys.stderr)
            written += [write_csv(rows, args.out / "results.csv"), curves_png,
                        plot_throughput(rows, args.out / "acc_vs_throughput.png", args.metric),
                        plot(rows, args.out / "acc_vs_flops.png", args.metric)]
    for path in written:
        if path is not None:
            print(f"wrote {path}")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
