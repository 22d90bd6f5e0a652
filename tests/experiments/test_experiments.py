"""Experiments: configs compose, every conv variant trains (fast_dev_run), multirun, resume, summary.json,
and the synthetic fallback is labelled. CPU only, tiny synthetic data, CSV logs, no network."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.classification.data import CIFAR10DataModule, DataUnavailable, find_local_copy, make_synthetic
from experiments.classification.data.cifar import host_reachable, load_imagefolder
from experiments.classification.data.tensors import TensorBatchLoader, random_crop_flip
from experiments.reports.analysis import wandb_records
from experiments.train import train
from experiments.utils import choose_wandb_mode

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
VARIANTS = sorted(p.stem for p in (CONF / "conv").glob("*.yaml"))
# tiny and fast: synthetic data, 4-channel ResNet-8, CSV logs, the PyTorch reference backend
# (conftest turns on TRITON_INTERPRET on CPU, which is far too slow for training)
FAST = ["experiment=smoke", "backend=reference", "cpu_threads=null", "model.net.width=4",
        "model.net.depth=8", "data.synthetic_train_size=64", "data.synthetic_val_size=32",
        "data.batch_size=16", "data.eval_batch_size=32"]


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def make_cfg(tmp_path: Path, *overrides: str, name: str = "run"):
    out = tmp_path / name
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*FAST, f"paths.output_dir={out}", *overrides])


def read_summary(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


# --------------------------------------------------------------------------------------- configs


def test_conv_options_are_the_seven_variants():
    assert VARIANTS == sorted(["standard", "grouped", "depthwise_separable", "spatially_separable", "dilated",
                               "deformable", "deformable_v2"])


def test_default_config_composes_with_auto_trainer():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train")
    assert cfg.conv.variant == "standard"
    assert "wandb" in cfg.logger
    assert cfg.optimized_metric == "val/acc"
    if not torch.cuda.is_available():  # the CPU preset
        assert cfg.trainer.accelerator == "cpu"
        assert cfg.trainer.max_epochs <= 5 and cfg.trainer.limit_train_batches <= 100
    else:
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.limit_train_batches == 1.0


@pytest.mark.parametrize("override,key,expected", [
    ("hydra/launcher=slurm", "_target_", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("hydra/launcher=local_parallel", "_target_", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
])
def test_launcher_configs_compose(override, key, expected):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[override], return_hydra_config=True)
    assert cfg.hydra.launcher[key] == expected


def test_ddp_and_explicit_presets_compose():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        ddp = compose(config_name="train", overrides=["trainer=ddp"])
        cpu = compose(config_name="train", overrides=["trainer=cpu"])
        gpu = compose(config_name="train", overrides=["trainer=gpu"])
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.devices >= 2
    assert cpu.trainer.accelerator == "cpu" and gpu.trainer.accelerator == "gpu"
    assert gpu.trainer.max_epochs >= 30


def test_bad_conv_override_is_a_clear_hydra_error():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(MissingConfigException) as info:
            compose(config_name="train", overrides=["conv=nonexistent"])
    message = str(info.value)
    assert "conv/nonexistent" in message
    assert "deformable_v2" in message and "standard" in message  # lists the valid options


@pytest.mark.parametrize("model,expected", [
    ("resnet20", "standard-resnet20-w16-s0"), ("resnet56", "standard-resnet56-w16-s0"),
    ("nin", "standard-nin-root1-s0"), ("detector", "standard-frcnn-resnet18-s0"),
])
def test_every_model_gives_a_run_name(model, expected):
    """run_name interpolates model.name, which every conf/model file defines."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}"])
    assert cfg.run_name == expected


def test_nin_without_the_experiment_trains(tmp_path):
    # not experiment=smoke: it shrinks ResNet settings (width, depth) that NiN does not have
    overrides = ["data=synthetic", "logger=csv", "trainer=cpu"] + [o for o in FAST if o.split("=")[0].split(".")[0]
                                                                  in ("backend", "cpu_threads", "data")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "model=nin", "trainer.fast_dev_run=true",
                                                      "data.batch_size=4", f"paths.output_dir={tmp_path}"])
    metrics = train(cfg)
    assert 0.0 <= metrics["val/acc"] <= 1.0
    summary = read_summary(cfg)
    assert summary["run_name"] == "standard-nin-root1-s0-synthetic"
    assert "name" not in summary.get("hparams", {})


