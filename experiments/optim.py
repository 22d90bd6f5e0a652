"""Optimisation shared by the task modules (classification, detection, super-resolution): the
optimiser's parameter groups (no weight decay on 1-d parameters), the per-step warm-up + cosine
learning-rate schedule, and a ``configure_optimizers`` built on them (:class:`WarmupCosineMixin`)."""
from __future__ import annotations

import math

import torch


def sgd_with_warmup_cosine(net: torch.nn.Module, optimizer_factory, scheduler: str, warmup_fraction: float,
                           total_steps: int):
    """Lightning ``configure_optimizers`` result: ``optimizer_factory(params=...)`` with no weight decay
    on 1-d parameters (biases, norms), and for ``scheduler="cosine"`` a per-step schedule, linear
    warm-up over ``warmup_fraction`` of ``total_steps`` then cosine decay to 0."""
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = optimizer_factory(params=[{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    if scheduler == "none":
        return optimizer
    total = max(1, int(total_steps))
    warmup = int(warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}


class WarmupCosineMixin:
    """``configure_optimizers`` for a LightningModule with ``net``, ``optimizer_factory`` and the hparams
    ``scheduler`` and ``warmup_fraction``: :func:`sgd_with_warmup_cosine` over the trainer's estimated
    optimizer steps."""

    def configure_optimizers(self):
        return sgd_with_warmup_cosine(self.net, self.optimizer_factory, self.hparams.scheduler,
                                      self.hparams.warmup_fraction, self.trainer.estimated_stepping_batches)
