"""Run bookkeeping: W&B online/offline detection, CPU threads and machine load, console logging,
instantiating config lists, and what summary.json records (epochs completed, metrics as floats, the
device, the resolved config). The Lightning callbacks are in experiments/callbacks.py, the optimiser and
LR schedule in experiments/optim.py."""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import platform
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
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


# ---------------------------------------------------------------------------------------- summary


def epochs_completed(trainer) -> int:
    """Epochs whose every training batch ran (``trainer.current_epoch`` also counts an epoch that
    max_steps or the time cap cut short)."""
    batches = trainer.num_training_batches
    if not isinstance(batches, int) and not (isinstance(batches, float) and math.isfinite(batches)):
        return trainer.current_epoch
    steps_per_epoch = max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))
    return min(trainer.current_epoch, trainer.global_step // steps_per_epoch)


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
