"""Filter-response correlation analysis of the Deep Roots study (Ioannou et al., CVPR 2017).

Every pixel of every analysed image is one sample of a layer's responses (its C channel values).
Two layers are compared at the resolution of the larger map: the smaller map is upsampled
(nearest neighbour) first. :class:`CovarianceAccumulator` keeps the running sums and cross products
of the concatenated responses ``z = [x; y]`` in float64 (memory (C1 + C2)^2, whatever the number of
samples), which gives the joint covariance and from it:

* ``inter``: |correlation| between the channels of layer 1 (rows) and layer 2 (columns), C1 x C2;
* ``intra``: |correlation| among the channels of one layer, C x C;
* the ZCA-whitened versions: each layer's responses are whitened on their own,
  ``W = (S + eps * mean(diag S) * I)^(-1/2)``, and the correlation of the whitened responses is
  computed exactly from the covariance (``W1 S12 W2`` normalised), so whitening is also one pass.

:func:`block_diagonality` is the share of the absolute correlation mass inside the ``g`` diagonal
blocks (rows and columns split into ``g`` equal contiguous groups); without any structure it is
about ``1/g`` (the share of cells in the blocks; for intra-layer matrices the diagonal is left out).

:class:`DeepRootsAnalysis` is the Lightning callback: at the end of fitting it runs the analysis on
training images, saves heatmaps (PNG) and the matrices (``deep_roots/correlations.pt``) in the run
directory, logs the heatmaps to W&B when a WandbLogger is active, and puts the indices in
``pl_module.summary_extras["deep_roots"]`` (hence in summary.json).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ statistics


class CovarianceAccumulator:
    """Streaming float64 mean / covariance of the concatenated responses of several layers."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = [int(s) for s in sizes]
        d = sum(self.sizes)
        self.n = 0
        self.sum = torch.zeros(d, dtype=torch.float64)
        self.cross = torch.zeros(d, d, dtype=torch.float64)

    def update(self, *samples: Tensor) -> None:
        """``samples``: one (N, C_i) tensor per layer, the same N rows (pixels)."""
        z = torch.cat([s.reshape(s.shape[0], -1) for s in samples], 1).to(torch.float64)
        z = z.cpu()
        self.n += z.shape[0]
        self.sum += z.sum(0)
        self.cross += z.T @ z

    def update_maps(self, *maps: Tensor) -> None:
        """``maps``: one (B, C_i, H_i, W_i) response map per layer; the smaller ones are upsampled
        (nearest neighbour) to the largest, then every pixel is a sample."""
        h = max(m.shape[-2] for m in maps)
        w = max(m.shape[-1] for m in maps)
        flat = []
        for m in maps:
            if m.shape[-2:] != (h, w):
                m = F.interpolate(m.float(), size=(h, w), mode="nearest")
            flat.append(m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]))
        self.update(*flat)

    def covariance(self) -> Tensor:
        if self.n < 2:
            raise ValueError("need at least 2 samples")
        mean = self.sum / self.n
        return (self.cross - self.n * torch.outer(mean, mean)) / (self.n - 1)

    def blocks(self) -> list[slice]:
        out, start = [], 0
        for s in self.sizes:
            out.append(slice(start, start + s))
            start += s
        return out


def zca_matrix(cov: Tensor, eps: float = 1e-3) -> Tensor:
    """ZCA whitening matrix ``(cov + eps * mean(diag cov) * I)^(-1/2)`` (symmetric)."""
    cov = cov.to(torch.float64)
    reg = eps * float(cov.diagonal().mean().clamp_min(1e-12))
    vals, vecs = torch.linalg.eigh(cov + reg * torch.eye(cov.shape[0], dtype=cov.dtype))
    return (vecs * vals.clamp_min(1e-12).rsqrt()) @ vecs.T


def _normalise(cross: Tensor, var1: Tensor, var2: Tensor) -> Tensor:
    """cross-covariance -> correlation; channels without variance (dead units) get 0."""
    s1, s2 = var1.clamp_min(0).sqrt(), var2.clamp_min(0).sqrt()
    denom = torch.outer(s1, s2)
    return torch.where(denom > 1e-12, cross / denom.clamp_min(1e-300), torch.zeros_like(cross))


