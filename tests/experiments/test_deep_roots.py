"""Deep Roots study: NiN / root multiply-adds match the paper, correlation + block-diagonality index on
synthetic responses, ZCA whitening, a fast_dev_run of experiment=deep_roots and the report. CPU, tiny."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.classification.models.nin import PAPER, NiN, conv_macs, root_groups
from experiments.roots import (CovarianceAccumulator, block_diagonality, correlation_matrix, correlations,
                               zca_matrix)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(autouse=True)
def _reference_backend():
    """PyTorch reference kernels: conftest turns on TRITON_INTERPRET on CPU, far too slow for NiN."""
    from layers import get_backend, set_backend

    before = get_backend()
    set_backend("reference")
    yield
    set_backend(before)


# ------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("root", sorted(PAPER))
def test_multiply_adds_match_the_paper(root):
    macs = conv_macs(NiN(root=root))
    assert round(macs["total"] / 1e6, 1) == PAPER[root]["macs_m"]


def test_root_groups_and_layers():
    assert [root_groups(r) for r in (0, 1, 2, 4, 8, 16, 32)] == [(1, 1), (1, 1), (2, 1), (4, 2), (8, 4), (16, 8),
                                                                  (32, 16)]
    from layers import Conv2d

    net = NiN(root=8)
    assert isinstance(net.conv2a.conv, Conv2d) and net.conv2a.conv.groups == 8 and net.conv3a.conv.groups == 4
    assert net.conv2b.conv.groups == 1 and net.conv1a.conv.groups == 1
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # root-32 is beyond the paper's table: 88.3M
    assert round(conv_macs(NiN(root=32))["total"] / 1e6, 1) == 88.3
    # FlopCounterMode on the reference backend agrees (2 FLOPs per multiply-add)
    from experiments.flops import count_flops

    assert count_flops(net) == 2 * conv_macs(net)["total"]


# ------------------------------------------------------------------------------------ correlation


def _block_responses(n: int, c1: int, c2: int, g: int, noise: float = 0.3, seed: int = 0):
    """x (n, c1), y (n, c2): channels of group k of both layers share the latent factor k."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, g, generator=gen, dtype=torch.float64)
    x = z.repeat_interleave(c1 // g, 1) + noise * torch.randn(n, c1, generator=gen, dtype=torch.float64)
    y = z.repeat_interleave(c2 // g, 1) + noise * torch.randn(n, c2, generator=gen, dtype=torch.float64)
    return x + 3.0, 2.0 * y - 1.0  # offsets / scales: correlation must not care


def test_correlation_matches_numpy_corrcoef():
    x, y = _block_responses(2000, 8, 12, 4)
    full = torch.corrcoef(torch.cat([x, y], 1).T)
    assert torch.allclose(correlation_matrix(x, y), full[:8, 8:].abs(), atol=1e-10)
    assert torch.allclose(correlation_matrix(x), full[:8, :8].abs(), atol=1e-10)
    # streaming over chunks == one shot
    acc = CovarianceAccumulator([8, 12])
    for i in range(0, 2000, 300):
        acc.update(x[i:i + 300], y[i:i + 300])
    assert torch.allclose(correlations(acc.covariance(), acc.blocks())[0], correlation_matrix(x, y), atol=1e-10)


@pytest.mark.parametrize("g", [2, 4, 8])
def test_block_index_block_diagonal_vs_random(g):
    x, y = _block_responses(20000, 32, 16, g)
    structured = block_diagonality(correlation_matrix(x, y), g)
    assert structured["index"] > 0.9 and structured["chance"] == pytest.approx(1 / g)
    gen = torch.Generator().manual_seed(1)
    rx, ry = torch.randn(4000, 32, generator=gen), torch.randn(4000, 16, generator=gen)
    random = block_diagonality(correlation_matrix(rx, ry), g)
    assert random["index"] == pytest.approx(1 / g, abs=0.06)
    intra = block_diagonality(correlation_matrix(x), g, exclude_diagonal=True)
    assert intra["index"] > 0.9 and intra["chance"] == pytest.approx((32 / g - 1) / 31)


def test_zca_whitening_gives_identity_intra_correlation():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    x = torch.randn(5000, 16, generator=gen, dtype=torch.float64) @ mix  # strongly correlated channels
    raw = correlation_matrix(x)
    assert (raw - torch.eye(16)).abs().max() > 0.3
    white = correlation_matrix(x, whiten=True, eps=1e-6)
    assert torch.allclose(white, torch.eye(16, dtype=white.dtype), atol=1e-3)
    # the ZCA matrix really whitens the samples
    w = zca_matrix(torch.cov(x.T), eps=1e-9)
    assert torch.allclose(torch.cov((x @ w).T), torch.eye(16, dtype=torch.float64), atol=1e-4)
    # whitening removes the correlation that is only shared within a layer
    y = x @ torch.randn(16, 8, generator=gen, dtype=torch.float64) + torch.randn(5000, 8, generator=gen,
                                                                                 dtype=torch.float64)
    assert correlation_matrix(x, y, whiten=True).shape == (16, 8)


# -------------------------------------------------------------------------------- run + report


def _cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[
            "experiment=deep_roots", "data=synthetic", "logger=csv", "trainer=cpu", "backend=reference",
            "cpu_threads=null", "data.synthetic_train_size=64", "data.synthetic_val_size=32", "data.batch_size=16",
            "data.eval_batch_size=32", "callbacks.deep_roots.num_images=16", "callbacks.deep_roots.batch_size=16",
            f"paths.output_dir={out}", *overrides])


def test_config_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=deep_roots", "model.net.root=8"],
                      return_hydra_config=True)
    assert cfg.model.net._target_ == "experiments.classification.models.nin.NiN" and cfg.model.net.root == 8
    assert cfg.run_name == "nin-root8-s0" and cfg.callbacks.deep_roots.layers == ["conv2c", "conv3a"]
    if not torch.cuda.is_available():
        assert cfg.trainer.limit_train_batches <= 20 and cfg.callbacks.deep_roots.num_images == 512