# ---------------------------------------------------------------------------------- fast_dev_run


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_dev_run_every_variant(tmp_path, variant):
    cfg = make_cfg(tmp_path, f"conv={variant}", "trainer.fast_dev_run=true")
    metrics = train(cfg)
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    summary = read_summary(cfg)
    assert summary["status"] == "finished"
    assert summary["conv"]["variant"] == variant
    assert summary["model"]["params"] > 0 and summary["model"]["flops"] > 0


def test_summary_json_contents(tmp_path):
    cfg = make_cfg(tmp_path, "conv=grouped", "conv.groups=2", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                   "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "logger=csv")
    metrics = train(cfg)
    s = read_summary(cfg)
    assert s["status"] == "finished"
    assert s["run_name"] == cfg.run_name and s["run_name"].endswith("-synthetic")
    assert s["dataset"]["name"] == "synthetic" and s["dataset"]["synthetic"] is True
    assert s["dataset"]["fallback"] is False  # asked for synthetic explicitly
    assert s["metrics"]["val/acc"] == pytest.approx(metrics["val/acc"])
    assert s["optimized_metric"] == "val/acc" and s["best"]["score"] is not None
    assert Path(s["best"]["last_checkpoint"]).is_file()
    assert s["conv"] == {"variant": "grouped", "groups": 2}
    assert s["model"]["params"] > 0 and s["model"]["flops"] > 0
    assert s["timing"]["throughput"] > 0 and s["timing"]["step_time_ms"] > 0 and s["timing"]["steps_timed"] == 3
    assert s["backend"] == {"setting": "reference", "resolved": "reference"}
    assert s["device"]["type"] == "cpu"
    assert s["epochs_completed"] == 1 and s["global_step"] == 3
    assert s["config"]["conv"]["variant"] == "grouped" and s["config"]["model"]["net"]["width"] == 4
    assert {"torch", "lightning", "triton"} <= set(s["versions"])
    # the CSV logger wrote the throughput / step-time / model-size metrics
    csv = next(Path(cfg.paths.output_dir, "csv").rglob("metrics.csv")).read_text()
    for column in ("train/throughput_step", "train/step_time_ms_step", "model/params", "model/flops", "val/acc"):
        assert column in csv


# ------------------------------------------------------------------------------ CONVLAB_BACKEND


def _cfg_without_backend(tmp_path: Path, *overrides: str):
    """FAST without its ``backend=reference``: the backend is whatever the config's default gives."""
    fast = [o for o in FAST if not o.startswith("backend=")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*fast, f"paths.output_dir={tmp_path / 'run'}", *overrides])


def test_convlab_backend_env_is_the_config_default(tmp_path, monkeypatch):
    """``CONVLAB_BACKEND=reference python train.py ...`` runs the reference, and summary.json says so;
    an explicit ``backend=`` still wins, and without the variable the default stays auto."""
    monkeypatch.setenv("CONVLAB_BACKEND", "reference")
    assert _cfg_without_backend(tmp_path, "backend=triton").backend == "triton"
    cfg = _cfg_without_backend(tmp_path, "trainer.fast_dev_run=true")
    assert cfg.backend == "reference"
    train(cfg)
    summary = read_summary(cfg)
    assert summary["backend"] == {"setting": "reference", "resolved": "reference"}
    assert summary["config"]["backend"] == "reference"
    monkeypatch.delenv("CONVLAB_BACKEND")
    assert _cfg_without_backend(tmp_path).backend == "auto"


