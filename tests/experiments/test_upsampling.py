"""Upsampling study (experiment=upsampling): the checkerboard measure on synthetic patterns, the
bicubic (input, target) pairs, the composed configs of every conf/upsample/ option, a short run of
the real train() on generated images (summary, figures, samples) and the report on a fake multirun
folder. CPU only, tiny images and widths, no network, no data set on disk."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.superres import SuperResDataModule, bicubic_downsample, checkerboard_energy, periodic_mask
from experiments.train import train

CONF = Path(__file__).resolve().parents[2] / "conf"
UPSAMPLE_OPTIONS = sorted(p.stem for p in (CONF / "upsample").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _grid(n: int = 32):
    i = torch.arange(n, dtype=torch.float64)
    return i[:, None], i[None, :]


class TestCheckerboardEnergy:
    def test_periodic_mask_bins(self):
        mask = periodic_mask(32, 32, r=2, radius=1)
        assert int(mask.sum()) == 27  # three 3x3 neighbourhoods
        assert mask[16, 16] and mask[0, 16] and mask[16, 0] and mask[31, 15] and mask[1, 17]
        assert not mask[0, 0] and not mask[1, 1] and not mask[8, 8]
        mask3 = periodic_mask(24, 24, r=3, radius=0)
        assert sorted(map(tuple, mask3.nonzero().tolist())) == [
            (0, 8), (0, 16), (8, 0), (8, 8), (8, 16), (16, 0), (16, 8), (16, 16)]
        with pytest.raises(ValueError, match="not a multiple of r=2"):
            periodic_mask(31, 32, r=2)

    def test_checkerboard_vs_smooth_images(self):
        y, x = _grid()
        checker = ((y + x) % 2).expand(3, 32, 32)[None]            # the (pi, pi) pattern
        stripes = (x % 2).expand(3, 32, 32)[None]                    # (0, pi)
        smooth = (0.5 + 0.3 * torch.sin(2 * torch.pi * y / 32) * torch.cos(2 * torch.pi * x / 16)
                  + 0.1 * x / 31).expand(3, 32, 32)[None]           # low frequencies and a ramp
        assert checkerboard_energy(checker).item() > 0.999
        assert checkerboard_energy(stripes).item() > 0.999
        assert checkerboard_energy(smooth).item() < 1e-6
        assert checkerboard_energy(torch.full((1, 3, 32, 32), 0.3)).item() == 0.0  # no energy at all
        # white noise: energy spread evenly, so about the mask's share of the bins (27 / 1024)
        noise = checkerboard_energy(torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        assert abs(noise.mean().item() - 27 / 1024) < 0.004
        # a faint checkerboard over the smooth image: the measure grows with its amplitude
        values = [checkerboard_energy(smooth + a * (checker - 0.5)).item() for a in (0.0, 0.01, 0.03, 0.1)]
        assert values == sorted(values) and values[1] > 100 * values[0] and values[-1] > 0.03

    def test_shapes_and_bad_input(self):
        out = checkerboard_energy(torch.rand(5, 1, 16, 24), r=2, radius=0)
        assert out.shape == (5,) and out.dtype == torch.float64 and ((out >= 0) & (out <= 1)).all()
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            checkerboard_energy(torch.rand(3, 32, 32))


def test_pairs_are_bicubic_downsampled_targets():
    dm = SuperResDataModule(scale=2, source="synthetic", synthetic_train_size=16, synthetic_val_size=8,
                            batch_size=4, eval_batch_size=8)
    info = dm.load()
    assert info["synthetic"] and info["name"] == "synthetic"  # the labelled stand-in, as classification's
    batch = next(iter(dm.val_dataloader()))
    lr, hr = dm.on_after_batch_transfer(batch, 0)
    assert lr.shape == (8, 3, 16, 16) and hr.shape == (8, 3, 32, 32) and hr.dtype == torch.float32
    torch.testing.assert_close(hr, batch[0].float() / 255)
    expected = F.interpolate(hr, size=(16, 16), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    torch.testing.assert_close(lr, expected)
    assert lr.min() >= 0 and lr.max() <= 1
    with pytest.raises(ValueError, match="not a multiple of scale=3"):
        bicubic_downsample(hr, 3)
    with pytest.raises(ValueError, match="data.scale"):
        SuperResDataModule(scale=0, source="synthetic")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=upsampling", *overrides])


@pytest.mark.parametrize("option", [*UPSAMPLE_OPTIONS, "subpixel+icnr"])
def test_config_composes_and_builds_every_upsampling_layer(option):
    overrides = ["upsample=subpixel", "upsample.icnr=true"] if option == "subpixel+icnr" else [f"upsample={option}"]
    cfg = _compose(*overrides)
    assert cfg.task_name == "upsampling" and cfg.optimized_metric == "val/psnr"
    assert cfg.data._target_.endswith("SuperResDataModule") and cfg.data.scale == 2
    assert cfg.model.net.upsample == cfg.upsample and cfg.model.net.scale == 2
    if not torch.cuda.is_available():  # the CPU preset: a step budget, the time cap only a safety net
        assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches,
                cfg.data.batch_size) == (3, 60, 4, 64)
    net = instantiate(cfg.model.net)
    expected = "subpixel_icnr" if option in ("subpixel_icnr", "subpixel+icnr") else option
    assert net.upsample_label == expected and net.upsample_variant == cfg.upsample.variant
    from layers import use_backend

    with use_backend("reference"):  # the shape check needs no Triton interpreter
        assert net(torch.rand(2, 3, 16, 16)).shape == (2, 3, 32, 32)
    if expected == "subpixel_icnr":  # ICNR: the r^2 sub-pixel kernels of an output channel are equal
        w = net.upsample.weight.view(-1, 4, *net.upsample.weight.shape[1:])
        assert torch.equal(w, w[:, :1].expand_as(w))


def test_upsampling_run_writes_metrics_figures_and_report(tmp_path, capsys):
    """One short train() of experiment=upsampling (sub-pixel + ICNR, width 8, generated images), then the
    report on a fake multirun folder: this run, copies relabelled as the other layers and seeds, and a
    failed run that is left out and named."""
    out = tmp_path / "sweep" / "0_subpixel_s0"
    cfg = _compose("upsample=subpixel", "upsample.icnr=true", "data.source=synthetic",
                   "data.synthetic_train_size=32", "data.synthetic_val_size=16", "data.batch_size=8",
                   "data.eval_batch_size=8", "logger=csv", "trainer=cpu", "backend=reference", "cpu_threads=null",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
                   "trainer.log_every_n_steps=1",
                   "model.net.width=8", "model.net.depth=1", "model.num_examples=2", "model.throughput_batch=4",
                   "model.throughput_reps=1", f"paths.output_dir={out}")
    metrics = train(cfg)
    for key in ("val/psnr", "val/ssim", "val/psnr_bicubic", "val/checkerboard", "val/checkerboard_target"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    assert 0 <= metrics["val/checkerboard"] <= 1 and -1 <= metrics["val/ssim"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    up = summary["upsampling"]
    assert summary["status"] == "finished" and summary["dataset"]["synthetic"]
    assert summary["run_name"] == "sr-subpixel_icnr-s0-synthetic" and "subpixel_icnr" in summary["config"]["tags"]
    assert (up["label"], up["variant"], up["icnr"], up["val_images"]) == ("subpixel_icnr", "subpixel", True, 16)
    assert up["psnr"] == pytest.approx(metrics["val/psnr"]) and up["history"][0]["epoch"] == 0
    assert summary["model"]["macs"] * 2 == summary["model"]["flops"] > 0 and summary["model"]["params"] > 0
    assert up["inference"]["throughput"] > 0 and summary["timing"]["throughput"] > 0
    assert len(up["mean_log_spectrum"]["output"]) == 32 and len(up["mean_log_spectrum"]["output"][0]) == 32
    assert (out / "upsampling" / "examples_epoch_000.png").stat().st_size > 10_000
    samples = torch.load(out / "upsampling" / "samples.pt", weights_only=True)
    assert samples["input"].shape == (2, 3, 16, 16) and samples["output"].shape == (2, 3, 32, 32)

    # a fake sweep: the run above, copies as other layers / seeds (with the summary's paths dropped, so
    # the report finds samples.pt beside each summary.json), and a failed run
    sweep = tmp_path / "sweep"
    for i, (label, variant, seed, psnr) in enumerate([("subpixel_icnr", "subpixel", 1, 25.0),
                                                      ("transposed", "transposed", 0, 24.0),
                                                      ("resize_conv", "resize_conv", 0, 26.0)], start=1):
        d = sweep / f"{i}_{label}_s{seed}"
        shutil.copytree(out / "upsampling", d / "upsampling")
        s = copy.deepcopy(summary)
        s["seed"] = seed
        s["upsampling"].update(label=label, variant=variant, icnr=label.endswith("icnr"), psnr=psnr,
                               samples=None, checkerboard=0.002 * i)
        (d / "summary.json").write_text(json.dumps(s))
    failed = sweep / "4_subpixel_s0"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "task_name": "upsampling",
                                                     "error": "RuntimeError: boom"}))
    from experiments.report import main as report_main

    capsys.readouterr()
    assert report_main(["upsampling", str(sweep), "--out", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert "failed" in err and "4_subpixel_s0" in err and "boom" in err
    table = (tmp_path / "report" / "report.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| upsampling")]
    assert [line.split(" | ")[0][2:] for line in body] == ["transposed", "subpixel_icnr", "resize_conv"]
    assert "| subpixel_icnr | 2 |" in table and "±" in body[1] and "±" not in body[0]
    assert "bicubic interpolation PSNR" in table and "![examples and mean log spectra](upsampling.png)" in table
    assert (tmp_path / "report" / "upsampling.png").stat().st_size > 20_000
    rows = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["n"] for r in rows] == [1, 2, 1] and rows[0]["macs"] == summary["model"]["macs"]
