"""The training task: ``train(cfg) -> dict`` of final metrics (Hydra-free; train.py wraps it)."""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import utils
from experiments.callbacks import BudgetTimer, ExceptionRecorder, ValidateAtMaxSteps

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    import lightning
    import torchvision

    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "lightning": lightning.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def _backend_setting(cfg: DictConfig) -> str:
    """``cfg.backend``, checked. Its default in conf/train.yaml is ``${oc.env:CONVLAB_BACKEND,auto}``;
    a bad value that came from the environment variable is reported under that name."""
    from layers.backend import ENV_VAR, check_backend

    name = cfg.get("backend", "auto")
    from_env = OmegaConf.is_interpolation(cfg, "backend") and ENV_VAR in os.environ
    return check_backend(name, ENV_VAR if from_env else "backend")


def _label_run(cfg: DictConfig, data_info: dict) -> None:
    """Append the data set actually used to the run name and tags (so 'synthetic' is always visible);
    add the conv variant and ``seed=<n>`` to the tags."""
    with open_dict(cfg):
        name = data_info["name"]
        upsample_label = _upsample_label(cfg)
        cfg.run_name = f"{cfg.run_name}-{name}"
        tags = list(cfg.get("tags") or [])
        # every run is tagged with its variant and seed, so one sweep's W&B group splits by either
        variant = (cfg.get("conv") or {}).get("variant")
        extra = [variant, f"seed={cfg.get('seed')}", name] + (["fallback"] if data_info.get("fallback") else [])
        if upsample_label:
            extra.insert(0, upsample_label)
        cfg.tags = tags + [t for t in extra if t and t not in tags]


def _upsample_label(cfg: DictConfig) -> str | None:
    """experiment=upsampling (a config with an ``upsample`` group): the study's name of the upsampling
    layer (``subpixel_icnr`` for ``upsample=subpixel upsample.icnr=true``), also put in the run name
    in place of the variant; None for the other experiments."""
    upsample = cfg.get("upsample")
    if upsample is None:
        return None
    from experiments.superres.model import upsample_label

    label = upsample_label(upsample)
    variant = str(upsample.get("variant"))
    if label != variant and label not in str(cfg.run_name):
        cfg.run_name = str(cfg.run_name).replace(variant, label, 1)
    return label


def _label_run_dir(cfg: DictConfig, resuming: bool) -> None:
    """Append ``_synthetic`` to the run folder Hydra made (``..._<variant>`` or a sweep job's
    ``<n>_<variant>_s<seed>``) when the data is synthetic, so that a listing of runs shows it.
    Folders given explicitly (``paths.output_dir``, ``hydra.run.dir``, ``hydra.sweep.subdir``) and
    resumed runs keep their names."""
    from hydra.core.hydra_config import HydraConfig

    if resuming or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if any(o.split("=")[0].lstrip("+~") in ("hydra.run.dir", "hydra.sweep.subdir") for o in hydra_cfg.overrides.hydra):
        return
    old = Path(hydra_cfg.runtime.output_dir)
    if Path(cfg.paths.output_dir).resolve() != old.resolve() or "synthetic" in old.name:
        return
    new = old.with_name(old.name + "_synthetic")
    if new.exists():
        return
    old.rename(new)  # the open log file moves with it
    with open_dict(cfg):
        cfg.paths.output_dir = str(new)
    log.info("run folder: %s (synthetic data)", new)


def _instantiate_model(cfg: DictConfig) -> L.LightningModule:
    """``instantiate(cfg.model)`` without ``model.name``, a label for run names only."""
    with open_dict(cfg):
        name = cfg.model.pop("name", None)
        try:
            return instantiate(cfg.model)
        finally:
            if name is not None:
                cfg.model.name = name


