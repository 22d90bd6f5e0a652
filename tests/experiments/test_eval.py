"""eval.py: a checkpoint validated (and tested) without training, with its own summary.json and W&B run.
CPU only, tiny synthetic data, no network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.eval import evaluate
from experiments.train import train

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
# the model and data of tests/experiments/test_experiments.py's FAST runs, without experiment=smoke (train only)
TINY = ["data=synthetic", "logger=csv", "trainer=cpu", "backend=reference", "cpu_threads=null",
        "model.net.width=4", "model.net.depth=8", "data.synthetic_train_size=64", "data.synthetic_val_size=32",
        "data.batch_size=16", "data.eval_batch_size=32", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A 2-step training run's last checkpoint and final metrics."""
    out = tmp_path_factory.mktemp("train") / "run"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                                                      f"paths.output_dir={out}"])
    from layers import get_backend, set_backend

    before = get_backend()
    metrics = train(cfg)
    set_backend(before)  # train() set it from the run's config
    return out / "checkpoints" / "last.ckpt", metrics


def eval_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="eval", overrides=[*TINY, f"paths.output_dir={tmp_path / 'eval'}", *overrides])


def test_eval_py_validates_and_tests_a_checkpoint(trained, tmp_path):
    """`python eval.py ckpt_path=...`: the checkpoint's val/acc as training measured it, a test pass, its own
    summary.json and an offline W&B run (job_type eval, exit code 0); the training run folder is untouched."""
    ckpt, train_metrics = trained
    before = sorted(p.name for p in ckpt.parent.parent.iterdir())
    out = tmp_path / "evalrun"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "CONVLAB_BACKEND": "reference"}
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env[var] = str(tmp_path / "wandb_home")
    cmd = [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={ckpt}", *TINY, "logger=many",
           "stages=[validate,test]", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "finished" and s["task_name"] == "eval"
    assert s["checkpoint"]["path"] == str(ckpt) and s["checkpoint"]["epoch"] == 0
    assert s["checkpoint"]["global_step"] == 2
    assert s["metrics"]["val/acc"] == pytest.approx(train_metrics["val/acc"], abs=1e-6)
    assert s["metrics"]["val/loss"] == pytest.approx(train_metrics["val/loss"], rel=1e-5)
    assert 0.0 <= s["metrics"]["test/acc"] <= 1.0 and "val/acc_best" not in s["metrics"]
    assert s["dataset"]["synthetic"] is True and s["model"]["params"] > 0 and s["model"]["flops"] > 0
    assert "evaluated" in proc.stdout.strip().splitlines()[-1]
    from test_experiments import _wandb_run_info  # pytest puts this folder (tests/experiments/) on sys.path

    (wandb_run,) = out.glob("wandb/offline-run-*")
    run = _wandb_run_info(wandb_run)
    assert run["id"] == s["wandb"]["id"] and run["job_type"] == "eval" and run["exits"] == [0]
    assert run["config"]["ckpt_path"] == str(ckpt) and "config" not in run["config"]
    assert sorted(p.name for p in ckpt.parent.parent.iterdir()) == before


def test_eval_needs_an_existing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="eval.py needs a checkpoint: ckpt_path="):
        evaluate(eval_cfg(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        evaluate(eval_cfg(tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    assert not (tmp_path / "eval").exists()


def test_eval_names_a_model_mismatch(trained, tmp_path):
    ckpt, _ = trained
    with pytest.raises(ValueError, match=r"does not fit the configured model \(conv=grouped"):
        evaluate(eval_cfg(tmp_path, f"ckpt_path={ckpt}", "conv=grouped", "conv.groups=2"))


def test_eval_run_folder_is_its_own():
    """`python eval.py` writes outputs/eval/runs/..., not the checkpoint's run folder (as resuming does),
    and its run folder resolves without a ckpt_path (the error then comes from evaluate, by name)."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        given = compose(config_name="eval", overrides=["ckpt_path=/x/runs/old/checkpoints/last.ckpt"],
                        return_hydra_config=True)
        missing = compose(config_name="eval", return_hydra_config=True)
    for cfg in (given, missing):
        run = OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]
        assert "/outputs/eval/runs/" in run and "/x/runs/old" not in run
        assert cfg.hydra.output_subdir == ".hydra"
