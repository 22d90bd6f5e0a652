"""The validation history a task module keeps, carried over a resume.

Mixed into a LightningModule (``class M(ValidationHistoryMixin, L.LightningModule)``) that appends
one dict per validation epoch to ``self.history`` and names its checkpoint entry in
``history_key``: the list is saved in every checkpoint and restored from it, so a resumed run
continues the history instead of starting a new one (checkpoints without the entry give []).
"""
from __future__ import annotations

from typing import Any


class ValidationHistoryMixin:
    history_key: str  # the checkpoint entry, e.g. "detection_history"
    history: list[dict[str, float]]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.history_key] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get(self.history_key, []))
