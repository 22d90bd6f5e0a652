"""LightningModule: x r super-resolution (the upsampling study) with PSNR, SSIM, checkerboard energy,
model cost, throughput and example figures.

Logged metrics
--------------
``train/loss`` (MSE or L1 against the target), ``val/loss``, ``val/psnr`` (dB, mean over images of
torchmetrics' PSNR, data range 1), ``val/ssim`` (torchmetrics SSIM, Gaussian 11x11, sigma 1.5, RGB,
mean over images), ``val/psnr_best``, the same for bicubic interpolation of the input
(``val/psnr_bicubic``, ``val/ssim_bicubic``), ``val/checkerboard`` / ``val/checkerboard_target`` /
``val/checkerboard_bicubic`` (mean fraction of spectral energy at the r-periodic frequencies:
:mod:`experiments.superres.metrics`), ``lr``, ``train/step_time_ms`` and ``train/throughput``
(training images / s), ``model/params``, ``model/flops`` and ``model/macs`` (forward, one
low-resolution input). PSNR, SSIM and the checkerboard energy are computed on outputs clamped to [0, 1].

After every validation epoch ``<output_dir>/upsampling/examples_epoch_NNN.png`` shows the first
``num_examples`` validation images (input, bicubic, output, target) and the mean log spectra of the
output, the target and bicubic over the validation images, and is logged to W&B
(``val/examples``); ``upsampling/samples.pt`` keeps those images and spectra for the report. At the
end of fitting the inference throughput (eval mode, no grad, ``throughput_batch`` images, median of
``throughput_reps``) is measured. Everything goes into summary.json under ``upsampling``
(``summary_extras``); the history of the validation metrics is kept in checkpoints, so a resumed run
continues it.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from statistics import median
from typing import Any, Callable

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from experiments.flops import count_flops, count_params
from experiments.history import ValidationHistoryMixin
from experiments.optim import WarmupCosineMixin
from experiments.superres.metrics import checkerboard_energy, log_spectrum
from experiments.superres.model import bicubic_upsample, upsample_label
from experiments.timing import StepTimingMixin

log = logging.getLogger(__name__)

FLOPS_NOTE = ("forward FLOPs of one low-resolution input in eval mode (FlopCounterMode: convolutions and "
              "transposed convolutions; pixel shuffle, interpolation, ReLU and additions are not counted); "
              "MACs = FLOPs / 2")


class SuperResModule(StepTimingMixin, ValidationHistoryMixin, WarmupCosineMixin, L.LightningModule):
    """See the module docstring.

    Args:
        net: the network, (N, 3, H, W) -> (N, 3, H * r, W * r) (:class:`experiments.superres.model.SRNet`).
        optimizer: a partial optimizer (``params=`` is given here).
        scheduler: ``cosine`` (per step, after a linear warm-up over ``warmup_fraction``) or ``none``.
        loss: ``mse`` or ``l1``.
        image_size: the target's side (32 for CIFAR-10); the input's is ``image_size / r``.
        checkerboard_radius: neighbourhood of the periodic bins in the checkerboard measure.
        num_examples: validation images in the example figure.
        output_dir: the run folder (figures go to ``<output_dir>/upsampling/``); None: no files.
    """

    history_key = "upsampling_history"  # the validation history in checkpoints: a resumed run continues it

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], scheduler: str = "cosine",
                 warmup_fraction: float = 0.05, loss: str = "mse", image_size: int = 32,
                 checkerboard_radius: int = 1, num_examples: int = 6, output_dir: str | None = None,
                 throughput_batch: int = 256, throughput_reps: int = 5, count_flops: bool = True,
                 sync_timing: bool = True):
        super().__init__()
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scale = int(getattr(net, "scale", 2))
        if image_size % self.scale:
            raise ValueError(f"image_size={image_size} is not a multiple of the network's scale {self.scale}")
        self.criterion = nn.MSELoss() if loss == "mse" else nn.L1Loss()
        from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

        def psnr():  # per-image PSNR averaged over images (as super-resolution papers report it)
            return PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean")

        self.val_psnr, self.val_psnr_bicubic = psnr(), psnr()
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_ssim_bicubic = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.val_loss = MeanMetric()
        self.val_cb, self.val_cb_target, self.val_cb_bicubic = MeanMetric(), MeanMetric(), MeanMetric()
        self.model_stats: dict[str, Any] = {}
        self.summary_extras: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        self.inference: dict[str, Any] = {}
        self._reset_timing()
        self._reset_validation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        side = self.hparams.image_size // self.scale
        return (getattr(self.net, "in_channels", 3), side, side)

    def _reset_validation(self) -> None:
        self._spectra: dict[str, torch.Tensor] = {}
        self._spectra_count = 0
        self._images = 0
        self._examples: dict[str, torch.Tensor] | None = None

    # -- start of fit: model size ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        params = count_params(self.net)
        flops = None
        if self.hparams.count_flops:
            try:
                flops = count_flops(self.net, self.input_shape)
            except Exception as err:  # noqa: BLE001 - statistics must not stop training
                log.warning("FLOP count failed: %s", err)
        macs = None if flops is None else flops // 2
        self.model_stats = {"params": params, "flops": flops, "macs": macs, "flops_note": FLOPS_NOTE,
                            "input_shape": list(self.input_shape)}
        rank_zero_info(f"super-resolution net ({upsample_label_of(self.net)}): {params:,} parameters, "
                       f"{'n/a' if macs is None else f'{macs / 1e6:.2f}'} M MACs per "
                       f"{'x'.join(map(str, self.input_shape))} input")
        if self.trainer.ckpt_path:  # resumed: the first invocation logged these
            return
        for logger in self.loggers:
            logger.log_metrics({"model/params": float(params), "model/flops": float(flops or 0),
                                "model/macs": float(macs or 0)}, step=0)

    # -- training -------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        lr, hr = batch
        loss = self.criterion(self(lr), hr)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(lr))
        return loss

    # -- validation -----------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._reset_validation()

    def validation_step(self, batch, batch_idx: int) -> None:
        lr, hr = batch
        raw = self(lr)
        self.val_loss.update(self.criterion(raw, hr), weight=len(lr))
        sr = raw.clamp(0, 1)
        bic = bicubic_upsample(lr, self.scale).clamp(0, 1)
        self.val_psnr.update(sr, hr)
        self.val_ssim.update(sr, hr)
        self.val_psnr_bicubic.update(bic, hr)
        self.val_ssim_bicubic.update(bic, hr)
        r, radius = self.scale, self.hparams.checkerboard_radius
        if r >= 2:
            self.val_cb.update(checkerboard_energy(sr, r, radius).float())
            self.val_cb_target.update(checkerboard_energy(hr, r, radius).float())
            self.val_cb_bicubic.update(checkerboard_energy(bic, r, radius).float())
        for name, images in (("output", sr), ("target", hr), ("bicubic", bic)):
            total = log_spectrum(images).sum(dim=0).cpu()
            self._spectra[name] = self._spectra[name] + total if name in self._spectra else total
        self._spectra_count += len(lr)
        self._images += len(lr)
        if self._examples is None:
            k = self.hparams.num_examples
            self._examples = {"input": lr[:k].detach().cpu(), "bicubic": bic[:k].detach().cpu(),
                              "output": sr[:k].detach().cpu(), "target": hr[:k].detach().cpu()}

    def on_validation_epoch_end(self) -> None:
        if self._images == 0:
            return
        values = {"psnr": self.val_psnr.compute(), "ssim": self.val_ssim.compute(),
                  "psnr_bicubic": self.val_psnr_bicubic.compute(), "ssim_bicubic": self.val_ssim_bicubic.compute(),
                  "loss": self.val_loss.compute()}
        if self.scale >= 2:
            values.update(checkerboard=self.val_cb.compute(), checkerboard_target=self.val_cb_target.compute(),
                          checkerboard_bicubic=self.val_cb_bicubic.compute())
        for metric in (self.val_psnr, self.val_ssim, self.val_psnr_bicubic, self.val_ssim_bicubic, self.val_loss,
                       self.val_cb, self.val_cb_target, self.val_cb_bicubic):
            metric.reset()
        if self.trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in values.items()}
        entry = {"epoch": int(self.current_epoch), "step": int(self.global_step), **values}
        self.history.append(entry)
        best = max(h["psnr"] for h in self.history)
        for name, value in values.items():
            self.log(f"val/{name}", value, prog_bar=name in ("psnr", "ssim"), batch_size=1)
        self.log("val/psnr_best", best, batch_size=1)
        spectra = {k: v / self._spectra_count for k, v in self._spectra.items()}
        extras = dict(self.summary_extras.get("upsampling") or {})
        extras.update(self._describe(), **values, psnr_best=best, val_images=self._images,
                      history=list(self.history),
                      mean_log_spectrum={k: [[round(float(x), 4) for x in row] for row in v.tolist()]
                                         for k, v in spectra.items()})
        self.summary_extras = {"upsampling": extras}
        if self.trainer.is_global_zero and self.hparams.output_dir:
            try:
                self._write_examples(spectra, extras)
            except Exception as err:  # noqa: BLE001 - pictures must not stop training
                log.warning("could not draw the example figure: %s", err)

    def _describe(self) -> dict[str, Any]:
        net = self.net
        upsample = getattr(net, "upsample", None)
        return {"variant": getattr(net, "upsample_variant", None), "label": upsample_label_of(net),
                "icnr": bool(getattr(upsample, "icnr", False)), "upsample_layer": repr(upsample),
                "scale": self.scale, "residual": getattr(net, "residual", None),
                "body_conv": getattr(net, "conv_variant", None), "image_size": self.hparams.image_size,
                "checkerboard_radius": self.hparams.checkerboard_radius, "loss_fn": self.hparams.loss,
                "macs": self.model_stats.get("macs"), "params": self.model_stats.get("params")}

    def _write_examples(self, spectra: dict[str, torch.Tensor], extras: dict[str, Any]) -> None:
        from experiments.superres.plots import comparison_figure, save_figure

        out = Path(self.hparams.output_dir) / "upsampling"
        epoch = int(self.current_epoch)
        label = extras["label"]
        ex = self._examples
        cols = [("input (bicubic-downsampled)", ex["input"]), ("bicubic", ex["bicubic"]), (label, ex["output"]),
                ("target", ex["target"])]
        specs = [("bicubic", spectra["bicubic"]), (label, spectra["output"]), ("target", spectra["target"])]
        fig = comparison_figure(
            cols, specs, title=f"{label}, epoch {epoch}, step {self.global_step}: PSNR {extras['psnr']:.2f} dB "
                               f"(bicubic {extras['psnr_bicubic']:.2f}), checkerboard {extras.get('checkerboard', 0):.2e}",
            spectra_title=f"mean log spectra, {self._images} val images")
        path = save_figure(fig, out / f"examples_epoch_{epoch:03d}.png")
        torch.save({"label": label, "epoch": epoch, **{k: v.clone() for k, v in ex.items()},
                    "spectra": {k: v.float() for k, v in spectra.items()}}, out / "samples.pt")
        self.summary_extras["upsampling"].update(figure=str(path), samples=str(out / "samples.pt"),
                                                 figures=[*extras.get("figures", []), str(path)])
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({"val/examples": wandb.Image(str(path), caption=f"{label}, epoch {epoch}"),
                                       "trainer/global_step": self.global_step})

    # -- end of fit: inference throughput ----------------------------------------------------------------
    def on_fit_end(self) -> None:
        self.inference = self.measure_inference(self.hparams.throughput_batch, self.hparams.throughput_reps)
        tput = self.inference["throughput"]
        rank_zero_info(f"inference: {'n/a' if tput is None else f'{tput:.0f}'} images/s "
                       f"(batch {self.inference['batch_size']}, {self.device.type})")
        if self.summary_extras.get("upsampling") is not None:
            self.summary_extras["upsampling"]["inference"] = self.inference
        else:
            self.summary_extras = {"upsampling": {**self._describe(), "inference": self.inference}}

    @torch.no_grad()
    def measure_inference(self, batch_size: int, reps: int) -> dict[str, Any]:
        """Forward-only images/s of the network (eval mode, no grad) on random inputs of
        ``input_shape``: median over ``reps`` timed batches after one warm-up batch."""
        was_training = self.net.training
        self.net.eval()
        x = torch.rand(batch_size, *self.input_shape, device=self.device)
        times = []
        for i in range(reps + 1):
            self._sync()
            t0 = time.perf_counter()
            self.net(x)
            self._sync()
            if i:  # the first batch warms up (allocations, kernel selection)
                times.append(time.perf_counter() - t0)
        self.net.train(was_training)
        t = median(times) if times else math.nan
        return {"throughput": batch_size / t if t > 0 else None, "batch_ms": t * 1e3 if times else None,
                "batch_size": batch_size,
                "reps": reps, "device": self.device.type, "threads": torch.get_num_threads()}


def upsample_label_of(net: nn.Module) -> str:
    """The study's name of ``net``'s upsampling layer (``subpixel_icnr`` for sub-pixel with ICNR)."""
    label = getattr(net, "upsample_label", None)
    if label is not None:
        return label
    upsample = getattr(net, "upsample", None)
    return upsample_label({"variant": getattr(net, "upsample_variant", None), "icnr": getattr(upsample, "icnr", False)})