def correlations(cov: Tensor, blocks: Sequence[slice], whiten: bool = False, eps: float = 1e-3
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """From a joint covariance of two layers (``blocks`` = their index ranges): |inter| (C1 x C2) and
    |intra| of layer 1 and of layer 2, optionally for ZCA-whitened responses."""
    a, b = blocks
    s11, s22, s12 = cov[a, a], cov[b, b], cov[a, b]
    if whiten:
        w1, w2 = zca_matrix(s11, eps), zca_matrix(s22, eps)
        s12 = w1 @ s12 @ w2
        s11 = w1 @ s11 @ w1
        s22 = w2 @ s22 @ w2
    d1, d2 = s11.diagonal(), s22.diagonal()
    return (_normalise(s12, d1, d2).abs(), _normalise(s11, d1, d1).abs(), _normalise(s22, d2, d2).abs())


def correlation_matrix(x: Tensor, y: Tensor | None = None, whiten: bool = False, eps: float = 1e-3) -> Tensor:
    """|correlation| of samples ``x`` (N, C1) with ``y`` (N, C2), or of ``x`` with itself (intra)."""
    if y is None:
        acc = CovarianceAccumulator([x.shape[1]])
        acc.update(x)
        cov = acc.covariance()
        if whiten:
            w = zca_matrix(cov, eps)
            cov = w @ cov @ w
        d = cov.diagonal()
        return _normalise(cov, d, d).abs()
    acc = CovarianceAccumulator([x.shape[1], y.shape[1]])
    acc.update(x, y)
    return correlations(acc.covariance(), acc.blocks(), whiten=whiten, eps=eps)[0]


def block_mask(rows: int, cols: int, groups: int) -> Tensor:
    """True inside the ``groups`` diagonal blocks (rows / cols split into equal contiguous groups)."""
    if groups < 1 or rows % groups or cols % groups:
        raise ValueError(f"groups={groups} must divide rows={rows} and cols={cols}")
    r = torch.arange(rows) // (rows // groups)
    c = torch.arange(cols) // (cols // groups)
    return r[:, None] == c[None, :]


def block_diagonality(corr: Tensor, groups: int, exclude_diagonal: bool = False) -> dict[str, float]:
    """Share of the |correlation| mass inside the ``groups`` diagonal blocks, and the share expected
    without structure (``chance``: the fraction of cells inside the blocks, exactly 1/g for the full
    matrix; a bit less when the diagonal of an intra-layer matrix is left out)."""
    corr = corr.abs().to(torch.float64)
    inside = block_mask(*corr.shape, groups)
    keep = torch.ones_like(inside)
    if exclude_diagonal:
        if corr.shape[0] != corr.shape[1]:
            raise ValueError("exclude_diagonal needs a square matrix")
        keep &= ~torch.eye(corr.shape[0], dtype=torch.bool)
    total = float(corr[keep].sum())
    index = float(corr[keep & inside].sum()) / total if total > 0 else float("nan")
    chance = float((keep & inside).sum()) / float(keep.sum())
    return {"index": index, "chance": chance, "groups": int(groups), "one_over_g": 1.0 / groups}


# ------------------------------------------------------------------------------------ analysis


@torch.no_grad()
def analyse(net: nn.Module, images: Tensor, layers: Sequence[str] = ("conv2c", "conv3a"), groups: int = 1,
            batch_size: int = 128, eps: float = 1e-3) -> dict[str, Any]:
    """Run ``net`` on ``images`` (already normalised, any device), hook the outputs of ``layers`` (two
    module names: the earlier layer, then the later one) and return the correlation matrices (raw and
    whitened: inter = layer1 x layer2, intra = layer2 x layer2 and layer1 x layer1) and the
    block-diagonality indices for ``groups`` blocks."""
    modules = dict(net.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise KeyError(f"layers {missing} not in the model")
    captured: dict[str, Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o.detach()))
             for n in layers]
    was_training = net.training
    net.eval()
    acc = None
    try:
        for start in range(0, images.shape[0], batch_size):
            captured.clear()
            net(images[start:start + batch_size])
            maps = [captured[n] for n in layers]
            if acc is None:
                acc = CovarianceAccumulator([m.shape[1] for m in maps])
            acc.update_maps(*maps)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    if acc is None:
        raise ValueError("no images to analyse")
    cov = acc.covariance()
    result: dict[str, Any] = {"layers": list(layers), "groups": int(groups), "samples": acc.n,
                              "images": int(images.shape[0]), "eps": eps, "matrices": {}, "index": {}}
    for kind, whiten in (("raw", False), ("whitened", True)):
        inter, intra1, intra2 = correlations(cov, acc.blocks(), whiten=whiten, eps=eps)
        result["matrices"][f"inter_{kind}"] = inter.float()
        result["matrices"][f"intra_{kind}"] = intra2.float()
        result["matrices"][f"intra1_{kind}"] = intra1.float()
        result["index"][f"inter_{kind}"] = block_diagonality(inter, groups)
        result["index"][f"intra_{kind}"] = block_diagonality(intra2, groups, exclude_diagonal=True)
    return result


