"""Upsampling report: ``python -m experiments.report upsampling RUNS_DIR... [--out DIR]``.

Gathers every finished ``summary.json`` of ``experiment=upsampling`` under the given folders (single
runs or multirun sweeps) and writes to ``--out`` (default: the first folder's ``report/``):

* ``report.md``: one row per upsampling layer (transposed, subpixel, subpixel_icnr, resize_conv):
  PSNR and SSIM of the last validation (mean ± std over seeds), number of seeds, parameters,
  multiply-adds per 16x16 input, training and inference images/s, and the checkerboard energy of
  the output beside the target's (the fraction of spectral energy at the r-periodic frequencies,
  experiments/superres/metrics.py); the bicubic baseline, data set, validation images and steps
  in the header;
* ``upsampling.png``: the same validation images from every variant side by side (input, bicubic,
  each variant's output from its lowest seed, target) over the mean log spectra (bicubic, each
  variant averaged over seeds, target);
* ``results.json``: the aggregated numbers.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

from experiments.reports import finite, load_finished_runs, markdown_table, mean_std, study_main

ORDER = {"transposed": 0, "subpixel": 1, "subpixel_icnr": 2, "resize_conv": 3}


def load_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    return load_finished_runs(dirs, "upsampling")


def _fmt(values: list, spec: str, scale: float = 1.0) -> str:
    """The mean of the non-missing values, formatted; ``n/a`` when there are none."""
    m = _mean(values)
    return "n/a" if m is None else format(m * scale, spec)


def _mean(values: list) -> float | None:
    values = finite(values)
    return mean(values) if values else None


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per upsampling label, runs ordered by seed."""
    groups: dict[str, list[dict]] = {}
    for s in runs:
        up = s["upsampling"]
        groups.setdefault(up.get("label") or up.get("variant") or "?", []).append(s)
    rows = []
    for label, group in sorted(groups.items(), key=lambda kv: (ORDER.get(kv[0], 9), kv[0])):
        group = sorted(group, key=lambda s: (s.get("seed") is None, s.get("seed") or 0))
        ups = [s["upsampling"] for s in group]
        model = group[0].get("model", {})
        rows.append({
            "label": label, "variant": ups[0].get("variant"), "icnr": ups[0].get("icnr"),
            "upsample_layer": ups[0].get("upsample_layer"), "body_conv": ups[0].get("body_conv"),
            "seeds": [s.get("seed") for s in group], "n": len(group),
            "psnr": [u.get("psnr") for u in ups], "ssim": [u.get("ssim") for u in ups],
            "psnr_bicubic": [u.get("psnr_bicubic") for u in ups], "ssim_bicubic": [u.get("ssim_bicubic") for u in ups],
            "checkerboard": [u.get("checkerboard") for u in ups],
            "checkerboard_target": [u.get("checkerboard_target") for u in ups],
            "checkerboard_bicubic": [u.get("checkerboard_bicubic") for u in ups],
            "params": model.get("params"), "macs": model.get("macs") if model.get("macs") is not None
            else (None if model.get("flops") is None else model["flops"] // 2),
            "train_throughput": [s.get("timing", {}).get("throughput") for s in group],
            "inference_throughput": [(u.get("inference") or {}).get("throughput") for u in ups],
            "wall_time_s": [s.get("timing", {}).get("wall_time_s") for s in group],
            "steps": [s.get("global_step") for s in group], "epochs": [s.get("epochs_completed") for s in group],
            "val_images": [u.get("val_images") for u in ups],
            "dataset": group[0].get("dataset", {}).get("name"),
            "device": (group[0].get("device") or {}).get("name") or (group[0].get("device") or {}).get("type"),
            "mean_log_spectrum": [u.get("mean_log_spectrum") for u in ups],
            "samples": [_samples_path(s) for s in group],
            "paths": [s.get("_path") for s in group],
        })
    return rows


def _samples_path(summary: dict[str, Any]) -> str | None:
    """The run's ``upsampling/samples.pt``: where summary.json says, else beside summary.json (a
    moved or copied run folder)."""
    recorded = summary["upsampling"].get("samples")
    if recorded and Path(recorded).is_file():
        return recorded
    if summary.get("_path"):
        local = Path(summary["_path"]).parent / "upsampling" / "samples.pt"
        if local.is_file():
            return str(local)
    return None


def render(rows: list[dict[str, Any]]) -> str:
    datasets = sorted({str(r["dataset"]) for r in rows})
    bic_psnr = finite([v for r in rows for v in r["psnr_bicubic"]])
    bic_ssim = finite([v for r in rows for v in r["ssim_bicubic"]])
    cb_target = finite([v for r in rows for v in r["checkerboard_target"]])
    cb_bic = finite([v for r in rows for v in r["checkerboard_bicubic"]])
    steps = sorted({str(v) for r in rows for v in r["steps"]})
    images = sorted({str(v) for r in rows for v in r["val_images"]})
    lines = [f"# Upsampling: transposed vs sub-pixel vs resize-conv (x2 super-resolution, {', '.join(datasets)})", "",
             "Last validation of each run; mean ± std over seeds (one seed: the value). "
             f"Validation images per run: {', '.join(images)}; optimizer steps per run: {', '.join(steps)}. "
             "PSNR / SSIM on RGB in [0, 1] (torchmetrics). Checkerboard: mean fraction of each output's spectral "
             "energy within one bin of the r-periodic frequencies (Hann-windowed, mean removed; "
             "experiments/superres/metrics.py), x 1e-3.", "",
             "Baselines (mean over the runs; CIFAR-10 runs all validate on the same test images, in the same "
             f"order): bicubic interpolation PSNR {_fmt(bic_psnr, '.2f')} dB, SSIM {_fmt(bic_ssim, '.4f')}, "
             f"checkerboard {_fmt(cb_bic, '.3f', 1e3)}; the target images' own checkerboard "
             f"{_fmt(cb_target, '.3f', 1e3)}.", ""]
    table = []
    for r in rows:
        gain = [a - b for a, b in zip(r["psnr"], r["psnr_bicubic"]) if a is not None and b is not None]
        ratio = [a / b for a, b in zip(r["checkerboard"], r["checkerboard_target"]) if a is not None and b]
        params = "n/a" if r["params"] is None else f"{r['params']:,}"
        macs = "n/a" if r["macs"] is None else f"{r['macs'] / 1e6:.2f}"
        table.append([r["label"], r["n"], mean_std(r["psnr"], ".2f"), mean_std(r["ssim"], ".4f"),
                      mean_std(gain, "+.2f"), params, macs, mean_std(r["train_throughput"], ".0f"),
                      mean_std(r["inference_throughput"], ".0f"), mean_std(r["checkerboard"], ".3f", 1e3),
                      mean_std(ratio, ".2f")])
    lines.append(markdown_table(["upsampling", "seeds", "PSNR (dB)", "SSIM", "PSNR - bicubic", "params", "MACs (M)",
                                 "train img/s", "inference img/s", "checkerboard (1e-3)", "/ target"], table))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, num_examples: int = 4) -> Path | None:
    """``upsampling.png``: example images of every variant side by side over the mean log spectra."""
    import torch

    from experiments.superres.plots import comparison_figure, save_figure

    samples = {}
    for r in rows:
        found = next((p for p in r["samples"] if p), None)
        if found is not None:
            samples[r["label"]] = torch.load(found, map_location="cpu", weights_only=True)
    columns = []
    if samples:
        first = next(iter(samples.values()))
        columns += [("input", first["input"][:num_examples]), ("bicubic", first["bicubic"][:num_examples])]
        columns += [(label, s["output"][:num_examples]) for label, s in samples.items()]
        columns.append(("target", first["target"][:num_examples]))
    spectra = []
    reference = None
    for r in rows:
        specs = [s for s in r["mean_log_spectrum"] if s and s.get("output") is not None]
        if not specs:
            continue
        if reference is None:
            reference = specs[0]
        spectra.append((r["label"], torch.tensor([s["output"] for s in specs], dtype=torch.float64).mean(0)))
    if reference is not None:
        spectra = [("bicubic", torch.tensor(reference["bicubic"], dtype=torch.float64)), *spectra,
                   ("target", torch.tensor(reference["target"], dtype=torch.float64))]
    if not columns and not spectra:
        return None
    fig = comparison_figure(columns, spectra, title="x2 super-resolution: example validation images (lowest seed)",
                            spectra_title="mean log spectra (over seeds)")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    return study_main("upsampling", __doc__, argv, aggregate, render, plot, figure="upsampling.png",
                      caption="examples and mean log spectra")
