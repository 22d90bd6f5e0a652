"""LightningModule: object detection (torchvision Faster R-CNN) with mAP, timing and sample predictions.

Logged metrics
--------------
``train/loss`` (sum of the four Faster R-CNN losses) and each loss (``train/loss_classifier``,
``train/loss_box_reg``, ``train/loss_objectness``, ``train/loss_rpn_box_reg``), ``val/map_50``
(mAP at IoU 0.5), ``val/map`` (COCO mAP@[.5:.95]), ``val/map_50_best``, ``lr``,
``train/step_time_ms`` and ``train/throughput`` (images / s), ``model/params``, ``model/flops``.
mAP comes from ``torchmetrics.detection.MeanAveragePrecision`` (pycocotools backend).

After every validation epoch a few validation images are drawn at their original aspect ratio with
ground truth (green, class) and predictions (red, dashed, class and score >= ``draw_score_thresh``,
else the best one) and a legend into ``<output_dir>/predictions/epoch_NNN.png`` (one file per
epoch) and, with a WandbLogger, logged as an image (``val/predictions``). The final numbers, the
mAP history and the training schedule go to summary.json under ``detection`` (``summary_extras``);
the mAP history is kept in checkpoints, so a resumed run continues it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from experiments.flops import count_flops, count_params
from experiments.history import ValidationHistoryMixin
from experiments.optim import WarmupCosineMixin
from experiments.timing import StepTimingMixin

log = logging.getLogger(__name__)

FLOPS_NOTE = ("forward FLOPs of one image in eval mode (FlopCounterMode: convolutions incl. deformable, linear "
              "layers, deformable RoI pooling; torchvision RoI Align, NMS and anchor/box coding are not counted)")


class DetectionModule(StepTimingMixin, ValidationHistoryMixin, WarmupCosineMixin, L.LightningModule):
    history_key = "detection_history"  # the mAP history in checkpoints: a resumed run continues it

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
        losses = self.net(images, [_box_target(t) for t in targets])
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
                               [{k: v.cpu() for k, v in _box_target(t).items()} for t in targets])
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
        previous = (self.summary_extras.get("detection") or {}).get("predictions", [])
        self.summary_extras = {"detection": {
            "map_50": m50, "map": m, "map_50_best": best, "history": list(self.history), "classes": self.classes,
            "roi_pool": self.hparams.roi_pool, "image_size": self.hparams.image_size, "val_images": None,
            "schedule": self._schedule() if self.trainer.state.fn == TrainerFn.FITTING else None,
            "predictions": previous}}
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "val_set", None) is not None:
            self.summary_extras["detection"]["val_images"] = len(dm.val_set)
        if self.trainer.is_global_zero and samples:
            try:
                path = self._draw(samples)
                if path is not None:
                    self.summary_extras["detection"]["predictions"] = [*previous, str(path)]
            except Exception as err:  # noqa: BLE001 - pictures must not stop training
                log.warning("could not draw predictions: %s", err)

    def _schedule(self) -> dict[str, Any]:
        """What this run trains for: epochs, batches per epoch, batch size, steps, image size, optimizer
        and learning-rate schedule (the detection report prints it beside the mAPs)."""
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        opt = getattr(self.optimizer_factory, "keywords", {}) or {}
        return {"max_epochs": trainer.max_epochs, "limit_train_batches": trainer.limit_train_batches,
                "train_batches_per_epoch": trainer.num_training_batches
                if isinstance(trainer.num_training_batches, int) else None,
                "batch_size": getattr(dm, "batch_size", None), "image_size": self.hparams.image_size,
                "planned_steps": int(trainer.estimated_stepping_batches)
                if math.isfinite(trainer.estimated_stepping_batches) else None,
                "optimizer": getattr(getattr(self.optimizer_factory, "func", None), "__name__", None),
                "lr": opt.get("lr"), "momentum": opt.get("momentum"), "weight_decay": opt.get("weight_decay"),
                "scheduler": self.hparams.scheduler, "warmup_fraction": self.hparams.warmup_fraction,
                "max_time_s": next((getattr(c, "_duration", None) for c in trainer.callbacks if isinstance(c, Timer)),
                                   None)}

    def _draw(self, samples) -> Path | None:
        """Draw ``samples`` into ``<output_dir>/predictions/epoch_NNN.png`` and log it to W&B."""
        out_dir = self.hparams.output_dir
        path = None
        epoch = int(self.current_epoch)
        if out_dir:
            path = draw_predictions(samples, self.classes, self.hparams.draw_score_thresh,
                                    Path(out_dir) / "predictions" / f"epoch_{epoch:03d}.png",
                                    title=f"epoch {epoch}, step {self.global_step}: validation predictions")
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger) and path is not None:
                import wandb

                logger.experiment.log({"val/predictions": wandb.Image(str(path), caption=f"epoch {epoch}"),
                                       "trainer/global_step": self.global_step})
        return path


def _box_target(target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys the detector and the mAP metric take (the data's ``orig_size`` is for drawing only)."""
    return {"boxes": target["boxes"], "labels": target["labels"]}


