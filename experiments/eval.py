"""The evaluation task: ``evaluate(cfg) -> dict`` of metrics for a saved checkpoint (Hydra-free; eval.py
wraps it). The checkpoint's weights are loaded into the configured model and the validation (and, with
``stages: [validate, test]``, test) loop runs once; the run writes its own folder, summary.json and W&B
run (``job_type: eval``), like a training run, and leaves the checkpoint's run folder alone."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import utils
from experiments.callbacks import ProgressBar
from experiments.train import (_backend_setting, _finish_wandb, _instantiate_model, _label_run, _label_run_dir,
                               _setup_loggers, _versions, setup_threads)

log = logging.getLogger(__name__)

STAGES = ("validate", "test")


def _checkpoint_path(cfg: DictConfig) -> Path:
    """``cfg.ckpt_path``, which must name an existing file."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        ckpt_path = cfg.get("ckpt_path")
    except MissingMandatoryValue:
        ckpt_path = None
    if not ckpt_path:
        raise ValueError("eval.py needs a checkpoint: ckpt_path=<run>/checkpoints/last.ckpt (or epoch_NNN.ckpt, "
                         "the best by val/acc)")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    return path


def _training_settings(ckpt_path: Path) -> str | None:
    """The conv / model settings of the run that saved ``ckpt_path`` (from ``<run>/.hydra/config.yaml``),
    as overrides to give eval.py; ``None`` when that file is not there."""
    from experiments.resolvers import checkpoint_run_dir

    run_dir = checkpoint_run_dir(ckpt_path)
    config = run_dir / ".hydra" / "config.yaml" if run_dir is not None else None
    if config is None or not config.is_file():
        return None
    try:
        saved = OmegaConf.load(config)
        conv = OmegaConf.to_container(saved.conv, resolve=False)
        net = OmegaConf.to_container(saved.model.net, resolve=False)
    except Exception:  # noqa: BLE001 - only a hint
        return None
    parts = [f"conv={conv.pop('variant')}"] + [f"conv.{k}={v}" for k, v in conv.items()]
    parts += [f"model.net.{k}={v}" for k, v in net.items() if k in ("depth", "width", "swap_stages", "root")]
    return " ".join(parts) + f" (from {config})"


def _load_weights(model: L.LightningModule, ckpt_path: Path, cfg: DictConfig) -> dict[str, Any]:
    """Load the checkpoint's weights into ``model``; a checkpoint of another architecture is an error that
    names the configured settings and the ones the checkpoint's run used. Returns the checkpoint's epoch
    and global step."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if "state_dict" not in state:
        raise ValueError(f"ckpt_path={ckpt_path} is not a Lightning checkpoint (no state_dict)")
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        hint = _training_settings(ckpt_path)
        detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(
            f"ckpt_path={ckpt_path} does not fit the configured model (conv={cfg.conv.variant}, "
            f"model={cfg.model.get('name')}): {detail} ... Give eval.py the settings the checkpoint was trained "
            f"with{': ' + hint if hint else ''}") from err
    return {"epoch": state.get("epoch"), "global_step": state.get("global_step"),
            "val_acc_best": state.get("val_acc_best")}


def _model_stats(model: L.LightningModule) -> dict[str, Any]:
    """Parameters and forward FLOPs of one sample, as training records them (``model.model_stats``)."""
    from experiments.flops import count_flops, count_params

    net = getattr(model, "net", model)
    stats = {"params": count_params(net)}
    shape = getattr(getattr(model, "hparams", {}), "get", lambda *_: None)("input_shape")
    if shape is not None:
        try:
            stats["flops"] = count_flops(net, tuple(shape))
        except Exception as err:  # noqa: BLE001 - a statistic, not the result
            log.warning("could not count FLOPs: %s", err)
    return stats


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Validate (and test) ``cfg.ckpt_path`` on ``cfg.data`` with ``cfg.model``; write ``summary.json``
    into ``cfg.paths.output_dir``; return the metrics (``val/loss``, ``val/acc``, ``test/...``).

    The summary says ``status`` (finished / failed / interrupted), the checkpoint (path, epoch, step),
    the data set (synthetic or not), backend, device and versions; W&B gets its own run.
    """
    from layers import get_backend, resolve, set_backend

    started = time.time()
    utils.single_console_logging()
    ckpt_path = _checkpoint_path(cfg)
    stages = list(cfg.get("stages") or ["validate"])
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"stages must be a list of {STAGES}, got {stages}")
    set_backend(_backend_setting(cfg))
    setup_threads(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    output_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {"status": "started", "task_name": cfg.get("task_name"), "output_dir": str(output_dir),
                               "checkpoint": {"path": str(ckpt_path)}}
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    data_info = datamodule.load()
    _label_run(cfg, data_info)
    if data_info["synthetic"]:  # the run folder says so, as a training run's does
        _label_run_dir(cfg, resuming=False)
        output_dir = Path(cfg.paths.output_dir)
        summary["output_dir"] = str(output_dir)
    summary.update(run_name=cfg.run_name, dataset=dict(data_info))
    log.info("evaluating %s on %s data (%s)", ckpt_path, data_info["name"], data_info["source"])

    model: L.LightningModule = _instantiate_model(cfg)
    summary["checkpoint"].update(_load_weights(model, ckpt_path, cfg))
    if "wandb" in (cfg.get("logger") or {}):
        with open_dict(cfg):
            cfg.logger.wandb.job_type = "eval"
    loggers, wandb_mode = _setup_loggers(cfg, None)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[ProgressBar()])
    wandb_id = cfg.logger.wandb.get("id") if "wandb" in (cfg.get("logger") or {}) else None

    config_dict = utils.config_to_dict(cfg)
    metrics: dict[str, Any] = {}
    failed = False
    try:
        for logger in trainer.loggers:
            logger.log_hyperparams({**config_dict, "dataset": data_info["name"],
                                    "synthetic_data": data_info["synthetic"]})
        for stage in stages:
            run = trainer.validate if stage == "validate" else trainer.test
            results = run(model=model, datamodule=datamodule, verbose=True)
            metrics.update({k: utils.to_float(v) for k, v in (results[0] if results else {}).items()})
        metrics.pop("val/acc_best", None)  # the best of one validation: val/acc itself
        summary["status"] = "finished"
    except BaseException as err:
        failed = True
        summary.update(status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                       error=f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        raise
    finally:
        device = trainer.strategy.root_device
        summary.update({
            "metrics": metrics,
            "conv": OmegaConf.to_container(cfg.conv, resolve=True),
            "model": {"target": cfg.model.get("net", {}).get("_target_"), **_model_stats(model)},
            "timing": {"wall_time_s": time.time() - started},
            "backend": {"setting": get_backend(), "resolved": resolve(device)},
            "device": utils.device_description(trainer),
            "wandb": {"mode": wandb_mode, "id": wandb_id},
            "versions": _versions(),
            "seed": cfg.get("seed"),
            "config": config_dict,
        })
        if trainer.is_global_zero:
            path = utils.write_summary(output_dir / "summary.json", summary)
            log.info("summary: %s", path)
        _finish_wandb(trainer, summary, exit_code=1 if failed else 0)

    log.info("evaluated %s in %.1f s on %s data: %s", ckpt_path, summary["timing"]["wall_time_s"],
             "SYNTHETIC" if data_info["synthetic"] else data_info["name"],
             {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return metrics
