"""LightningModule: image classification with accuracy, loss, throughput and step-time logging.

Logged metrics
--------------
``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``lr``,
``train/step_time_ms`` (forward + backward + optimizer step of one batch, wall clock),
``train/throughput`` (training images per second, same window),
``model/params`` and ``model/flops`` (forward FLOPs of one 3x32x32 sample; logged at fit start).
"""
from __future__ import annotations

import math
import time
from statistics import median
from typing import Any, Callable

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from experiments.flops import count_flops, count_params


class ClassifierModule(L.LightningModule):
    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: str = "cosine", warmup_fraction: float = 0.05, label_smoothing: float = 0.0,
                 sync_timing: bool = True, input_shape: tuple[int, int, int] = (3, 32, 32)):
        super().__init__()
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer"])  # plain values only: checkpoints load with weights_only=True
        self.optimizer_factory = optimizer
        self.net = net
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = net.fc.out_features if hasattr(net, "fc") else getattr(net, "num_classes", None)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.model_stats: dict[str, Any] = {}
        self.step_times: list[float] = []  # seconds per training step (whole run, this process)
        self.step_images: list[int] = []
        self._t0 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- start of fit: model size ---------------------------------------------------------------

    def on_fit_start(self) -> None:
        params = count_params(self.net)
        flops = count_flops(self.net, self.hparams.input_shape)
        self.model_stats = {"params": params, "flops": flops}
        rank_zero_info(f"model: {params:,} parameters, {flops / 1e6:.2f} MFLOPs (forward, one "
                       f"{'x'.join(map(str, self.hparams.input_shape))} sample)")
        for logger in self.loggers:
            logger.log_metrics({"model/params": float(params), "model/flops": float(flops)}, step=0)
            logger.log_hyperparams({"model/params": params, "model/flops": flops})

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    # -- training ------------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.hparams.sync_timing and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._t0 is None:
            return
        self._sync()
        dt = time.perf_counter() - self._t0
        n = int(batch[1].shape[0])
        self.step_times.append(dt)
        self.step_images.append(n)
        self.log("train/step_time_ms", dt * 1e3, on_step=True, on_epoch=True)
        self.log("train/throughput", n / dt, on_step=True, on_epoch=True, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)

    def timing_summary(self, skip: int = 3) -> dict[str, float | None]:
        """Median step time and throughput over this process's steps, skipping the first ``skip``
        (warm-up, kernel compilation) when there are more than that."""
        times = self.step_times[skip:] if len(self.step_times) > skip else self.step_times
        images = self.step_images[skip:] if len(self.step_images) > skip else self.step_images
        if not times:
            return {"step_time_ms": None, "throughput": None, "steps_timed": 0}
        return {"step_time_ms": median(times) * 1e3,
                "throughput": median(n / t for n, t in zip(images, times)),
                "steps_timed": len(times)}

    # -- validation ----------------------------------------------------------------------------

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss(self.criterion(logits, y))
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("test/loss", self.criterion(logits, y), on_epoch=True)
        self.log("test/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self._param_groups())
        if self.hparams.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams.warmup_fraction * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _param_groups(self):
        """No weight decay on biases and norm parameters (all 1-d tensors)."""
        decay = [p for p in self.net.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.net.parameters() if p.requires_grad and p.ndim <= 1]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