def _setup_loggers(cfg: DictConfig, wandb_id: str | None) -> tuple[list, str | None]:
    """The loggers of ``cfg.logger``. W&B gets a run id chosen here (``wandb_id``, the earlier run's
    when resuming, with ``resume="allow"``), so summary.json can name it; no W&B run is created
    until something is logged."""
    wandb_mode = None
    logger_cfg = cfg.get("logger") or {}
    if "wandb" in logger_cfg:
        wandb_mode = utils.choose_wandb_mode()
        with open_dict(cfg):
            cfg.logger.wandb.offline = wandb_mode == "offline"
            if not cfg.logger.wandb.get("group"):
                cfg.logger.wandb.group = wandb_group(cfg)
            if wandb_mode != "disabled":
                cfg.logger.wandb.id = wandb_id or _new_wandb_id()
                if wandb_id:
                    cfg.logger.wandb.resume = "allow"
        if wandb_mode == "disabled":
            log.info("WANDB_MODE=disabled: no W&B logging")
    return utils.instantiate_group(logger_cfg, "logger"), wandb_mode


def wandb_group(cfg: DictConfig) -> str:
    """The W&B group of a run whose ``logger.wandb.group`` is null: ``<task_name>-<sweep folder>`` for
    every job of one multirun (``multirun/<task>/<date>_<time>``), so a sweep is one group; else
    ``<task_name>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    task = cfg.get("task_name") or "train"
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return f"{task}-{Path(hydra_cfg.sweep.dir).name}"
    return task


def _new_wandb_id() -> str:
    """A W&B run id (8 characters of [a-z0-9], like W&B's own)."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _resume_setup(cfg: DictConfig) -> tuple[str | None, dict]:
    """Check ``cfg.ckpt_path``; when resuming, point the run at the folder that holds the checkpoint
    and return the summary.json the earlier invocation wrote there (empty when none)."""
    from experiments.resolvers import checkpoint_run_dir

    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        return None, {}
    ckpt_path = str(Path(ckpt_path).expanduser())
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    run_dir = checkpoint_run_dir(ckpt_path)
    if run_dir is not None and Path(cfg.paths.output_dir).resolve() != run_dir:
        # outside Hydra (or with an explicit paths.output_dir): the run folder still follows the checkpoint
        log.warning("resuming: writing into the checkpoint's run folder %s, not %s", run_dir, cfg.paths.output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    log.info("resuming from %s in %s", ckpt_path, cfg.paths.output_dir)
    previous = Path(cfg.paths.output_dir) / "summary.json"
    try:
        return ckpt_path, json.loads(previous.read_text())
    except (OSError, ValueError):
        return ckpt_path, {}


def _keep_csv_history(loggers: list, ckpt_path: str) -> None:
    """Resuming: keep each CSV logger's metrics.csv up to the checkpoint's step. Lightning's CSV writer
    deletes an existing metrics.csv when it starts; the rows logged before the checkpoint are written
    back, those logged after it are dropped (the resumed run logs those steps again)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    step = torch.load(ckpt_path, map_location="cpu", weights_only=False).get("global_step")
    for logger in loggers:
        if not isinstance(logger, CSVLogger) or step is None:
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = list(reader.fieldnames or []), list(reader)
        keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        writer = logger.experiment  # the writer removes metrics.csv here
        with open(path, "w", newline="") as fh:
            out = csv.DictWriter(fh, fieldnames=fields)
            out.writeheader()
            out.writerows(keep)
        writer.metrics_keys = sorted(fields)
        log.info("%s: kept the %d rows logged before step %d%s", path, len(keep), step,
                 f", dropped {len(rows) - len(keep)} logged after it" if len(keep) < len(rows) else "")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate ``cfg.model`` on ``cfg.data``; write ``summary.json``; return the metrics.

    With ``ckpt_path`` the run continues in the checkpoint's folder, with the same W&B run, its
    epoch / step counters, learning-rate schedule, best ``val/acc`` and place in the epoch's batches;
    ``trainer.max_time`` then caps this invocation only. The step / epoch settings are the budget;
    ``trainer.max_time`` is a safety net, and a run it stops early has status ``time-capped``.
    Fitting that stops at ``trainer.max_steps`` ends with a validation. On an exception or Ctrl-C the run saves
    ``checkpoints/interrupted.ckpt``, marks summary.json and the W&B run failed, and re-raises.
    """
    from layers import get_backend, resolve, set_backend

    if not cfg.get("train", True):
        raise ValueError("train=false: train.py always trains. To evaluate a checkpoint without training, run "
                         "`python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt` with the run's conv= / model= "
                         "settings (conf/eval.yaml)")
    started = time.time()
    utils.single_console_logging()
    set_backend(_backend_setting(cfg))
    setup_threads(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path, previous = _resume_setup(cfg)
    load = utils.machine_load()
    log.info("machine load at start: %s busy cores of %s (1-min load average %s); results do not depend on it",
             _fmt(load["busy_cores"]), load["cpu_count"], _fmt(load["load_avg_1min"]))

    output_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {"status": "started", "task_name": cfg.get("task_name"), "output_dir": str(output_dir)}

    log.info("data <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    data_info = datamodule.load()
    _label_run(cfg, data_info)
    if data_info["synthetic"]:
        _label_run_dir(cfg, resuming=bool(ckpt_path))
        output_dir = Path(cfg.paths.output_dir)
        summary["output_dir"] = str(output_dir)
    summary.update(run_name=cfg.run_name, dataset=dict(data_info))
    log.info("run %s on %s data (%s)", cfg.run_name, data_info["name"], data_info["source"])

    log.info("model <%s> with conv variant %r", cfg.model._target_, cfg.conv.variant)
    model: L.LightningModule = _instantiate_model(cfg)
    callbacks = utils.instantiate_group(cfg.get("callbacks"), "callback")
    recorder = ExceptionRecorder(output_dir / "checkpoints")
    callbacks.append(recorder)
    timer = None
    if cfg.trainer.get("max_time"):
        timer = BudgetTimer(duration=cfg.trainer.max_time)  # replaces Lightning's Timer
        callbacks.append(timer)
    callbacks.append(ValidateAtMaxSteps())
    loggers, wandb_mode = _setup_loggers(cfg, (previous.get("wandb") or {}).get("id") if ckpt_path else None)
    if ckpt_path:
        _keep_csv_history(loggers, ckpt_path)
        # the data module resumes mid-epoch itself (experiments/classification/data/cifar.py), which Lightning cannot see
        warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
    log.info("trainer <%s>", cfg.trainer._target_)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    wandb_id = cfg.logger.wandb.get("id") if "wandb" in (cfg.get("logger") or {}) else None

    config_dict = utils.config_to_dict(cfg)
    failed = False
    try:
        for logger in trainer.loggers:
            # flat: W&B shows conv.variant, model.net.width, ... (not config.conv.variant)
            logger.log_hyperparams({**config_dict, "dataset": data_info["name"],
                                    "synthetic_data": data_info["synthetic"]})
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: utils.to_float(v) for k, v in trainer.callback_metrics.items()}

        ckpt_cb = trainer.checkpoint_callback
        best_path = getattr(ckpt_cb, "best_model_path", "") or None
        if cfg.get("validate_best") and best_path:
            log.info("validating best checkpoint %s", best_path)
            results = trainer.validate(model=model, datamodule=datamodule, ckpt_path=best_path, verbose=False)
            metrics.update({f"best_ckpt/{k}": utils.to_float(v) for k, v in (results[0] if results else {}).items()})
        summary["status"] = "time-capped" if timer is not None and timer.capped else "finished"
        if summary["status"] == "time-capped":
            summary["time_cap"] = {"max_time": str(cfg.trainer.max_time),
                                   "planned_steps": utils.to_float(trainer.estimated_stepping_batches)}
    except BaseException as err:
        failed = True
        # Lightning answers Ctrl-C with SystemExit(1); the recorder holds what really happened
        cause = recorder.exception or err
        interrupted = isinstance(cause, KeyboardInterrupt)
        summary.update(status="interrupted" if interrupted else "failed",
                       error=f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__)
        summary["interrupted_checkpoint"] = recorder.checkpoint
        metrics = {k: utils.to_float(v) for k, v in trainer.callback_metrics.items()}
        raise
    finally:
        ckpt_cb = trainer.checkpoint_callback
        device = trainer.strategy.root_device
        summary.update({
            "metrics": metrics,
            "optimized_metric": cfg.get("optimized_metric"),
            "best": {"score": utils.to_float(getattr(ckpt_cb, "best_model_score", None)),
                     "checkpoint": getattr(ckpt_cb, "best_model_path", None) or None,
                     "last_checkpoint": getattr(ckpt_cb, "last_model_path", None) or None},
            "epochs_completed": utils.epochs_completed(trainer),
            "global_step": trainer.global_step,
            "resumed_from": ckpt_path,
            "resumes": previous.get("resumes", []) + [ckpt_path] if ckpt_path else [],
            "conv": OmegaConf.to_container(cfg.conv, resolve=True),
            "swap_stages": list(getattr(getattr(model, "net", None), "swap_stages", [])),
            "model": {"target": cfg.model.net.get("_target_"), **model.model_stats},
            "timing": _timing(model, trainer, started),
            "backend": {"setting": get_backend(), "resolved": resolve(device)},
            "device": {**utils.device_description(trainer), "load_at_start": load},
            "wandb": {"mode": wandb_mode, "id": wandb_id},
            "versions": _versions(),
            "seed": cfg.get("seed"),
            "config": config_dict,
        })
        # Task-specific results (analysis callbacks, detection metrics, ...) put a dict in
        # ``model.summary_extras``; its keys go into summary.json beside the common ones.
        summary.update(getattr(model, "summary_extras", None) or {})
        if trainer.is_global_zero:
            path = utils.write_summary(output_dir / "summary.json", summary)
            log.info("summary: %s", path)
        _finish_wandb(trainer, summary, exit_code=1 if failed else 0,
                      discard_offline=failed and recorder.steps_trained == 0)

    capped = (" (TIME-CAPPED: stopped by trainer.max_time before its step budget)"
              if summary["status"] == "time-capped" else "")
    log.info("done in %.1f s%s on %s data: %s", summary["timing"]["wall_time_s"], capped,
             "SYNTHETIC" if data_info["synthetic"] else data_info["name"],
             {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return metrics


def setup_threads(cfg: DictConfig) -> int | None:
    """``cfg.cpu_threads`` applied (see :func:`experiments.utils.choose_cpu_threads`)."""
    threads = utils.choose_cpu_threads(cfg.get("cpu_threads"))
    if threads is not None:
        log.info("torch CPU threads: %d (cpu_threads=%s)", threads, cfg.get("cpu_threads"))
    return threads


def _fmt(value) -> str:
    return "?" if value is None else f"{value:.1f}"


def _timing(model, trainer: L.Trainer, started: float) -> dict[str, Any]:
    """Median step time / throughput of this process; ``throughput_all_processes`` scales by world size."""
    timing = model.timing_summary()
    if timing["throughput"] is not None:
        timing["throughput_all_processes"] = timing["throughput"] * trainer.world_size
    timing["wall_time_s"] = time.time() - started
    return timing


def _finish_wandb(trainer: L.Trainer, summary: dict, exit_code: int = 0, discard_offline: bool = False) -> None:
    """Put the headline numbers in the W&B run summary and close the run (needed between multirun
    jobs) with ``exit_code`` (1: failed or interrupted). ``discard_offline``: delete an offline run's
    folder (a run that failed before training a step: nothing for ``wandb sync`` to upload)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not (isinstance(logger, WandbLogger) and trainer.is_global_zero):
            continue
        if getattr(logger, "_experiment", None) is None:  # no W&B run was started
            continue
        try:
            run = logger.experiment
            run_dir = Path(run.dir).parent
            offline = run.offline
            run.summary.update({"status": summary["status"], "dataset": summary["dataset"]["name"],
                                "params": summary["model"].get("params"),
                                "flops": summary["model"].get("flops"),
                                "throughput": summary["timing"].get("throughput"),
                                "backend": summary["backend"]["resolved"]})
            run.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001 - logging must not fail the run
            log.warning("could not finish the W&B run: %s", err)
            continue
        if discard_offline and offline and run_dir.name.startswith("offline-run-"):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            log.info("removed the W&B offline run %s: the run failed before training a step", run_dir)


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimises; ``None`` when the metric was not produced."""
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric %r not among the final metrics %s", name, sorted(metrics))
        return None
    return metrics[name]

