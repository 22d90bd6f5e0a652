"""Figures of the upsampling study: example images side by side and mean log spectra.

Used per run (input, bicubic, the run's output, target) and by the report (input, bicubic, every
variant's output, target).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def comparison_figure(columns: Sequence[tuple[str, torch.Tensor]], spectra: Sequence[tuple[str, torch.Tensor]],
                      title: str = "", spectra_title: str = ""):
    """A grid: one row per example image, one column per source, then one row of mean log spectra.

    Args:
        columns: ``(title, images)`` per column; images (K, 3, H_i, W_i) float in [0, 1], the same K in
            every column (sizes may differ: the low-resolution input is shown with nearest-neighbour
            pixels at the same panel size).
        spectra: ``(title, spectrum)`` panels, spectrum (H, W) float (a mean log10 power spectrum,
            zero frequency at the centre; :func:`experiments.superres.metrics.log_spectrum`); all on
            one colour scale, with a colour bar.
    Returns:
        the matplotlib figure (Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min((len(images) for _, images in columns), default=0)
    # one spare column beside the spectra holds their colour bar (a bar attached to a panel would shift that column)
    ncols = max(len(columns), len(spectra) + 1 if spectra else 1)
    rows = k + (1 if spectra else 0)
    fig, axes = plt.subplots(rows, ncols, figsize=(1.9 * ncols + 0.9, 1.9 * rows + 0.9), squeeze=False,
                             layout="constrained")
    for j, (name, images) in enumerate(columns):
        for i in range(k):
            ax = axes[i, j]
            img = images[i].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(img, interpolation="nearest")
            if i == 0:
                ax.set_title(f"{name}\n{images.shape[-1]}x{images.shape[-2]}", fontsize=8)
    if spectra:
        values = torch.stack([s.detach().double().cpu() for _, s in spectra])
        lo, hi = float(values.quantile(0.01)), float(values.max())
        im = None
        for j, (name, spec) in enumerate(spectra):
            ax = axes[k, j]
            im = ax.imshow(spec.detach().double().cpu().numpy(), cmap="magma", vmin=lo, vmax=hi,
                           interpolation="nearest")
            ax.set_title(name, fontsize=8)
        cax = axes[k, len(spectra)].inset_axes([0.0, 0.05, 0.12, 0.9])
        fig.colorbar(im, cax=cax, label="log10 power")
        if spectra_title:
            axes[k, 0].set_ylabel(spectra_title, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (PNG; the folder is created), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
