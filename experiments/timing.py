"""Training-step timing shared by the Lightning modules: step time and images/s per step.

Mixed into a LightningModule (``class M(StepTimingMixin, L.LightningModule)``) that defines
``hparams.sync_timing``. It logs ``train/step_time_ms`` (forward + backward + optimizer step),
``train/throughput`` (images/s) and ``lr`` per step, and ``timing_summary()`` gives their medians.
"""
from __future__ import annotations

import time
from statistics import median


class StepTimingMixin:
    step_times: list[float]  # seconds per training step (whole run, this process)
    step_images: list[int]

    def _reset_timing(self) -> None:
        self.step_times, self.step_images, self._t0 = [], [], None

    def _sync(self) -> None:
        # on GPU the step is asynchronous: synchronise so the measured time is the step's
        if self.hparams.sync_timing and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if getattr(self, "_t0", None) is None:
            return
        self._sync()
        dt = time.perf_counter() - self._t0
        n = len(batch[0])  # (images, labels) or (list of images, targets)
        self.step_times.append(dt)
        self.step_images.append(n)
        self.log("train/step_time_ms", dt * 1e3, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/throughput", n / dt, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)

    def timing_summary(self, skip: int = 3) -> dict[str, float | None]:
        """Median step time and throughput over this process's steps, skipping the first ``skip``
        (warm-up, kernel compilation) when there are more than that."""
        times = self.step_times[skip:] if len(self.step_times) > skip else self.step_times
        images = self.step_images[skip:] if len(self.step_images) > skip else self.step_images
        if not times:
            return {"step_time_ms": None, "throughput": None, "steps_timed": 0}
        return {"step_time_ms": median(times) * 1e3, "throughput": median(n / t for n, t in zip(images, times)),
                "steps_timed": len(times)}
