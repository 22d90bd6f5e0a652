"""Data errors of an ImageFolder CIFAR-10 copy: a corrupt image is named, and the decoded cache follows
edits of the image files. Images are generated here (tiny, JPEG); CPU only."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiments  # noqa: F401  (registers the config resolvers)
from experiments.classification.data import CIFAR10DataModule, CorruptImage
from experiments.classification.data.synthetic import make_synthetic
from experiments.train import train

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _write_jpeg(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, quality=95)


def make_imagefolder(root: Path, per_class: int = 2) -> Path:
    """``root/{train,test}/class<k>/<i>.jpg``: 10 classes of procedurally generated 32x32 images."""
    images, labels = make_synthetic(10 * per_class * 3, seed=5)
    counts: dict = {}
    for split in ("train", "test"):
        for img, label in zip(images, labels):
            k = int(label)
            if counts.get((split, k), 0) >= per_class:
                continue
            counts[(split, k)] = counts.get((split, k), 0) + 1
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            _write_jpeg(img, folder / f"{counts[(split, k)]:03d}.jpg")
    return root


def test_corrupt_jpeg_is_named_by_the_run(tmp_path):
    """`train.py data.root=<ImageFolder copy>` with one broken JPEG stops with an error naming the file."""
    root = make_imagefolder(tmp_path / "cifar10")
    broken = root / "train" / "class3" / "002.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x13\x37" * 40)  # a JPEG header, then junk
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=smoke", "backend=reference", "cpu_threads=null", "data.source=cifar10",
            f"data.root={root}", f"data.download_dir={tmp_path / 'dl'}", "data.download=false",
            "trainer.fast_dev_run=true", f"paths.output_dir={tmp_path / 'run'}"])
    with pytest.raises(CorruptImage, match=f"cannot decode image {broken}"):
        train(cfg)


def test_decoded_cache_follows_edited_images(tmp_path):
    """The cache is keyed on every file's name, size and mtime: an image edited in place (same name,
    same number of files) is decoded again instead of served stale from cache_train.pt."""
    root = make_imagefolder(tmp_path / "cifar10")
    dm = CIFAR10DataModule(root=str(root), download_dir=str(tmp_path / "dl"), download=False, fallback="error")
    dm.load()
    assert (root / "cache_train.pt").is_file()
    first = dm.train_x.clone()
    edited = root / "train" / "class0" / "001.jpg"
    _write_jpeg(torch.full((3, 32, 32), 255, dtype=torch.uint8), edited)  # a white image, same name
    st = edited.stat()
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse file-system clocks
    again = CIFAR10DataModule(root=str(root), download_dir=str(tmp_path / "dl"), download=False, fallback="error")
    again.load()
    changed = (again.train_x != first).flatten(1).any(1)
    assert int(changed.sum()) == 1  # exactly the edited image
    assert again.train_x[changed].float().mean() > 250  # and it is the new, white one
    # unchanged files: the cache is used (same key), and gives the same tensors
    third = CIFAR10DataModule(root=str(root), download_dir=str(tmp_path / "dl"), download=False, fallback="error")
    third.load()
    assert torch.equal(third.train_x, again.train_x)