def test_invalid_convlab_backend_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLAB_BACKEND", "cudnn")
    cfg = _cfg_without_backend(tmp_path, "trainer.fast_dev_run=true")
    assert cfg.backend == "cudnn"
    with pytest.raises(ValueError, match=r"CONVLAB_BACKEND must be one of .*got 'cudnn'"):
        train(cfg)
    # a bad backend= on the command line is named as such
    monkeypatch.delenv("CONVLAB_BACKEND")
    with pytest.raises(ValueError, match=r"^backend must be one of .*got 'cudnn'"):
        train(_cfg_without_backend(tmp_path, "backend=cudnn", "trainer.fast_dev_run=true"))
    # and at import, before any config (the variable is read when layers is first imported)
    env = {**os.environ, "CONVLAB_BACKEND": "cudnn"}
    proc = subprocess.run([sys.executable, "-c", "import layers"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "CONVLAB_BACKEND must be one of" in proc.stderr, proc.stderr[-2000:]


# -------------------------------------------------------------------------------------- resume


def test_resume_from_checkpoint_advances_the_epoch(tmp_path):
    short = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    first = make_cfg(tmp_path, *short, "trainer.max_epochs=1", name="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 0

    second = make_cfg(tmp_path, *short, "trainer.max_epochs=2", f"ckpt_path={last}", name="second")
    with pytest.warns(UserWarning, match="schedule over 4 steps; the checkpoint's run planned 2"):
        train(second)
    s = read_summary(second)
    assert s["resumed_from"] == str(last)
    assert s["epochs_completed"] == 2 and s["global_step"] == 4  # continued, not restarted
    resumed_last = Path(second.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(resumed_last, weights_only=False, map_location="cpu")["epoch"] == 1


def test_last_checkpoint_is_every_epoch_even_without_improvement(tmp_path):
    """A run whose val/acc never improves (learning rate 0) still leaves last.ckpt at its final
    epoch, so resuming as the README shows does not repeat epochs (Lightning 2.6's own
    ModelCheckpoint rewrites last.ckpt only where it saves a best checkpoint)."""
    cfg = make_cfg(tmp_path, "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.max_epochs=3",
                   "model.optimizer.lr=0.0", "model.optimizer.weight_decay=0.0")
    train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=False, map_location="cpu")
    assert (last["epoch"], last["global_step"]) == (2, 3)
    assert len(list(ckpts.glob("epoch_*.ckpt"))) == 1  # top-1 kept beside last


def _record_batches(monkeypatch, fail_at_step: int | None = None, error: type[BaseException] = RuntimeError):
    """Patch the training step to record (epoch, batch_idx, labels) and raise ``error`` at a global step."""
    from experiments.classification.module import ClassifierModule

    seen, step = [], ClassifierModule.training_step

    def training_step(self, batch, batch_idx):
        if fail_at_step is not None and self.trainer.global_step == fail_at_step:
            raise error("boom")
        seen.append((self.trainer.current_epoch, batch_idx, batch[1].tolist()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", training_step)
    return seen


def _csv_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(next(Path(run_dir, "csv").rglob("metrics.csv")), newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """A run stopped mid-epoch and resumed from its checkpoint trains the same batches as an uninterrupted
    one, in the same folder, with the LR schedule, best val/acc and CSV history continuing; the earlier
    invocation's time does not count against trainer.max_time."""
    two_epochs = ["trainer.max_epochs=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1"]
    with monkeypatch.context() as m:
        reference = _record_batches(m)
        ref_cfg = make_cfg(tmp_path, *two_epochs, name="reference")
        train(ref_cfg)
    with monkeypatch.context() as m:
        first = _record_batches(m, fail_at_step=5)
        cfg = make_cfg(tmp_path, *two_epochs, name="first")
        with pytest.raises(RuntimeError, match="boom"):
            train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    ckpt = run_dir / "checkpoints" / "interrupted.ckpt"
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert state["global_step"] == 5
    # as if the first invocation had used up the CPU preset's max_time, and had seen a better epoch
    for cb_state in state["callbacks"].values():
        if "time_elapsed" in cb_state:
            cb_state["time_elapsed"]["train"] = 10_000.0
    days, hours, minutes, seconds = (int(v) for v in cfg.trainer.max_time.split(":"))
    assert days * 86400 + hours * 3600 + minutes * 60 + seconds < 10_000  # the CPU preset's cap: used up
    state["val_acc_best"] = 0.99
    torch.save(state, ckpt)

    with monkeypatch.context() as m:
        second = _record_batches(m)
        resumed = make_cfg(tmp_path, *two_epochs, f"ckpt_path={ckpt}", name="elsewhere")
        metrics = train(resumed)
    assert Path(resumed.paths.output_dir) == run_dir and not (tmp_path / "elsewhere").exists()
    s = read_summary(resumed)
    assert s["status"] == "finished" and s["resumes"] == [str(ckpt)]
    assert s["epochs_completed"] == 2 and s["global_step"] == 8
    assert [b[2] for b in first + second] == [b[2] for b in reference]  # the same batches, in order
    assert [b[:2] for b in second] == [(1, 1), (1, 2), (1, 3)]
    assert metrics["val/acc_best"] == pytest.approx(0.99)
    rows, ref_rows = _csv_rows(run_dir), _csv_rows(Path(ref_cfg.paths.output_dir))
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert train_steps == list(range(8))  # each step once: no gap, no duplicate
    assert sum(1 for r in rows if r.get("model/params")) == 1
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert lrs == pytest.approx([float(r["lr"]) for r in ref_rows if r.get("lr")])  # the schedule continued
    assert lrs[-1] == pytest.approx(0.0)


def _wandb_runs(run_dir: Path, timeout: float = 60.0) -> list[tuple[str, list[int]]]:
    """(run id, exit codes) of each W&B offline run under ``run_dir``, oldest first. W&B's service process
    writes the files in the background: it is shut down first, and the files are read until each holds
    its exit record (or ``timeout`` seconds pass)."""
    import wandb

    wandb.teardown()
    deadline = time.time() + timeout
    while True:
        out = []
        for f in sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb")):
            records = wandb_records(f)
            ids = {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
            exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
            out.append((ids.pop() if len(ids) == 1 else ids, exits))
        if all(exits for _, exits in out) or time.time() > deadline:
            return out
        time.sleep(0.5)


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))


def test_resume_keeps_the_wandb_run(tmp_path, wandb_offline):
    short = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=many"]
    first = make_cfg(tmp_path, *short, "trainer.max_epochs=1", name="first")
    train(first)
    run_id = read_summary(first)["wandb"]["id"]
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    second = make_cfg(tmp_path, *short, "trainer.max_epochs=2", f"ckpt_path={last}", name="second")
    train(second)
    assert read_summary(second)["wandb"] == {"mode": "offline", "id": run_id}
    assert _wandb_runs(Path(first.paths.output_dir)) == [(run_id, [0]), (run_id, [0])]  # one W&B run, continued


def test_resume_goes_on_in_the_checkpoint_run_folder():
    """``python train.py ckpt_path=<run>/checkpoints/last.ckpt`` puts Hydra's run folder at <run>."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["ckpt_path=/x/runs/old_run/checkpoints/last.ckpt"],
                      return_hydra_config=True)
        fresh = compose(config_name="train", return_hydra_config=True)
    assert OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"] == "/x/runs/old_run"
    assert "/outputs/train/runs/" in OmegaConf.to_container(fresh.hydra.run, resolve=True)["dir"]
    # the first invocation's .hydra/config.yaml and overrides.yaml stay
    assert cfg.hydra.output_subdir.startswith(".hydra/resumed_")
    assert fresh.hydra.output_subdir == ".hydra"


def test_missing_checkpoint_is_reported(tmp_path):
    cfg = make_cfg(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        train(cfg)


# ------------------------------------------------------------------------------------ failures


def _train_failing(tmp_path, monkeypatch, fail_at_step: int, max_epochs: int):
    """A run (CSV and offline W&B loggers) that raises RuntimeError('boom') at global step ``fail_at_step``:
    its config, and its summary.json once train() has raised."""
    _record_batches(monkeypatch, fail_at_step=fail_at_step)
    cfg = make_cfg(tmp_path, f"trainer.max_epochs={max_epochs}", "trainer.limit_val_batches=1", "logger=many")
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    return cfg, read_summary(cfg)


def test_exception_saves_a_checkpoint_and_fails_the_wandb_run(tmp_path, monkeypatch, wandb_offline):
    cfg, s = _train_failing(tmp_path, monkeypatch, fail_at_step=3, max_epochs=2)
    assert s["status"] == "failed" and s["error"] == "RuntimeError: boom"
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "interrupted.ckpt"
    assert s["interrupted_checkpoint"] == str(ckpt)
    assert torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"] == 3
    assert _wandb_runs(Path(cfg.paths.output_dir)) == [(s["wandb"]["id"], [1])]


def test_ctrl_c_saves_a_checkpoint_and_exits_nonzero(tmp_path, monkeypatch):
    import signal

    _record_batches(monkeypatch, fail_at_step=2, error=KeyboardInterrupt)
    cfg = make_cfg(tmp_path, "trainer.max_epochs=2", "trainer.limit_val_batches=1")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_info:  # Lightning's answer to Ctrl-C
            train(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C after the first
    assert exit_info.value.code not in (0, None)
    s = read_summary(cfg)
    assert s["status"] == "interrupted" and s["error"] == "KeyboardInterrupt: boom"
    assert torch.load(s["interrupted_checkpoint"], weights_only=False, map_location="cpu")["global_step"] == 2


def test_failure_before_training_leaves_no_wandb_run(tmp_path, monkeypatch, wandb_offline):
    cfg, s = _train_failing(tmp_path, monkeypatch, fail_at_step=0, max_epochs=1)
    assert s["status"] == "failed" and s["interrupted_checkpoint"] is None
    assert not list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*"))  # nothing for `wandb sync`
    missing = make_cfg(tmp_path, "logger=many", f"ckpt_path={tmp_path / 'nope.ckpt'}", name="missing")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        train(missing)
    assert not list(Path(missing.paths.output_dir).glob("wandb/offline-run-*"))


# ------------------------------------------------------------------------------ synthetic fallback


def test_missing_cifar_falls_back_to_labelled_synthetic(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = make_cfg(tmp_path, "data.source=cifar10", f"data.download_dir={empty}",  # data.root: the default
                   "data.download=false", "trainer.fast_dev_run=true")
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert any("Falling back to the SYNTHETIC" in r.getMessage() for r in caplog.records)
    s = read_summary(cfg)
    assert s["dataset"]["name"] == "synthetic" and s["dataset"]["fallback"] is True
    assert "data.download=false" in s["dataset"]["fallback_reason"]
    assert s["run_name"].endswith("-synthetic") and "synthetic" in s["config"]["tags"]


def test_fallback_error_mode_raises(tmp_path):
    dm = CIFAR10DataModule(root=None, download_dir=str(tmp_path), download=False, fallback="error")
    with pytest.raises(DataUnavailable, match="no local copy"):
        dm.load()


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_given_data_root_without_data_fails_fast(tmp_path, make):
    """A data.root the user gave is never replaced by synthetic data: a typo is an error naming the path."""
    root = tmp_path / "cifra10"
    if make == "empty":
        root.mkdir()
    cfg = make_cfg(tmp_path, "data.source=cifar10", f"data.root={root}", f"data.download_dir={tmp_path / 'dl'}",
                   "data.download=false", "trainer.fast_dev_run=true")
    message = "does not exist" if make == "missing" else "holds no CIFAR-10 copy"
    with pytest.raises(FileNotFoundError, match=f"data.root={root} .*{message}"):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()  # failed before the run started


def test_synthetic_run_says_so_in_folder_and_last_line(tmp_path):
    """`python train.py ...` on synthetic data: the run folder's name and the console's last line say so."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CONVLAB_BACKEND": "reference"}
    cmd = [sys.executable, str(ROOT / "train.py"), *FAST, "trainer.fast_dev_run=true", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "smoke" / "runs").iterdir()
    assert run_dir.name.endswith("_standard_synthetic")
    assert json.loads((run_dir / "summary.json").read_text())["output_dir"] == str(run_dir)
    assert "on SYNTHETIC data" in proc.stdout.strip().splitlines()[-1]
    # console noise: each Lightning line once, no "0 Total Flops" / FLOPs column of zeros, no v_num
    console = proc.stdout + proc.stderr
    assert console.count("GPU available:") == 1 and console.count("Seed set to 0") == 1, console[-3000:]
    assert "Total Flops" not in console and "| FLOPs" not in console and "MFLOPs (forward" in console
    assert "v_num" not in console


def test_unreachable_download_server_is_detected_quickly():
    # a closed local port: refused at once; no outside connection is attempted
    assert host_reachable("http://127.0.0.1:9/", timeout=1.0) is False


# -------------------------------------------------------------------------------------- data


def test_imagefolder_copy_is_decoded_and_cached(tmp_path):
    from torchvision.io import write_png

    images, labels = make_synthetic(20, seed=1)
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = tmp_path / "cifar10" / split / f"class{int(label)}"
            folder.mkdir(parents=True, exist_ok=True)
            write_png(img, str(folder / f"{i:04d}.png"))
    kind, folder = find_local_copy(tmp_path)  # finds root/cifar10
    assert kind == "imagefolder" and folder == tmp_path / "cifar10"
    x, y, classes = load_imagefolder(folder, "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and len(classes) == 10
    assert (folder / "cache_train.pt").is_file()
    x2, y2, _ = load_imagefolder(folder, "train")  # from the cache
    assert torch.equal(x, x2) and torch.equal(y, y2)
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, fallback="error")
    info = dm.load()
    assert info["name"] == "cifar10" and info["synthetic"] is False and info["num_train"] == 20


def test_tensor_loader_shards_and_augmentation_keeps_shapes():
    x = torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 4, 4).to(torch.uint8)
    y = torch.arange(10)
    shards = [TensorBatchLoader(x, y, 2, shuffle=True, drop_last=False, seed=3, rank=r, world_size=2) for r in (0, 1)]
    seen = [torch.cat([b[1] for b in loader]) for loader in shards]
    assert len(shards[0]) == 3 and sorted(torch.cat(seen).tolist()) == list(range(10))
    batch = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8


def test_wandb_goes_offline_without_login(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert choose_wandb_mode() == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == "disabled"


# ------------------------------------------------------------------------------------- multirun


def _wandb_run_info(offline_run: Path) -> dict:
    """Group, tags, job type, top-level config keys, summary and exit codes of a W&B offline run."""
    (f,) = offline_run.glob("run-*.wandb")
    info = {"config": {}, "summary": {}, "exits": []}
    for r in wandb_records(f):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(group=r.run.run_group, tags=list(r.run.tags), job_type=r.run.job_type, id=r.run.run_id)
            info["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            info["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "summary":
            info["summary"].update({i.key: json.loads(i.value_json) for i in r.summary.update})
        elif kind == "exit":
            info["exits"].append(r.exit.exit_code)
    return info


def test_quick_sweep_ends_with_validation_and_groups_wandb(tmp_path, wandb_offline):
    """`python train.py experiment=quick_sweep ...` (a multirun): every job stops at trainer.max_steps (no `+`
    needed) inside an epoch and still validates; all jobs share one W&B group, are tagged with variant and
    seed, and log the config flat."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "CONVLAB_BACKEND": "reference"}
    tiny = [o for o in FAST if not o.startswith("experiment=")]
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=quick_sweep", *tiny, "data=synthetic", "logger=many",
           "conv=standard,dilated", "seed=0", "trainer.max_steps=3", "callbacks=none", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0_standard_s0_synthetic", "1_dilated_s0_synthetic"]
    for path in summaries:
        s = json.loads(path.read_text())
        assert s["status"] == "finished" and s["global_step"] == 3  # 4 batches per epoch: stopped inside it
        assert s["epochs_completed"] == 0 and s["metrics"]["val/acc"] is not None
    assert (sweep / "multirun.yaml").is_file()
    from experiments.reports.analysis import load_summaries, table

    rows = table(load_summaries([sweep]))
    assert sorted(r["variant"] for r in rows) == ["dilated", "standard"] and all(r["runs"] == 1 for r in rows)
    import wandb

    wandb.teardown()
    runs = [_wandb_run_info(next(p.parent.glob("wandb/offline-run-*"))) for p in summaries]
    assert {r["group"] for r in runs} == {"quick_sweep-sweep"}  # <task_name>-<sweep folder>
    for run, variant in zip(runs, ["standard", "dilated"]):
        assert {variant, "seed=0", "quick_sweep", "synthetic"} <= set(run["tags"])
        assert run["config"]["conv"]["variant"] == variant and "config" not in run["config"]
        assert run["config"]["trainer"]["max_steps"] == 3
        assert run["summary"]["status"] == "finished"


# ----------------------------------------------------------------------------------- model size


def test_resnet20_size_and_swap_stages():
    from experiments.flops import count_flops, count_params
    from experiments.classification.models import CifarResNet

    net = CifarResNet(depth=20, width=16, conv={"variant": "standard"})
    assert count_params(net) == 272_474  # ResNet-20's 0.27M (He et al. 2016, option B shortcuts)
    assert count_flops(net) == pytest.approx(2 * 40.8e6, rel=0.01)  # ~41M multiply-adds
    dw_all = CifarResNet(conv={"variant": "depthwise_separable"}, swap_stages=[1, 2, 3])
    dw_late = CifarResNet(conv={"variant": "depthwise_separable"}, swap_stages=[3])
    assert count_params(dw_all) < count_params(dw_late) < count_params(net)
    assert isinstance(dw_late.stage1[0].conv1, type(net.stage1[0].conv1))  # stage 1 stays standard
    with pytest.raises(ValueError, match="swap_stages"):
        CifarResNet(swap_stages=[4])


def test_deformable_flops_formula():
    from experiments.flops import count_flops
    from layers.factory import make_conv

    conv, offsets, samples = 2 * 16 * 16 * 9 * 1024, 2 * 16 * 18 * 9 * 1024, 16 * 9 * 1024
    assert count_flops(make_conv("deformable", 16, 16), (16, 32, 32)) == conv + offsets + 7 * samples
    masks = 2 * 16 * 9 * 9 * 1024  # the offset conv also predicts 9 mask logits
    assert count_flops(make_conv("deformable_v2", 16, 16), (16, 32, 32)) == conv + offsets + masks + 8 * samples


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")
def test_busy_cores_sees_a_spinning_process():
    from experiments import utils

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = utils.busy_cores(window=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.7 <= busy <= os.cpu_count() + 1e-6


def test_cpu_threads_setting(monkeypatch):
    from experiments import utils

    before = torch.get_num_threads()
    try:
        assert utils.choose_cpu_threads(None) is None
        assert utils.choose_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        # auto: the usable cores (at most torch's default), whatever else keeps them busy
        expected = min(utils._TORCH_DEFAULT_THREADS, utils.usable_cores())
        for busy in (0.0, float(os.cpu_count())):
            torch.set_num_threads(before)
            monkeypatch.setattr(utils, "busy_cores", lambda window=0.3, busy=busy: busy)
            monkeypatch.setattr(os, "getloadavg", lambda busy=busy: (busy, busy, busy))
            assert utils.choose_cpu_threads("auto") == expected
        with pytest.raises(ValueError, match="cpu_threads"):
            utils.choose_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------- budgets, time cap, debug presets


def test_cpu_preset_is_a_step_budget_with_fixed_threads():
    """The CPU preset stops on steps / epochs; its max_time is only a safety net, far above its run time."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer=cpu"])
    assert isinstance(cfg.cpu_threads, int)
    assert isinstance(cfg.trainer.limit_train_batches, int) and cfg.trainer.max_epochs >= 1
    days, hours, minutes, seconds = (int(v) for v in cfg.trainer.max_time.split(":"))
    assert days * 86400 + hours * 3600 + minutes * 60 + seconds >= 15 * 60


def _slow_steps(monkeypatch, seconds: float) -> None:
    """Every training step sleeps ``seconds`` first: a loaded machine, as the run sees it."""
    from experiments.classification.module import ClassifierModule

    step = ClassifierModule.training_step

    def training_step(self, batch, batch_idx):
        time.sleep(seconds)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", training_step)


def test_same_seed_same_result_whatever_the_load(tmp_path, monkeypatch):
    """Two runs of one config and seed, the second on a "loaded" machine (slow steps, every core busy):
    the same thread count, steps and val/acc; cpu_threads=auto does not look at the load."""
    from experiments import utils

    threads = torch.get_num_threads()
    budget = ["cpu_threads=auto", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.max_time=00:00:10:00"]
    try:
        quiet_cfg = make_cfg(tmp_path, *budget, name="quiet")
        quiet = train(quiet_cfg)
        quiet_summary = read_summary(quiet_cfg)
        with monkeypatch.context() as m:
            _slow_steps(m, 0.15)
            m.setattr(utils, "busy_cores", lambda window=0.3: float(os.cpu_count()))
            m.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
            loaded_cfg = make_cfg(tmp_path, *budget, name="loaded")
            loaded = train(loaded_cfg)
    finally:
        torch.set_num_threads(threads)
    loaded_summary = read_summary(loaded_cfg)
    assert loaded_summary["device"]["load_at_start"]["load_avg_1min"] == 64.0
    assert quiet_summary["device"]["torch_threads"] == loaded_summary["device"]["torch_threads"]
    assert loaded_summary["timing"]["step_time_ms"] >= 150  # the "load" slowed every step
    for s in (quiet_summary, loaded_summary):
        assert s["status"] == "finished" and s["global_step"] == 4 and s["epochs_completed"] == 1
    assert loaded["val/acc"] == quiet["val/acc"] and loaded["val/loss"] == quiet["val/loss"]


def test_time_cap_is_a_reported_safety_net(tmp_path, monkeypatch, wandb_offline, caplog):
    """A run stopped by trainer.max_time before its step budget is "time-capped" (console, summary.json,
    W&B), still ends with a validation, and counts only finished epochs."""
    _slow_steps(monkeypatch, 0.4)
    cfg = make_cfg(tmp_path, "trainer.max_epochs=2", "trainer.limit_val_batches=1", "trainer.max_time=00:00:00:01",
                   "logger=many")
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    s = read_summary(cfg)
    assert s["status"] == "time-capped" and s["time_cap"]["planned_steps"] == 8
    assert 1 <= s["global_step"] < 4 and s["epochs_completed"] == 0  # stopped inside the first epoch
    assert metrics["val/acc"] is not None and s["metrics"]["val/acc"] == pytest.approx(metrics["val/acc"])
    assert "TIME-CAPPED" in caplog.records[-1].getMessage()
    import wandb

    wandb.teardown()
    run = _wandb_run_info(next(Path(cfg.paths.output_dir).glob("wandb/offline-run-*")))
    assert run["summary"]["status"] == "time-capped" and run["exits"] == [0]


def test_train_false_points_at_eval_py(tmp_path):
    cfg = make_cfg(tmp_path, "train=false")
    with pytest.raises(ValueError, match=r"train=false.*python eval.py ckpt_path="):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()


DEBUG_PRESETS = sorted(p.stem for p in (CONF / "debug").glob("*.yaml"))


@pytest.mark.parametrize("preset", DEBUG_PRESETS)
def test_debug_presets_compose(preset):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"debug={preset}", "conv=deformable"])
    assert cfg.task_name == "debug" and list(cfg.logger) == ["csv"] and cfg.trainer.max_time is None
    assert cfg.callbacks.model_checkpoint is None and cfg.trainer.enable_checkpointing is False
    assert cfg.trainer.detect_anomaly is True
    expected = {"fast": ("fast_dev_run", True), "limit": ("max_epochs", 3), "overfit": ("max_epochs", 20),
                "profile": ("limit_train_batches", 10), "default": ("max_epochs", 1)}[preset]
    assert cfg.trainer[expected[0]] == expected[1]


def test_debug_fast_runs(tmp_path):
    tiny = [o for o in FAST if not o.startswith("experiment=")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=fast", "data=synthetic", *tiny,
                                                      f"paths.output_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    s = read_summary(cfg)
    assert s["status"] == "finished" and s["global_step"] == 1 and 0.0 <= metrics["val/acc"] <= 1.0
    assert not (tmp_path / "run" / "checkpoints").exists()
