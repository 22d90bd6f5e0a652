"""Run plumbing: W&B online/offline detection, CPU threads, instantiating lists, summary.json."""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import platform
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar, Timer
from lightning.pytorch.callbacks import ModelSummary as _LightningModelSummary
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ wandb


def wandb_api_key_present() -> bool:
    """A W&B login exists: WANDB_API_KEY or a ~/.netrc entry for the W&B host. No network used."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def choose_wandb_mode(timeout: float = 3.0) -> str:
    """``online``, ``offline`` or ``disabled`` for this run; sets WANDB_MODE when it picks offline.

    An explicit WANDB_MODE is respected. Without a login the run goes offline without touching the
    network; with a login, a TCP probe of the W&B host (``timeout`` seconds, in a thread) decides.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return "offline" if mode == "dryrun" else mode
    reason = None
    if not wandb_api_key_present():
        reason = "no W&B login found (WANDB_API_KEY unset, no ~/.netrc entry)"
    else:
        from experiments.classification.data.cifar import host_reachable

        url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        if not host_reachable(url, timeout):
            reason = f"{urlparse(url).hostname} is unreachable"
    if reason is None:
        return "online"
    os.environ["WANDB_MODE"] = "offline"
    log.warning("W&B runs offline: %s. Logs stay under the run folder; upload them later with "
                "`wandb sync <run dir>/wandb/offline-run-*`.", reason)
    return "offline"


# ---------------------------------------------------------------------------------------- threads


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(window: float = 0.3) -> float | None:
    """Cores busy on the machine right now: the non-idle share of all CPU time in ``/proc/stat``
    over ``window`` seconds, times the number of CPUs. ``None`` where ``/proc/stat`` is missing.

    Sampled while this process waits, so a finished job of the same multirun process does not
    count (the 1-minute load average would still hold it for a minute).
    """
    def sample():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
        return sum(fields[:8]), idle                                # guest time is inside user time

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    if total <= 0:
        return None
    return (1.0 - (idle1 - idle0) / total) * (os.cpu_count() or 1)


# torch's own choice, before any run of this process (a multirun's earlier job) changed it
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def choose_cpu_threads(setting) -> int | None:
    """Threads for CPU ops: an int, ``null`` (torch's default) or ``auto``; sets and returns it.

    ``auto`` is the cores this process may run on (:func:`usable_cores`), at most torch's default.
    It does not look at the machine's load: the thread count changes the order of floating-point
    reductions, so a load-dependent choice would make a seed's results depend on what else ran.
    conf/train.yaml fixes 2 threads for the same reason.
    """
    if setting is None:
        return None
    if isinstance(setting, str) and setting.lower() == "auto":
        threads = max(1, min(_TORCH_DEFAULT_THREADS, usable_cores()))
    else:
        threads = int(setting)
        if threads < 1:
            raise ValueError(f"cpu_threads must be a positive int, null or auto, got {setting!r}")
    torch.set_num_threads(threads)
    return threads


def machine_load() -> dict[str, float | None]:
    """What else ran while this run started, for the record (it changes wall times, not results):
    cores busy right now (:func:`busy_cores`) and the 1-minute load average, against the core count."""
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    return {"busy_cores": busy_cores(0.2), "load_avg_1min": load1, "cpu_count": os.cpu_count()}


def single_console_logging() -> None:
    """Print each Lightning log line once. Importing ``lightning`` gives its ``lightning`` logger a
    console handler of its own ("INFO: ..." on stderr), while its records also reach the root logger's
    handlers (Hydra's console and <task>.log); with a configured root logger that handler goes."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


# ---------------------------------------------------------------------------------- instantiation


def instantiate_group(cfg: DictConfig | None, what: str) -> list:
    """Instantiate every entry with a ``_target_`` in a group such as ``callbacks`` or ``logger``."""
    from hydra.utils import instantiate

    objects = []
    if not cfg:
        return objects
    for name, entry in cfg.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            log.info("instantiating %s %s <%s>", what, name, entry._target_)
            objects.append(instantiate(entry))
    return objects


# -------------------------------------------------------------------------------------- callbacks


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


def epochs_completed(trainer) -> int:
    """Epochs whose every training batch ran (``trainer.current_epoch`` also counts an epoch that
    max_steps or the time cap cut short)."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) and not (isinstance(batches, float) and math.isfinite(batches)):
        return trainer.current_epoch
    steps_per_epoch = max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))
    return min(trainer.current_epoch, trainer.global_step // steps_per_epoch)


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


# ---------------------------------------------------------------------------------------- summary


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


def to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def device_description(trainer) -> dict:
    device = trainer.strategy.root_device
    info = {"type": device.type, "name": "cpu", "accelerator": type(trainer.accelerator).__name__,
            "world_size": trainer.world_size, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_summary(path: str | os.PathLike, summary: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def config_to_dict(cfg: DictConfig) -> dict:
    """The resolved config, without Hydra's own node; interpolations that cannot resolve stay as text."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run
        return OmegaConf.to_container(cfg, resolve=False)