def color_max(mat: Tensor, key: str) -> float:
    """Colour scale of a heatmap: 1 for raw correlations; the 99th percentile of the off-diagonal
    cells for whitened ones (whitening leaves small values that a 0..1 scale would hide)."""
    if key.endswith("raw"):
        return 1.0
    mat = torch.as_tensor(mat, dtype=torch.float32)
    vals = mat[~torch.eye(*mat.shape, dtype=torch.bool)] if mat.shape[0] == mat.shape[1] else mat.flatten()
    return max(0.02, float(torch.quantile(vals, 0.99)))


TITLES = {"inter": "inter-layer |corr|, {a} (rows) x {b} (cols)", "intra": "intra-layer |corr|, {b} x {b}"}
KEYS = ("inter_raw", "inter_whitened", "intra_raw", "intra_whitened")


def heatmap_title(key: str, layers: Sequence[str], index: dict[str, float] | None = None) -> str:
    """Full title of one heatmap: what is correlated, raw or ZCA-whitened, and the block index vs 1/g."""
    kind, mode = key.split("_")
    a, b = layers
    title = f"{TITLES[kind].format(a=a, b=b)}, {'ZCA-whitened' if mode == 'whitened' else 'raw'}"
    if index is not None:
        title += (f"\nblock-diagonality {index['index']:.3f} (g={index['groups']}, 1/g={index['one_over_g']:.3f}"
                  f"{', diagonal left out' if kind == 'intra' else ''})")
    return title


def draw_heatmap(ax, mat: Tensor, key: str, groups: int, title: str = "", colorbar: bool = True,
                 labels: Sequence[str] | None = None, fontsize: float = 8):
    """One |correlation| matrix (rows, cols) on ``ax``: colour bar (0..1 raw, 0..99th percentile
    whitened, see :func:`color_max`), and white lines between the ``groups`` diagonal blocks whose
    mass the block-diagonality index measures. ``labels``: (row layer, column layer) axis labels."""
    mat = torch.as_tensor(mat, dtype=torch.float32)
    rows, cols = mat.shape
    image = ax.imshow(mat.numpy(), cmap="viridis", vmin=0, vmax=color_max(mat, key), interpolation="nearest")
    if groups > 1 and rows % groups == 0 and cols % groups == 0:
        for k in range(1, groups):
            ax.axhline(k * rows / groups - 0.5, color="white", linewidth=0.6, alpha=0.8)
            ax.axvline(k * cols / groups - 0.5, color="white", linewidth=0.6, alpha=0.8)
    if title:
        ax.set_title(title, fontsize=fontsize)
    if labels:
        ax.set_ylabel(f"{labels[0]} channel", fontsize=fontsize)
        ax.set_xlabel(f"{labels[1]} channel", fontsize=fontsize)
    ax.tick_params(labelsize=max(5, fontsize - 2))
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=max(5, fontsize - 2))
        bar.set_label("|correlation|" + (" (clipped at the 99th pct)" if not key.endswith("raw") else ""),
                      fontsize=max(5, fontsize - 1))
    return image


