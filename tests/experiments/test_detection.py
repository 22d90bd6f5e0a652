"""Detection experiments: VOC parsing (incl. malformed XML), box-preserving transforms, the data
module's split, a fast_dev_run of experiment=detection on generated images + XMLs, and the report.
CPU only, tiny images, the PyTorch reference backend, no network, no archive needed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.detection.data import VOCDataModule, collate, hflip, parse_voc_xml, resize, write_voc_folder
from experiments.train import train

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_parse_voc_xml_and_malformed_file(tmp_path):
    root = write_voc_folder(tmp_path / "voc", n_images=2, size=32)
    rec = parse_voc_xml(root / "annotations" / "img1.xml")
    assert rec["filename"] == "img1.png" and rec["width"] == 32 and len(rec["objects"]) == 2
    assert all(o["box"][2] > o["box"][0] for o in rec["objects"])
    bad = tmp_path / "broken.xml"
    bad.write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin>")
    with pytest.raises(ValueError, match="broken.xml"):
        parse_voc_xml(bad)
    nobox = tmp_path / "nobox.xml"
    nobox.write_text("<annotation><object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="malformed VOC annotation .*nobox.xml"):
        parse_voc_xml(nobox)
    # an image that cannot be decoded is named
    (root / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(ValueError, match="cannot decode image .*img1.png"):
        VOCDataModule(root=str(root), image_size=32).load()
    # a malformed file inside a data set names the file
    (root / "annotations" / "img0.xml").write_text("not xml")
    with pytest.raises(ValueError, match="img0.xml"):
        VOCDataModule(root=str(root), image_size=32).load()


def test_flip_and_resize_keep_boxes_on_the_object():
    img = torch.zeros(3, 20, 30, dtype=torch.uint8)
    img[:, 4:10, 3:12] = 255  # object: x 3..12, y 4..10
    boxes = torch.tensor([[3.0, 4.0, 12.0, 10.0]])
    f_img, f_boxes = hflip(img, boxes)
    assert torch.equal(f_boxes, torch.tensor([[18.0, 4.0, 27.0, 10.0]]))
    assert f_img[:, 4:10, 18:27].min() == 255 and f_img.sum() == img.sum()
    r_img, r_boxes = resize(img, boxes, 60)  # x * 2, y * 3
    torch.testing.assert_close(r_boxes, torch.tensor([[6.0, 12.0, 24.0, 30.0]]))
    x1, y1, x2, y2 = r_boxes[0].long().tolist()
    assert r_img[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1].float().mean() > 250  # inside the box: the object
    assert r_img[:, :y1 - 1].float().mean() < 5


def test_datamodule_split_classes_and_collate(tmp_path):
    root = write_voc_folder(tmp_path / "voc", n_images=6, size=48)
    (root / "data").mkdir()
    (root / "data" / "train_labels.csv").write_text("filename,class\nimg0.png,box\nimg1.png,box\nimg2.png,disc\n"
                                                     "img3.png,box\n")
    (root / "data" / "test_labels.csv").write_text("filename,class\nimg4.png,box\nimg5.png,disc\n")
    dm = VOCDataModule(root=str(root), image_size=32, batch_size=2)
    info = dm.load()
    assert info["train_images"] == 4 and info["val_images"] == 2 and not info["synthetic"]
    assert dm.classes == ["box", "disc"] and dm.num_classes == 3
    images, targets = next(iter(dm.val_dataloader()))
    assert len(images) == 2 and images[0].shape == (3, 32, 32) and images[0].max() <= 1
    assert targets[0]["boxes"].shape[1] == 4 and targets[0]["labels"].min() >= 1
    assert targets[0]["boxes"].max() <= 32
    assert collate([]) == ([], [])


def test_voc2007_offline_is_a_clear_error(tmp_path):
    from experiments.classification.data import DataUnavailable

    dm = VOCDataModule(source="voc2007", download_dir=str(tmp_path), download=False)
    with pytest.raises(DataUnavailable, match="Pascal VOC 2007"):
        dm.load()


def _detection_cfg(root: Path, out: Path, conv: str, roi_pool: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[
            "experiment=detection", f"conv={conv}", f"model.roi_pool={roi_pool}", f"data.root={root}",
            "logger=csv", "trainer=cpu", "backend=reference", "cpu_threads=null", "model.image_size=64",
            "data.batch_size=2", "data.eval_batch_size=2", "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1", "model.num_prediction_images=2",
            "model.net.anchor_sizes=[16,32]", "model.net.out_channels=32", "model.net.representation_size=32",
            f"paths.output_dir={out}", *overrides])


@pytest.mark.parametrize("conv,roi_pool", [("deformable", "deformable")])
def test_detection_run_checkpoints_resume_predictions_and_report(tmp_path, conv, roi_pool, capsys):
    """Two epochs of experiment=detection on generated 48x96 images, resumed for a third: one prediction
    figure per epoch, a weights-only best checkpoint beside a full last.ckpt, the mAP history carried
    over the resume, and the report with its schedule and figure."""
    root = write_voc_folder(tmp_path / "voc", n_images=6, size=48, width=96)
    out = tmp_path / "run"
    cfg = _detection_cfg(root, out, conv, roi_pool, "trainer.max_epochs=2")
    metrics = train(cfg)
    assert "val/map_50" in metrics and 0.0 <= metrics["val/map_50"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["detection"]["roi_pool"] == roi_pool
    assert summary["model"]["params"] > 0 and summary["model"]["flops"] > 0
    assert summary["timing"]["step_time_ms"] is not None
    det = summary["detection"]
    assert [p.name for p in sorted((out / "predictions").glob("*.png"))] == ["epoch_000.png", "epoch_001.png"]
    assert [Path(p).name for p in det["predictions"]] == ["epoch_000.png", "epoch_001.png"]
    sched = det["schedule"]
    assert (sched["max_epochs"], sched["train_batches_per_epoch"], sched["batch_size"], sched["image_size"],
            sched["planned_steps"], sched["lr"], sched["scheduler"]) == (2, 1, 2, 64, 2, 0.01, "cosine")

    # checkpoints: the best holds the weights only; last.ckpt everything resuming needs
    ckpts = out / "checkpoints"
    (best,) = [p for p in ckpts.glob("epoch_*.ckpt")]
    assert summary["best"]["checkpoint"] == str(best)
    best_ckpt = torch.load(best, weights_only=False, map_location="cpu")
    last_ckpt = torch.load(ckpts / "last.ckpt", weights_only=False, map_location="cpu")
    assert "optimizer_states" not in best_ckpt and "lr_schedulers" not in best_ckpt and best_ckpt["state_dict"]
    assert last_ckpt["optimizer_states"] and last_ckpt["lr_schedulers"] and "loops" in last_ckpt
    assert best.stat().st_size < 0.7 * (ckpts / "last.ckpt").stat().st_size  # no optimizer momentum
    assert len(last_ckpt["detection_history"]) == 2

    # resume for a third epoch: same folder, the history continues, a third prediction figure
    resumed = _detection_cfg(root, out, conv, roi_pool, "trainer.max_epochs=3", f"ckpt_path={ckpts / 'last.ckpt'}",
                             "model.count_flops=false")  # (counted above; saves time)
    with pytest.warns(UserWarning):  # the learning-rate schedule now spans 3 epochs instead of 2
        train(resumed)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["global_step"] == 3
    assert [h["epoch"] for h in summary["detection"]["history"]] == [0, 1, 2]
    assert (out / "predictions" / "epoch_002.png").is_file() and (out / "predictions" / "epoch_000.png").is_file()
    assert len(list(ckpts.glob("epoch_*.ckpt"))) == 1  # still top-1 plus last

    # the report: two fake seeds of the same configuration beside the real run
    for seed, m in ((1, 0.2), (2, 0.4)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        history = [{"epoch": e, "map_50": m * (e + 1) / 3, "map": m / 6} for e in range(3)]
        s = dict(summary, seed=seed, detection=dict(summary["detection"], map_50=m, map=m / 2, history=history))
        (d / "summary.json").write_text(json.dumps(s))
    from experiments.report import main as report_main

    assert report_main(["detection", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert f"| {conv} | {roi_pool} |" in table and "±" in table and "| 3 |" in table
    assert "Schedule: 3 epochs x 1 batches of 2 images at 64 px" in table and "Completed: 3 epochs / 3 steps" in table
    assert "![mAP@0.5" in table and (tmp_path / "report" / "map.png").stat().st_size > 10_000


def test_prediction_figure_keeps_aspect_ratio_with_labels_and_legend():
    from experiments.detection.module import prediction_figure

    img = torch.rand(3, 64, 64)  # what the model saw: a 48x96 image squashed to 64x64
    target = {"boxes": torch.tensor([[8.0, 16.0, 24.0, 48.0]]), "labels": torch.tensor([1]),
              "orig_size": torch.tensor([48, 96])}
    pred = {"boxes": torch.tensor([[10.0, 14.0, 30.0, 50.0], [0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([2, 1]),
            "scores": torch.tensor([0.87, 0.1])}
    fig = prediction_figure([(img, pred, target)], ["box", "disc"], score_thresh=0.3, title="epoch 0")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape[:2] == (256, 512)  # 48x96 scaled to a 512 px long side
    gt_box, pred_box = ax.patches
    assert (gt_box.get_x(), gt_box.get_y(), gt_box.get_width(), gt_box.get_height()) == pytest.approx(
        (8 * 8, 16 * 4, 16 * 8, 32 * 4))  # x * 512/64, y * 256/64
    assert gt_box.get_edgecolor()[:3] != pred_box.get_edgecolor()[:3]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["box", "disc 0.87"] and all(t.get_fontsize() >= 9 for t in ax.texts)  # below 0.3: not drawn
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0].startswith("ground truth") and legend[1].startswith("prediction: class score")
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_last_checkpoint_follows_every_epoch(tmp_path):
    """Lightning 2.6 writes last.ckpt only where a top-k file was written: with a metric that never
    improves, LastEveryEpochCheckpoint still rewrites it after every epoch."""
    import lightning.pytorch as L

    from experiments.callbacks import LastEveryEpochCheckpoint

    class Flat(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w * batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/score", 0.5)  # never improves

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=1)
    ckpt = LastEveryEpochCheckpoint(dirpath=tmp_path, monitor="val/score", mode="max", save_top_k=1, save_last=True)
    trainer = L.Trainer(max_epochs=3, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(Flat(), data, data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False, map_location="cpu")
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert [p.name for p in tmp_path.glob("epoch*.ckpt")] == ["epoch=0-step=2.ckpt"]  # top-1: the first

