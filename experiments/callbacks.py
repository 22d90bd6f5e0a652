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

The other Lightning callbacks of a run: :class:`ExceptionRecorder` (``interrupted.ckpt`` on an
exception or Ctrl-C), :class:`BudgetTimer` (``trainer.max_time`` as a per-invocation safety net),
:class:`ValidateAtMaxSteps`, and the console's :class:`ModelSummary` and :class:`ProgressBar`.
"""
from __future__ import annotations

import logging
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar, Timer
from lightning.pytorch.callbacks import ModelSummary as _LightningModelSummary
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


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


class BudgetTimer(Timer):
    """``trainer.max_time`` as a safety net, per invocation: runs are budgeted in steps and epochs,
    and this cap only stops one that runs far longer than planned (a loaded or slow machine). When it
    stops fitting early, ``capped`` is set: the run's status is then ``time-capped``, not ``finished``
    (Lightning validates once more before it stops, so the run still has a validation metric).

    A resumed run gets the whole cap again (Lightning's own Timer restores the time already spent from
    the checkpoint, so a run resumed after hitting the cap stopped at once and trained nothing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.capped = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        spent = state_dict.get("time_elapsed", {}).get("train", 0)
        log.info("max_time is a budget per invocation: the %.0f s trained before the checkpoint do not count", spent)

    def _check_time_remaining(self, trainer) -> None:
        stopping = trainer.should_stop
        super()._check_time_remaining(trainer)
        if trainer.should_stop and not stopping and not _budget_spent(trainer):
            self.capped = True
            log.warning("time cap trainer.max_time=%s reached at epoch %d, step %d, before the step/epoch budget: "
                        "the run is marked time-capped", self._duration and timedelta(seconds=int(self._duration)),
                        trainer.current_epoch, trainer.global_step)


def _budget_spent(trainer) -> bool:
    """Fitting has done all the steps its max_steps / max_epochs plan."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    try:
        planned = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - e.g. an iterable data set without a length
        return False
    return math.isfinite(planned) and trainer.global_step >= planned


class ValidateAtMaxSteps(Callback):
    """Ends fitting at ``trainer.max_steps`` with a validation. Lightning stops at max_steps without
    validating when the step falls inside an epoch (a quick sweep's ``trainer.max_steps=20`` then
    leaves no val/acc); asking it to stop instead makes it validate first, as early stopping does."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class ModelSummary(_LightningModelSummary):
    """Lightning's model summary without its FLOPs column and "Total Flops" line: Lightning counts FLOPs only for a
    module with ``example_input_array`` and prints 0 otherwise; the module logs its own count
    (``model/flops``, experiments/flops.py) on the line after the table."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        if not total_flops:  # and its per-layer FLOPs column, all 0 for the same reason
            summary_data = [col for col in summary_data if col[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data)
        lines = table.splitlines()
        if not total_flops and lines and lines[-1].endswith("Total Flops"):
            lines = lines[:-1]
        log.info("\n" + "\n".join(lines))


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar without ``v_num``: it shows the last 4 characters of a string logger
    version, here the run name's ("etic" of "...-synthetic"). The run name is in the log above."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class ExceptionRecorder(Callback):
    """On an exception or Ctrl-C during fitting: keeps the exception (Lightning turns Ctrl-C into
    ``SystemExit(1)``) and saves ``<dirpath>/interrupted.ckpt`` to resume from (unless no step ran in
    this invocation)."""

    def __init__(self, dirpath: str | os.PathLike):
        self.dirpath = Path(dirpath)
        self.exception: BaseException | None = None
        self.checkpoint: str | None = None
        self.steps_trained = 0  # training batches finished in this invocation

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps_trained += 1

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.exception = exception
        if self.steps_trained == 0:  # nothing new to keep
            return
        path = self.dirpath / "interrupted.ckpt"
        # Lightning adds 1 to this logging step counter when it resumes mid-epoch (right for its own
        # checkpoints, saved after a batch's counters moved on); saved mid-batch, it is one ahead
        loop = trainer.fit_loop.epoch_loop
        loop._batches_that_stepped -= 1
        try:
            trainer.save_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - the original error matters more
            log.warning("could not save %s: %s", path, err)
            return
        finally:
            loop._batches_that_stepped += 1
        self.checkpoint = str(path)
        log.warning("%s at epoch %d, step %d: saved %s; resume with ckpt_path=%s", type(exception).__name__,
                    trainer.current_epoch, trainer.global_step, path, path)