def draw_predictions(samples, classes: list[str], score_thresh: float, path: str | Path, title: str = "",
                     long_side: int = 512) -> Path:
    """Draw :func:`prediction_figure` into ``path`` (PNG; its folder is created) and return ``path``."""
    fig = prediction_figure(samples, classes, score_thresh, title, long_side)  # selects the Agg backend
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def prediction_figure(samples, classes: list[str], score_thresh: float, title: str = "", long_side: int = 512):
    """One figure with every sample: the image at its original aspect ratio (``orig_size`` of the target;
    the model saw it squashed to a square), scaled so its longer side is ``long_side`` px, ground-truth
    boxes (green, solid, class name) and predictions (red, dashed, class and score; those with score >=
    ``score_thresh``, else the single best one), and a legend.

    Args:
        samples: list of ``(image float (3, S, S) in [0, 1], prediction dict(boxes (K, 4) xyxy in the
            S x S frame, labels (K,), scores (K,)), target dict(boxes (L, 4), labels (L,), orig_size (2,)))``.
        classes: class names; label ``i`` is ``classes[i - 1]`` (0 is the background).
    Returns:
        the matplotlib figure (Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    names = ["background", *classes]

    def name(label) -> str:
        i = int(label)
        return names[i] if 0 <= i < len(names) else str(i)

    cols = min(len(samples), 2)
    rows = math.ceil(len(samples) / cols)
    # panel height from the tallest image's aspect ratio (H / W), plus room for its title
    aspect = max((int(t["orig_size"][0]) / int(t["orig_size"][1])) if "orig_size" in t else 1.0 for _, _, t in samples)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, (6.4 * aspect + 0.5) * rows + 0.8), squeeze=False,
                             layout="constrained")
    for i, (ax, (img, pred, tgt)) in enumerate(zip(axes.flat, samples)):
        sh, sw = img.shape[-2:]
        oh, ow = (int(v) for v in tgt["orig_size"]) if "orig_size" in tgt else (sh, sw)
        scale = long_side / max(oh, ow)
        dh, dw = max(1, round(oh * scale)), max(1, round(ow * scale))
        shown = torch.nn.functional.interpolate(img[None].float(), size=(dh, dw), mode="bilinear",
                                                align_corners=False, antialias=True)[0].clamp(0, 1)
        sx, sy = dw / sw, dh / sh
        ax.imshow(shown.permute(1, 2, 0).numpy())
        for box, label in zip(tgt["boxes"].tolist(), tgt["labels"].tolist()):
            x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=2.5))
            ax.text(x1, y2, name(label), color="black", fontsize=9, va="top", ha="left",
                    bbox={"facecolor": "lime", "alpha": 0.85, "pad": 1.5, "edgecolor": "none"}, clip_on=True)
        scores = pred["scores"]
        keep = scores >= score_thresh
        below = not bool(keep.any()) and len(scores) > 0
        if below:  # nothing confident: show the best guess, marked as such
            keep = torch.zeros_like(keep)
            keep[int(scores.argmax())] = True
        for box, label, score in zip(pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(),
                                     scores[keep].tolist()):
            x1, y1, x2, y2 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=2,
                                   linestyle="--"))
            ax.text(x1, y1, f"{name(label)} {score:.2f}", color="white", fontsize=9, va="bottom", ha="left",
                    bbox={"facecolor": "red", "alpha": 0.85, "pad": 1.5, "edgecolor": "none"}, clip_on=True)
        shown_n = int(keep.sum())
        note = " (best, below threshold)" if below else ""
        ax.set_title(f"val image {i}: {ow}x{oh} px, {len(tgt['boxes'])} ground truth, {shown_n} of {len(scores)} "
                     f"predictions shown{note}", fontsize=9)
        ax.set_axis_off()
    for ax in list(axes.flat)[len(samples):]:
        ax.set_axis_off()
    handles = [Line2D([], [], color="lime", linewidth=2.5, label="ground truth: class"),
               Line2D([], [], color="red", linewidth=2, linestyle="--",
                      label=f"prediction: class score (score >= {score_thresh:g}, else the best one)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
