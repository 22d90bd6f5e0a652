"""LightningModule: image classification with accuracy, loss, throughput and step-time logging.

Logged metrics
--------------
``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``val/acc_best``, ``lr``,
``train/step_time_ms`` (forward + backward + optimizer step of one batch, wall clock),
``train/throughput`` (training images per second, same window),
``model/params`` and ``model/flops`` (forward FLOPs of one 3x32x32 sample; logged at fit start).
"""
from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from experiments import optim
from experiments.flops import count_flops, count_params
from experiments.timing import StepTimingMixin


class ClassifierModule(StepTimingMixin, L.LightningModule):
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
        self._restored_best: float | None = None  # val/acc_best of the run a checkpoint continues
        self._schedule_steps: int | None = None     # optimizer steps the LR schedule spans
        self.model_stats: dict[str, Any] = {}
        self._reset_timing()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- start of fit: model size ---------------------------------------------------------------

    def on_fit_start(self) -> None:
        params = count_params(self.net)
        flops = count_flops(self.net, self.hparams.input_shape)
        self.model_stats = {"params": params, "flops": flops}
        rank_zero_info(f"model: {params:,} parameters, {flops / 1e6:.2f} MFLOPs (forward, one "
                       f"{'x'.join(map(str, self.hparams.input_shape))} sample)")
        if self.trainer.ckpt_path:  # resumed: the first invocation logged these
            return
        for logger in self.loggers:
            logger.log_metrics({"model/params": float(params), "model/flops": float(flops)}, step=0)
            logger.log_hyperparams({"model/params": params, "model/flops": flops})

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()
        if self._restored_best is not None:  # resumed: the best so far includes the earlier epochs
            self.val_acc_best.update(torch.tensor(self._restored_best))

    # -- checkpoints: torchmetrics states are not in the state_dict, so the best is kept here -----

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best = self.val_acc_best.compute().item() if self.val_acc_best.update_count else self._restored_best
        if best is not None:
            checkpoint["val_acc_best"] = float(best)
        checkpoint["lr_schedule_steps"] = self._schedule_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_best = checkpoint.get("val_acc_best")
        self._restored_schedule_steps = checkpoint.get("lr_schedule_steps")

    # -- training ------------------------------------------------------------------------------

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_loss(loss.detach())
        self.train_acc(logits.detach(), y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

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
        self._schedule_steps = int(self.trainer.estimated_stepping_batches)
        restored = getattr(self, "_restored_schedule_steps", None)
        if restored is not None and restored != self._schedule_steps and self.hparams.scheduler != "none":
            rank_zero_warn(f"resuming with a learning-rate schedule over {self._schedule_steps} steps; the "
                           f"checkpoint's run planned {restored} (max_epochs or limit_train_batches changed), so the "
                           "learning rate jumps to the new schedule")
        return optim.sgd_with_warmup_cosine(self.net, self.optimizer_factory, self.hparams.scheduler,
                                            self.hparams.warmup_fraction, self._schedule_steps)
