"""LightningModule: object detection (torchvision Faster R-CNN) with mAP, timing and sample predictions.

Logged metrics
--------------
``train/loss`` (sum of the four Faster R-CNN losses) and each loss (``train/loss_classifier``,
``train/loss_box_reg``, ``train/loss_objectness``, ``train/loss_rpn_box_reg``), ``val/map_50``
(mAP at IoU 0.5), ``val/map`` (COCO mAP@[.5:.95]), ``val/map_50_best``, ``lr``,
``train/step_time_ms`` and ``train/throughput`` (images / s), ``model/params``, ``model/flops``.
mAP comes from ``torchmetrics.detection.MeanAveragePrecision`` (pycocotools backend).

After every validation epoch a few validation images with their predictions (red, score >=
``draw_score_thresh``) and ground truth (green) are drawn into ``<output_dir>/predictions/*.png``
and, with a WandbLogger, logged as a W&B table. The final numbers go to summary.json under
``detection`` (``summary_extras``).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from experiments import utils
from experiments.flops import count_flops, count_params
from experiments.timing import StepTimingMixin

log = logging.getLogger(__name__)

FLOPS_NOTE = ("forward FLOPs of one image in eval mode (FlopCounterMode: convolutions incl. deformable, linear "
              "layers, deformable RoI pooling; torchvision RoI Align, NMS and anchor/box coding are not counted)")


class DetectionModule(StepTimingMixin, L.LightningModule):
    def __init__(self, net: Callable[..., nn.Module], optimizer: Callable[..., torch.optim.Optimizer],
                 num_classes: int | None = None, image_size: int = 320, roi_pool: str = "standard",
                 scheduler: str = "cosine", warmup_fraction: float = 0.1, output_dir: str | None = None,
                 num_prediction_images: int = 4, draw_score_thresh: float = 0.3, count_flops: bool = True,
                 sync_timing: bool = True):
        super().__init__()
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer"])
        self.net_factory = net
        self.optimizer_factory = optimizer
        self.net: nn.Module | None = None
        self.classes: list[str] = []
        if num_classes is not None:
            self.net = net(num_classes=num_classes)
        self.model_stats: dict[str, Any] = {}
        self.summary_extras: dict[str, Any] = {}
        self._reset_timing()
        self.map_metric = None
        self.history: list[dict[str, float]] = []
        self._samples: list = []

    # -- building ------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "load"):
            dm.load()
            self.classes = list(getattr(dm, "classes", []))
        if self.net is None:
            if dm is None or not hasattr(dm, "num_classes"):
                raise ValueError("model.num_classes is null and the datamodule does not say how many classes")
            self.net = self.net_factory(num_classes=dm.num_classes)
        if self.map_metric is None:
            from torchmetrics.detection import MeanAveragePrecision

            self.map_metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def forward(self, images, targets=None):
        return self.net(images, targets)

    def on_fit_start(self) -> None:
        params = count_params(self.net)
        flops = None
        if self.hparams.count_flops:
            try:
                flops = count_flops(self.net, (3, self.hparams.image_size, self.hparams.image_size))
            except Exception as err:  # noqa: BLE001 - statistics must not stop training
                log.warning("FLOP count failed: %s", err)
        self.model_stats = {"params": params, "flops": flops, "flops_note": FLOPS_NOTE}
        rank_zero_info(f"detector: {params:,} parameters, "
                       f"{'n/a' if flops is None else f'{flops / 1e9:.2f}'} GFLOPs ({FLOPS_NOTE})")
        for logger in self.loggers:
            logger.log_metrics({"model/params": float(params), "model/flops": float(flops or 0)}, step=0)

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.net(images, targets)
        loss = sum(losses.values())
        bs = len(images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        for k, v in losses.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # -- validation ----------------------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        preds = self.net(images)
        self.map_metric.update([{k: v.detach().cpu() for k, v in p.items()} for p in preds],
                               [{k: v.cpu() for k, v in t.items()} for t in targets])
        if len(self._samples) < self.hparams.num_prediction_images:
            for img, p, t in zip(images, preds, targets):
                if len(self._samples) < self.hparams.num_prediction_images:
                    self._samples.append((img.detach().cpu(), {k: v.detach().cpu() for k, v in p.items()},
                                          {k: v.cpu() for k, v in t.items()}))

    def on_validation_epoch_end(self) -> None:
        res = self.map_metric.compute()
        self.map_metric.reset()
        samples, self._samples = self._samples, []
        if self.trainer.sanity_checking:
            return
        m50, m = float(res["map_50"]), float(res["map"])
        m50, m = (0.0 if math.isnan(m50) or m50 < 0 else m50), (0.0 if math.isnan(m) or m < 0 else m)
        self.history.append({"epoch": int(self.current_epoch), "map_50": m50, "map": m})
        best = max(h["map_50"] for h in self.history)
        self.log("val/map_50", m50, prog_bar=True, batch_size=1)
        self.log("val/map", m, prog_bar=True, batch_size=1)
        self.log("val/map_50_best", best, batch_size=1)
        self.summary_extras = {"detection": {
            "map_50": m50, "map": m, "map_50_best": best, "history": list(self.history), "classes": self.classes,
            "roi_pool": self.hparams.roi_pool, "image_size": self.hparams.image_size, "val_images": None}}
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "val_set", None) is not None:
            self.summary_extras["detection"]["val_images"] = len(dm.val_set)
        if self.trainer.is_global_zero and samples:
            try:
                self._draw(samples)
            except Exception as err:  # noqa: BLE001 - pictures must not stop training
                log.warning("could not draw predictions: %s", err)

    def _draw(self, samples) -> None:
        from torchvision.io import write_png
        from torchvision.utils import draw_bounding_boxes

        names = ["bg", *self.classes]
        thresh = self.hparams.draw_score_thresh
        drawn = []
        for img, pred, tgt in samples:
            u8 = (img.clamp(0, 1) * 255).to(torch.uint8)
            keep = pred["scores"] >= thresh
            if not keep.any() and len(pred["scores"]):
                keep = pred["scores"] >= pred["scores"].max()  # show the best guess
            labels = [f"{names[int(l)] if int(l) < len(names) else int(l)} {s:.2f}"
                      for l, s in zip(pred["labels"][keep], pred["scores"][keep])]
            out = draw_bounding_boxes(u8, tgt["boxes"], colors="lime", width=2) if len(tgt["boxes"]) else u8
            if keep.any():
                out = draw_bounding_boxes(out, pred["boxes"][keep], labels=labels, colors="red", width=2)
            drawn.append((out, int(keep.sum()), float(pred["scores"].max()) if len(pred["scores"]) else 0.0))
        out_dir = self.hparams.output_dir
        if out_dir:
            folder = Path(out_dir) / "predictions"
            folder.mkdir(parents=True, exist_ok=True)
            for i, (img, _, _) in enumerate(drawn):
                write_png(img, str(folder / f"val_{i}.png"))
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                table = wandb.Table(columns=["epoch", "image", "boxes_drawn", "max_score"])
                for img, n, s in drawn:
                    table.add_data(int(self.current_epoch), wandb.Image(img.permute(1, 2, 0).numpy()), n, s)
                logger.experiment.log({"val/predictions": table})

    # -- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        return utils.sgd_with_warmup_cosine(self.net, self.optimizer_factory, self.hparams.scheduler,
                                            self.hparams.warmup_fraction, self.trainer.estimated_stepping_batches)