def plot_heatmaps(result: dict[str, Any], out_dir: Path, title: str = "") -> dict[str, Path]:
    """One PNG per matrix (inter/intra x raw/whitened) plus ``heatmaps.png`` with all four; each with
    its full title, a colour bar and lines between the g diagonal blocks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    a, b = result["layers"]
    groups = int(result["groups"])
    paths: dict[str, Path] = {}
    fig_all, axes = plt.subplots(1, 4, figsize=(22, 5.6), layout="constrained")
    for key, ax_all in zip(KEYS, axes):
        kind = key.split("_")[0]
        mat = result["matrices"][key]
        label = heatmap_title(key, (a, b), result["index"][key])
        labels = (a if kind == "inter" else b, b)
        fig, ax = plt.subplots(figsize=(6, 5.4), layout="constrained")
        draw_heatmap(ax, mat, key, groups, label, labels=labels)
        draw_heatmap(ax_all, mat, key, groups, label, labels=labels)
        if title:
            fig.suptitle(title, fontsize=10)
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths[key] = path
    if title:
        fig_all.suptitle(f"{title}: white lines mark the g diagonal blocks", fontsize=11)
    paths["all"] = out_dir / "heatmaps.png"
    fig_all.savefig(paths["all"], dpi=90)
    plt.close(fig_all)
    return paths


def check_conv(conv) -> None:
    """The Deep Roots experiment's conv group: only ``grouped`` with ``groups`` unset (``model.net.root``
    sets conv2a's and conv3a's groups). Anything else raises ValueError, since NiN would ignore it and
    the run would record a variant it did not train."""
    if conv is None:
        return
    variant = conv.get("variant")
    if variant != "grouped":
        raise ValueError(
            f"experiment=deep_roots does not take conv={variant}: its spatial layers conv2a / conv3a are grouped "
            "convolutions whose groups come from model.net.root (root-r: r and r/2 groups; model.net.root=1 is "
            "plain NiN). Drop conv=, or compare conv variants with experiment=compare_variants.")
    extra = {k: v for k, v in conv.items() if k != "variant" and v is not None}
    if extra:
        raise ValueError(f"experiment=deep_roots does not take conv options {extra}: set the groups with "
                         "model.net.root=r (conv2a: r groups, conv3a: r/2) or model.net.groups=[g2a,g3a]")


def _training_images(datamodule, n: int, device: torch.device, seed: int = 0) -> Tensor:
    """``n`` training images (no augmentation), normalised like the training batches."""
    from experiments.classification.data.tensors import normalize

    x = datamodule.train_x
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[: min(n, x.shape[0])]
    x = x[idx.to(x.device)].to(device)
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    return normalize(x, mean, std) if mean is not None else normalize(x)


class DeepRootsAnalysis(L.Callback):
    """At the end of fitting: inter-/intra-layer correlation of ``layers`` on ``num_images`` training
    images, heatmaps in ``<run>/<subdir>/``, indices in ``summary_extras["deep_roots"]``.

    ``groups``: blocks of the index; ``None`` takes the groups of the second layer's convolution
    (conv3a's for root models). ``conv``: the run's conv group, checked by :func:`check_conv` (the
    experiment takes no ``conv=``); summary.json's ``conv`` then records the convolutions NiN built."""

    def __init__(self, layers: Sequence[str] = ("conv2c", "conv3a"), num_images: int = 512, batch_size: int = 128,
                 eps: float = 1e-3, groups: int | None = None, subdir: str = "deep_roots", seed: int = 0,
                 log_images: bool = True, conv=None):
        check_conv(conv)
        self.layers, self.num_images, self.batch_size = list(layers), int(num_images), int(batch_size)
        self.eps, self.groups, self.subdir, self.seed, self.log_images = eps, groups, subdir, seed, log_images

    def _groups(self, net: nn.Module) -> int:
        if self.groups:
            return int(self.groups)
        mod = dict(net.named_modules())[self.layers[1]]
        conv = getattr(mod, "conv", mod)
        return int(getattr(conv, "groups", 1))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Record what conv2a / conv3a are (summary.json ``conv``, replacing the config's group)."""
        net = getattr(pl_module, "net", pl_module)
        groups = getattr(net, "groups", None)
        if groups is None:
            return
        variants = {name: ("grouped" if g > 1 else "standard") for name, g in zip(("conv2a", "conv3a"), groups)}
        conv = {"variant": "grouped" if any(g > 1 for g in groups) else "standard",
                "groups": {"conv2a": int(groups[0]), "conv3a": int(groups[1])},
                "set_by": f"model.net.root={getattr(net, 'root', None)}"}
        if not isinstance(getattr(pl_module, "summary_extras", None), dict):
            pl_module.summary_extras = {}
        pl_module.summary_extras["conv"] = conv
        log.info("deep roots: conv2a %s (g=%d), conv3a %s (g=%d), other layers standard (%s)", variants["conv2a"],
                 groups[0], variants["conv3a"], groups[1], conv["set_by"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        if datamodule is None or getattr(datamodule, "train_x", None) is None:
            log.warning("deep roots analysis: no datamodule with train_x; skipped")
            return
        net = getattr(pl_module, "net", pl_module)
        groups = self._groups(net)
        images = _training_images(datamodule, self.num_images, pl_module.device, self.seed)
        result = analyse(net, images, self.layers, groups=groups, batch_size=self.batch_size, eps=self.eps)
        out_dir = Path(trainer.default_root_dir) / self.subdir
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"matrices": result["matrices"], "index": result["index"], "layers": result["layers"],
                    "groups": groups}, out_dir / "correlations.pt")
        net_root = getattr(net, "root", None)
        title = f"root-{net_root} (g={groups})" if net_root is not None else ""
        paths = plot_heatmaps(result, out_dir, title=title)
        extras = {"layers": result["layers"], "groups": groups, "images": result["images"],
                  "samples": result["samples"], "eps": self.eps, "index": result["index"],
                  "correlations": str(out_dir / "correlations.pt"),
                  "heatmaps": {k: str(p) for k, p in paths.items()}}
        if net_root is not None:
            from experiments.classification.models.nin import conv_macs

            macs = conv_macs(net)
            extras.update(root=net_root, conv_groups=list(getattr(net, "groups", [])), macs=macs["total"],
                          macs_per_layer={k: v for k, v in macs.items() if k != "total"},
                          params=sum(p.numel() for p in net.parameters()))
        if not isinstance(getattr(pl_module, "summary_extras", None), dict):
            pl_module.summary_extras = {}
        pl_module.summary_extras["deep_roots"] = extras
        idx = result["index"]
        log.info("deep roots: block-diagonality (g=%d, 1/g=%.3f) inter raw %.3f whitened %.3f, intra raw %.3f "
                 "whitened %.3f", groups, 1 / groups, idx["inter_raw"]["index"], idx["inter_whitened"]["index"],
                 idx["intra_raw"]["index"], idx["intra_whitened"]["index"])
        self._log(trainer, paths, idx, trainer.global_step)

    def _log(self, trainer: L.Trainer, paths: dict[str, Path], idx: dict, step: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        flat = {f"deep_roots/{k}_index": v["index"] for k, v in idx.items()}
        for logger in trainer.loggers:
            try:
                logger.log_metrics(flat, step=step)
                if self.log_images and isinstance(logger, WandbLogger):
                    keys = [k for k in paths if k != "all"]
                    logger.log_image(key="deep_roots/heatmaps", images=[str(paths[k]) for k in keys],
                                     caption=keys, step=step)
            except Exception as err:  # noqa: BLE001 - logging must not fail the run
                log.warning("deep roots: could not log to %s: %s", type(logger).__name__, err)
