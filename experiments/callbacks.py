"""Checkpointing: ``last.ckpt`` holds all that resuming needs and is written after every epoch
(classification and detection); detection's best checkpoint holds the weights only.

A detector's full checkpoint is about twice its weights (SGD momentum doubles it): ~120 MB for the
ResNet-18 Faster R-CNN, so top-1 plus last was ~240 MB per run. Only ``last.ckpt`` (and the
``interrupted.ckpt`` an exception leaves) is resumed from, so the top-k files keep the model weights
(with epoch, step and hyper-parameters) without optimizer and scheduler states: about half the size.

Lightning 2.6's ModelCheckpoint writes ``last.ckpt`` only at a step where it also wrote a top-k file
(or with ``save_last="link"``, which links to the newest top-k file, possibly an older epoch), so an
epoch that does not improve the monitored metric leaves ``last.ckpt`` behind:
:class:`LastEveryEpochCheckpoint` writes it at every checkpointing point.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class LastEveryEpochCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose ``last.ckpt`` is rewritten at every
    checkpointing point (end of validation, or of the training epoch), whether or not the monitored
    metric improved; Lightning 2.6 skips it when no top-k file was saved at that step. Arguments are
    ModelCheckpoint's."""

    _saving_last = False
    _last_step_with_last = -1

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        self._saving_last = True
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._saving_last = False
        self._last_step_with_last = trainer.global_step

    def _save_stale_last(self, trainer, at_train_epoch_end: bool) -> None:
        """Write ``last.ckpt`` where Lightning skipped it (no top-k file at this step)."""
        if (not self.save_last or self.save_last == "link" or bool(trainer.fast_dev_run)
                or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
                or at_train_epoch_end != self._should_save_on_train_epoch_end(trainer)
                or self._last_step_with_last == trainer.global_step):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_stale_last(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_stale_last(trainer, at_train_epoch_end=False)


class BestWeightsCheckpoint(LastEveryEpochCheckpoint):
    """:class:`LastEveryEpochCheckpoint` whose top-k files are weights-only (no optimizer, scheduler or
    callback states) while ``last.ckpt`` stays a full, resumable checkpoint. ``save_weights_only=True``
    makes ``last.ckpt`` weights-only too."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # ModelCheckpoint reads save_weights_only here only: switch it for the top-k files
        full = self.save_weights_only
        self.save_weights_only = full or not self._saving_last
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self.save_weights_only = full
