"""Detection report: ``python -m experiments.report detection RUNS_DIR... [--out DIR]``.

Gathers every finished ``summary.json`` of ``experiment=detection`` under the given folders (single
runs or multirun sweeps) and writes to ``--out`` (default: the first folder's ``report/``):

* ``report.md``: the training schedule (epochs x batches x batch size, steps, image size, optimizer,
  learning-rate schedule, time cap) and one row per (conv variant, RoI pooling): mAP@0.5 and COCO mAP
  (mean ± std over seeds, last validation), best mAP@0.5, number of seeds, parameters, GFLOPs,
  training throughput, median step time and wall time; the data set and image size in the header;
* ``map.png``: mAP@0.5 against the epoch (mean ± std over seeds) and final mAP@0.5 against the
  training step time, one colour per row;
* ``results.json``: the aggregated numbers.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean, stdev
from typing import Any

from experiments.reports import load_finished_runs, markdown_table, mean_std, study_main


def load_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    return load_finished_runs(dirs, "detection")


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
            "history": [d.get("history") or [] for d in det],
            "schedule": [schedule_of(s) for s in group],
        })
    return rows


def schedule_of(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's training schedule: what the module recorded (``detection.schedule``), else read from
    the run's config; plus what it actually did (epochs completed, optimizer steps, status)."""
    sched = dict(summary["detection"].get("schedule") or {})
    if not sched:
        cfg = summary.get("config") or {}
        trainer, model, data = cfg.get("trainer") or {}, cfg.get("model") or {}, cfg.get("data") or {}
        opt = model.get("optimizer") or {}
        sched = {"max_epochs": trainer.get("max_epochs"), "limit_train_batches": trainer.get("limit_train_batches"),
                 "batch_size": data.get("batch_size"), "image_size": model.get("image_size"),
                 "optimizer": str(opt.get("_target_", "")).rsplit(".", 1)[-1] or None, "lr": opt.get("lr"),
                 "momentum": opt.get("momentum"), "weight_decay": opt.get("weight_decay"),
                 "scheduler": model.get("scheduler"), "warmup_fraction": model.get("warmup_fraction")}
    sched.update(epochs_completed=summary.get("epochs_completed"), steps=summary.get("global_step"))
    return sched


def render_schedule(rows: list[dict[str, Any]]) -> str:
    """One line per distinct schedule (normally one for the whole study)."""
    keys = ("max_epochs", "train_batches_per_epoch", "limit_train_batches", "batch_size", "image_size",
            "planned_steps", "optimizer", "lr", "momentum", "weight_decay", "scheduler", "warmup_fraction",
            "max_time_s")
    seen: dict[str, list[str]] = {}
    done: dict[str, set] = {}
    for r in rows:
        for sched in r["schedule"]:
            plan = {k: sched.get(k) for k in keys}
            batches = plan["train_batches_per_epoch"] or plan["limit_train_batches"]
            cap = plan["max_time_s"]
            text = (f"{plan['max_epochs']} epochs x {batches} batches of {plan['batch_size']} images at "
                    f"{plan['image_size']} px"
                    + (f" ({plan['planned_steps']} optimizer steps planned)" if plan["planned_steps"] else "")
                    + f"; {plan['optimizer'] or 'SGD'} lr {plan['lr']}, momentum {plan['momentum']}, weight decay "
                    f"{plan['weight_decay']}; learning rate: {plan['scheduler']}"
                    + (f" after a linear warm-up over {plan['warmup_fraction']:.0%} of the steps"
                       if plan["scheduler"] == "cosine" and plan["warmup_fraction"] else "")
                    + (f"; time cap {cap:.0f} s" if cap else "; no time cap"))
            seen.setdefault(text, []).append(f"{r['conv']}/{r['roi_pool']}")
            done.setdefault(text, set()).add((sched.get("epochs_completed"), sched.get("steps")))
    lines = []
    for text, who in seen.items():
        ran = ", ".join(f"{e} epochs / {st} steps" for e, st in sorted(done[text], key=str))
        scope = "" if len(seen) == 1 else f" ({', '.join(sorted(set(who)))})"
        lines.append(f"- Schedule{scope}: {text}. Completed: {ran}.")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """``map.png``: mAP@0.5 per epoch (mean ± std over seeds) and final mAP@0.5 against step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(h for r in rows for h in r["history"]):
        return None
    fig, (ax_curve, ax_cost) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for i, r in enumerate(rows):
        color, label = f"C{i % 10}", f"{r['conv']} / RoI {r['roi_pool']} (n={r['n']})"
        per_epoch: dict[int, list[float]] = {}
        for history in r["history"]:
            for h in history:
                per_epoch.setdefault(int(h["epoch"]), []).append(float(h["map_50"]))
        epochs = sorted(per_epoch)
        if epochs:
            m = [mean(per_epoch[e]) for e in epochs]
            sd = [stdev(per_epoch[e]) if len(per_epoch[e]) > 1 else 0.0 for e in epochs]
            ax_curve.plot([e + 1 for e in epochs], m, marker="o", color=color, label=label)
            ax_curve.fill_between([e + 1 for e in epochs], [a - b for a, b in zip(m, sd)],
                                  [a + b for a, b in zip(m, sd)], color=color, alpha=0.2, linewidth=0)
        maps = [v for v in r["map_50"] if v is not None]
        times = [v for v in r["step_time_ms"] if v is not None]
        if maps and times:
            ax_cost.errorbar(mean(times), mean(maps), xerr=stdev(times) if len(times) > 1 else 0.0,
                             yerr=stdev(maps) if len(maps) > 1 else 0.0, fmt="o", capsize=3, color=color, label=label)
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("val mAP@0.5")
    ax_curve.set_title("mAP@0.5 after each epoch (mean ± std over seeds)", fontsize=10)
    ax_cost.set_xlabel("median training step time (ms)")
    ax_cost.set_ylabel("final val mAP@0.5")
    ax_cost.set_title("final mAP@0.5 against step time", fontsize=10)
    for ax in (ax_curve, ax_cost):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(rows: list[dict[str, Any]]) -> str:
    datasets = sorted({str(r["dataset"]) for r in rows})
    sizes = sorted({str(r["image_size"]) for r in rows})
    lines = [f"# Detection: convolution variant x RoI pooling ({', '.join(datasets)}, {', '.join(sizes)} px)", "",
             "Faster R-CNN (ResNet-18, one stride-32 map). mAP on the validation split after the last epoch; "
             "mean ± std over seeds.", "", render_schedule(rows), ""]
    table = []
    for r in rows:
        params = "n/a" if r["params"] is None else f"{r['params'] / 1e6:.2f}"
        flops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e9:.2f}"
        table.append([r["conv"], r["roi_pool"], r["n"], mean_std(r["map_50"], ".4f"), mean_std(r["map"], ".4f"),
                      mean_std(r["map_50_best"], ".4f"), params, flops, mean_std(r["throughput"], ".2f"),
                      mean_std(r["step_time_ms"], ".0f"), mean_std(r["wall_time_s"], ".0f")])
    lines.append(markdown_table(["conv", "roi_pool", "seeds", "mAP@0.5", "mAP@[.5:.95]", "best mAP@0.5", "params (M)",
                                 "GFLOPs", "img/s (train)", "step (ms)", "wall (s)"], table))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return study_main("detection", __doc__, argv, aggregate, render, plot, figure="map.png",
                      caption="mAP@0.5 per epoch and against step time")
