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

CONF = Path(__file__).resolve().parent.parent / "conf"


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
    from experiments.data import DataUnavailable

    dm = VOCDataModule(source="voc2007", download_dir=str(tmp_path), download=False)
    with pytest.raises(DataUnavailable, match="Pascal VOC 2007"):
        dm.load()


@pytest.mark.parametrize("conv,roi_pool", [("deformable", "deformable")])
def test_fast_dev_run_detection_and_report(tmp_path, conv, roi_pool, capsys):
    root = write_voc_folder(tmp_path / "voc", n_images=6, size=64)
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=detection", f"conv={conv}", f"model.roi_pool={roi_pool}", f"data.root={root}",
            "logger=csv", "trainer=cpu", "backend=reference", "cpu_threads=null", "model.image_size=64",
            "data.batch_size=2", "data.eval_batch_size=2", "trainer.fast_dev_run=true",
            "model.net.anchor_sizes=[16,32]", "model.net.out_channels=32", "model.net.representation_size=32",
            f"paths.output_dir={out}"])
    metrics = train(cfg)
    assert "val/map_50" in metrics and 0.0 <= metrics["val/map_50"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["detection"]["roi_pool"] == roi_pool
    assert summary["model"]["params"] > 0 and summary["model"]["flops"] > 0
    assert summary["timing"]["step_time_ms"] is not None
    assert len(list((out / "predictions").glob("*.png"))) >= 1
    # the report: two fake seeds of the same configuration beside the real run
    for seed, m in ((1, 0.2), (2, 0.4)):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        s = dict(summary, seed=seed, detection=dict(summary["detection"], map_50=m, map=m / 2))
        (d / "summary.json").write_text(json.dumps(s))
    from experiments.report import main as report_main

    assert report_main(["detection", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert f"| {conv} | {roi_pool} |" in table and "±" in table and "| 3 |" in table