@pytest.mark.parametrize("override, message", [("conv=deformable", "does not take conv=deformable"),
                                               ("conv.groups=8", "does not take conv options")])
def test_conv_override_is_rejected(tmp_path, override, message):
    """NiN's convolutions are set by model.net.root: a conv= the run would ignore is an error, not a run
    that records a variant it never trained."""
    from hydra.errors import InstantiationException

    from experiments.train import train

    cfg = _cfg(tmp_path / "run", override, "trainer.fast_dev_run=true")
    with pytest.raises((ValueError, InstantiationException), match=message):  # Hydra wraps the callback's error
        train(cfg)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_heatmap_has_colour_bar_group_lines_and_full_title():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.roots import draw_heatmap, heatmap_title

    x, y = _block_responses(2000, 16, 16, g=4)
    mat = correlation_matrix(x, y)
    index = block_diagonality(mat, 4)
    title = heatmap_title("inter_whitened", ("conv2c", "conv3a"), index)
    assert title.startswith("inter-layer |corr|, conv2c (rows) x conv3a (cols), ZCA-whitened")
    assert f"{index['index']:.3f}" in title and "g=4" in title
    fig, ax = plt.subplots(layout="constrained")
    draw_heatmap(ax, mat, "inter_whitened", 4, title, labels=("conv2c", "conv3a"))
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert len(ax.lines) == 2 * 3  # 3 horizontal + 3 vertical lines between 4 blocks
    assert sorted({round(line.get_ydata()[0], 1) for line in ax.lines[::2]}) == [3.5, 7.5, 11.5]
    fig.canvas.draw()  # the title fits inside the figure (not clipped)
    box = ax.title.get_window_extent()
    assert box.y1 <= fig.bbox.y1 and box.x0 >= fig.bbox.x0 - 1 and box.x1 <= fig.bbox.x1 + 1
    plt.close(fig)


def test_fast_dev_run_and_report(tmp_path):
    from experiments.report import main as report_main
    from experiments.train import train

    runs = tmp_path / "runs"
    for root, seed in ((1, 0), (4, 0), (4, 1)):
        cfg = _cfg(runs / f"root{root}_s{seed}", f"model.net.root={root}", f"seed={seed}",
                   "trainer.fast_dev_run=true")
        metrics = train(cfg)
        assert 0.0 <= metrics["val/acc"] <= 1.0
        s = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
        d = s["deep_roots"]
        assert d["root"] == root and d["groups"] == (2 if root == 4 else 1)
        assert round(d["macs"] / 1e6, 1) == PAPER[root]["macs_m"] and d["params"] == s["model"]["params"]
        assert s["model"]["flops"] == 2 * d["macs"]
        assert set(d["index"]) == {"inter_raw", "inter_whitened", "intra_raw", "intra_whitened"}
        assert d["index"]["inter_raw"]["one_over_g"] == pytest.approx(1 / d["groups"])
        assert d["samples"] == 16 * 16 * 16  # 16 images x 16x16 pixels (conv3a upsampled to conv2c)
        # summary.json records the convolutions NiN built, not the config's conv group
        g2a, g3a = root_groups(root)
        assert s["conv"] == {"variant": "grouped" if root > 1 else "standard",
                             "groups": {"conv2a": g2a, "conv3a": g3a}, "set_by": f"model.net.root={root}"}
        out = Path(cfg.paths.output_dir) / "deep_roots"
        assert (out / "heatmaps.png").is_file() and (out / "inter_whitened.png").is_file()
        mats = torch.load(out / "correlations.pt")["matrices"]
        assert mats["inter_raw"].shape == (192, 192)

    report = tmp_path / "report"
    assert report_main(["deep_roots", str(runs), "--out", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert "root-4" in text and "123.4" in text and "92.02" in text and "n=2" not in text
    row = next(line for line in text.splitlines() if line.startswith("| root-4"))
    assert "| 2 |" in row  # two seeds
    assert (report / "heatmaps.png").is_file()
    assert json.loads((report / "results.json").read_text())["4"]["seeds"] == [0, 1]
