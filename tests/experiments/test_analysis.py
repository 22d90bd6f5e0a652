"""experiments.reports.analysis on real tiny runs (composed Hydra config, synthetic data, CSV logs): the chosen
metric and its direction, one row per run length, unfinished runs listed, std of one run shown as "-",
a missing path is an error, learning curves and the accuracy-vs-throughput plot are written."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.reports import analysis
from experiments.train import train

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAST = ["experiment=smoke", "backend=reference", "cpu_threads=null", "model.net.width=4", "model.net.depth=8",
        "data.synthetic_train_size=48", "data.synthetic_val_size=32", "data.batch_size=16",
        "data.eval_batch_size=32", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "callbacks=none"]


def _run(sweep: Path, name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*FAST, f"paths.output_dir={sweep / name}", *overrides])
    return train(cfg)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """standard x seeds 0, 1 (2 epochs), standard seed 0 for 1 epoch, and a dilated run that fails when
    its optimizer is built (a negative learning rate)."""
    from layers import get_backend, set_backend

    before = get_backend()
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    sweep = tmp_path_factory.mktemp("sweep")
    for name, extra in [("0_standard_s0", ["seed=0"]), ("1_standard_s1", ["seed=1"]),
                        ("3_standard_s0_short", ["seed=0", "trainer.max_epochs=1"])]:
        _run(sweep, name, "trainer.max_epochs=2", *extra)
    with pytest.raises(ValueError, match="learning rate"):
        _run(sweep, "4_dilated_failed", "conv=dilated", "model.optimizer.lr=-1")
    mp.undo()
    set_backend(before)  # train() set it from the runs' config
    return sweep


def _csv_column(run_dir: Path, column: str) -> list[float]:
    (path,) = run_dir.glob("csv/*/metrics.csv")
    with open(path, newline="") as fh:
        return [float(r[column]) for r in csv.DictReader(fh) if r[column]]


def test_metric_direction_and_header(sweep):
    summaries = analysis.load_summaries([sweep])
    loss_rows = analysis.table(summaries, "val/loss")
    acc_rows = analysis.table(summaries, "val/acc")
    (short,) = [r for r in loss_rows if r["steps"] == 3]
    assert "best val/loss (min)" in short and "best val/acc (max)" in acc_rows[0]
    # a val/loss table reports the smallest logged val/loss, not the best val/acc
    run = sweep / "3_standard_s0_short"
    assert short["best val/loss (min)"] == pytest.approx(min(_csv_column(run, "val/loss")))
    (short_acc,) = [r for r in acc_rows if r["steps"] == 3]
    assert short_acc["best val/acc (max)"] == pytest.approx(max(_csv_column(run, "val/acc")))
    assert short["from"] == "history"
    assert analysis.metric_mode("val/loss") == "min" and analysis.metric_mode("val/map_50") == "max"


def test_rows_by_length_unfinished_listed_and_single_run_std(sweep, capsys):
    assert analysis.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    rows = analysis.table(analysis.load_summaries([sweep]))
    standard = sorted((r for r in rows if r["variant"] == "standard"), key=lambda r: r["steps"])
    assert [(r["steps"], r["runs"]) for r in standard] == [(3, 1), (6, 2)]  # 1 and 2 epochs of 3 batches
    two = standard[1]
    per_run = [max(_csv_column(sweep / n, "val/acc")) for n in ("0_standard_s0", "1_standard_s1")]
    assert two["best val/acc (max)"] == pytest.approx(statistics.fmean(per_run))
    assert two["std"] == pytest.approx(statistics.stdev(per_run))
    assert standard[0]["std"] is None
    single = [line for line in out.splitlines() if line.startswith("| standard") and "| 3 |" in line]
    assert len(single) == 1 and "| - |" in single[0] and "0.0000" not in single[0]
    assert "different lengths" in out and "standard" in out.split("different lengths")[1].splitlines()[0]
    # the failed run is listed with its status and error, not averaged in
    listed = out.split("Not finished")[1]
    assert "failed" in listed and "Invalid learning rate" in listed and "4_dilated_failed" in listed
    assert [r for r in rows if r["variant"] == "dilated"] == []


def test_missing_path_or_metric_is_an_error(sweep, tmp_path, capsys):
    missing = tmp_path / "no_such_sweep"
    assert analysis.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err
    assert analysis.main([str(sweep), "--metric", "val/accuracy"]) == 1  # a metric no run logged
    err = capsys.readouterr().err
    assert "'val/accuracy'" in err and "val/acc" in err
    (tmp_path / "empty").mkdir()
    assert analysis.main([str(tmp_path / "empty")]) == 1
    assert "no summary.json" in capsys.readouterr().err


def test_out_writes_learning_curves_and_throughput_plot(sweep, tmp_path, capsys):
    from PIL import Image

    out_dir = tmp_path / "report"
    assert analysis.main([str(sweep), "--metric", "val/loss", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "results.csv", "learning_curves.png", "acc_vs_throughput.png", "acc_vs_flops.png"):
        assert f"wrote {out_dir / name}" in printed
    for name in ("learning_curves.png", "acc_vs_throughput.png"):
        with Image.open(out_dir / name) as img:
            assert img.size[0] > 300 and img.size[1] > 300
    assert "best val/loss (min)" in (out_dir / "report.md").read_text()
    # the curves are the mean and std over seeds of the logged values at each step
    data = analysis.curves(analysis.load_summaries([sweep]), "val/acc")
    (two,) = [d for d in data if d["row"]["variant"] == "standard" and d["row"]["runs"] == 2]
    assert set(two["series"]) == {"train/loss", "val/loss", "train/acc", "val/acc"}
    steps, mean, std = two["series"]["val/acc"]
    runs = [_csv_column(sweep / n, "val/acc") for n in ("0_standard_s0", "1_standard_s1")]
    assert steps == [2, 5] and len(runs[0]) == 2
    assert mean == pytest.approx([statistics.fmean(v) for v in zip(*runs)])
    assert std == pytest.approx([statistics.stdev(v) for v in zip(*runs)])


def test_learning_curves_from_wandb_offline_run(tmp_path, monkeypatch):
    """Without a CSV log (the default logger is W&B), the history comes from the W&B offline run file:
    the same values at the same steps as the CSV logger wrote beside it."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    _run(tmp_path, "run", "logger=many", "trainer.max_epochs=2")
    wandb.teardown()  # W&B's service writes the run file in the background
    (summary,) = analysis.load_summaries([tmp_path / "run"])
    from_csv = analysis.run_history(summary)
    from_wandb = analysis.wandb_history(tmp_path / "run", summary["wandb"]["id"])
    for key in ("val/acc", "val/loss", "train/loss_epoch", "train/acc"):
        assert [s for s, _ in from_wandb[key]] == [s for s, _ in from_csv[key]] and len(from_csv[key]) == 2, key
        assert [v for _, v in from_wandb[key]] == pytest.approx([v for _, v in from_csv[key]]), key
    for f in (tmp_path / "run" / "csv").rglob("metrics.csv"):
        f.unlink()
    assert analysis.run_history(summary)["val/acc"] == from_wandb["val/acc"]  # the fallback


def test_documented_commands_are_aliases_of_reports(sweep):
    """``python -m experiments.analysis`` (README), ``python -m experiments.report analysis`` and
    ``python -m experiments.reports analysis`` run the same report over the same runs; the dispatcher
    lists every report module."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outs = []
    for cmd in (["experiments.analysis"], ["experiments.report", "analysis"], ["experiments.reports", "analysis"]):
        proc = subprocess.run([sys.executable, "-m", *cmd, str(sweep)], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout)
    assert "| standard" in outs[0] and outs[0] == outs[1] == outs[2]
    proc = subprocess.run([sys.executable, "-m", "experiments.report"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert "studies: analysis, deep_roots, detection" in proc.stdout
