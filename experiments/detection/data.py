"""Pascal-VOC-format object detection data: a folder of images + one XML annotation per image.

Layouts found under ``root`` (first match wins):

* images in ``images/`` or ``JPEGImages/``; annotations in ``annotations/`` or ``Annotations/``;
* the split: ``ImageSets/Main/{train,val,test}.txt`` (VOC), else ``*train*labels.csv`` /
  ``*test*labels.csv`` anywhere under root (the raccoon set's author split, by their ``filename``
  column), else a seeded random split of ``val_fraction``.

``source: voc2007`` uses torchvision's ``VOCDetection`` (trainval / test) instead, downloaded into
``download_dir`` when ``download: true`` (a clear ``DataUnavailable`` error offline).

Images are decoded once, resized to ``image_size`` x ``image_size`` (boxes scaled with them) and held
in memory as uint8; training adds a random horizontal flip (boxes mirrored). Batches are lists:
``(images: list[float (3, S, S) in [0, 1]], targets: list[dict(boxes (L, 4) xyxy float, labels (L,)
int64 from 1, orig_size (2,) int64: the image's (H, W) before resizing)])``, torchvision's detection
format (label 0 is the background; ``orig_size`` is only used to draw predictions undistorted).
"""
from __future__ import annotations

import csv
import logging
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from experiments.classification.data.cifar import DataUnavailable

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


# ------------------------------------------------------------------------------------- annotations
def parse_voc_xml(path: str | Path) -> dict[str, Any]:
    """One VOC annotation -> dict(filename, width, height, objects=[dict(name, box=(x1, y1, x2, y2),
    difficult)]). Raises ValueError naming the file when it is not valid VOC XML."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(f"malformed VOC annotation {path}: {err}") from err
    if root.tag != "annotation":
        raise ValueError(f"malformed VOC annotation {path}: root element is <{root.tag}>, expected <annotation>")
    try:
        filename = (root.findtext("filename") or "").strip() or path.stem + ".jpg"
        size = root.find("size")
        width = int(float(size.findtext("width"))) if size is not None and size.findtext("width") else None
        height = int(float(size.findtext("height"))) if size is not None and size.findtext("height") else None
        objects = []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if not name or bb is None:
                raise ValueError("an <object> lacks <name> or <bndbox>")
            box = tuple(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            if box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"box {box} has xmax < xmin or ymax < ymin")
            objects.append({"name": name, "box": box, "difficult": int(float(obj.findtext("difficult") or 0))})
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"malformed VOC annotation {path}: {err}") from err
    return {"filename": filename, "width": width, "height": height, "objects": objects}


# ------------------------------------------------------------------------------------- transforms
def resize(image: torch.Tensor, boxes: torch.Tensor, size: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a (C, H, W) image to ``size`` (int: square) and scale xyxy boxes with it."""
    oh, ow = (size, size) if isinstance(size, int) else tuple(size)
    h, w = image.shape[-2:]
    dtype = image.dtype
    out = F.interpolate(image[None].float(), size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0]
    if dtype == torch.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=boxes.dtype)
    return out, boxes * scale


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a (C, H, W) image left-right and its xyxy boxes (x -> W - x)."""
    w = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return image.flip(-1), flipped


def _decode(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception:  # noqa: BLE001 - formats torchvision.io cannot read
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as img:
                return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        except Exception as err:  # noqa: BLE001 - name the file (decoder errors do not)
            from experiments.classification.data.cifar import CorruptImage

            raise CorruptImage(f"cannot decode image {path}: {type(err).__name__}: {err}") from err


# ------------------------------------------------------------------------------------- dataset
class DetectionDataset(Dataset):
    """In-memory uint8 images (already resized) with boxes / labels; ``flip`` = train augmentation."""

    def __init__(self, images: list[torch.Tensor], targets: list[dict], flip: bool = False, names=None):
        self.images, self.targets, self.flip, self.names = images, targets, flip, names or []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img, tgt = self.images[i], self.targets[i]
        boxes = tgt["boxes"]
        if self.flip and random.random() < 0.5:
            img, boxes = hflip(img, boxes)
        out = {"boxes": boxes.clone(), "labels": tgt["labels"].clone()}
        if "orig_size" in tgt:  # (H, W) before the square resize: predictions are drawn at this aspect ratio
            out["orig_size"] = tgt["orig_size"].clone()
        return img.float() / 255.0, out


def collate(batch):
    """List of (image, target) -> (list of images, list of targets)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _split_from_csv(root: Path) -> dict[str, set[str]] | None:
    found = {}
    for split, pattern in (("train", "*train*labels*.csv"), ("val", "*test*labels*.csv")):
        files = sorted(root.rglob(pattern))
        if not files:
            return None
        with open(files[0], newline="") as fh:
            found[split] = {Path(row["filename"]).stem for row in csv.DictReader(fh) if row.get("filename")}
    return found


def _split_from_imagesets(root: Path) -> dict[str, set[str]] | None:
    sets = root / "ImageSets" / "Main"
    train, val = sets / "train.txt", next((sets / n for n in ("test.txt", "val.txt") if (sets / n).is_file()), None)
    if not train.is_file() or val is None:
        return None
    read = lambda p: {ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()}
    return {"train": read(train), "val": read(val)}


class VOCDataModule(L.LightningDataModule):
    """Detection data in Pascal VOC format (see the module docstring)."""

    def __init__(self, root: str | None = None, source: str = "folder", classes: Sequence[str] | None = None,
                 image_size: int = 320, batch_size: int = 4, eval_batch_size: int | None = None,
                 augment: bool = True, val_fraction: float = 0.2, max_train_images: int | None = None,
                 max_val_images: int | None = None, download_dir: str | None = None, download: bool = True,
                 keep_difficult: bool = False, num_workers: int = 0, seed: int = 0, name: str | None = None):
        super().__init__()
        if source not in ("folder", "voc2007"):
            raise ValueError(f"source must be 'folder' or 'voc2007', got {source!r}")
        self.root = Path(root).expanduser() if root else None
        self.source, self.image_size, self.batch_size = source, int(image_size), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.augment, self.val_fraction, self.seed = augment, val_fraction, seed
        self.max_train_images, self.max_val_images = max_train_images, max_val_images
        self.download_dir, self.download, self.keep_difficult = download_dir, download, keep_difficult
        self.num_workers, self.name = num_workers, name
        self.classes: list[str] = list(classes) if classes else []
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.info: dict[str, Any] | None = None

    # -- loading ------------------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        if self.info is not None:
            return self.info
        if self.source == "voc2007":
            train, val = self._load_voc2007()
            name, src = "voc2007", f"torchvision VOCDetection in {self.download_dir}"
        else:
            if self.root is None:
                raise DataUnavailable("data.root must point at a VOC-format folder (images + XML annotations), "
                                      "e.g. data.root=data/raccoon")
            train, val = self._load_folder(self.root)
            name, src = self.name or self.root.name, str(self.root)
        self.train_set = self._build(train, flip=self.augment)
        self.val_set = self._build(val, flip=False)
        self.info = {"name": name, "source": src, "synthetic": False, "fallback": False,
                     "classes": list(self.classes), "train_images": len(self.train_set),
                     "val_images": len(self.val_set), "image_size": self.image_size}
        log.info("detection data %s: %d train / %d val images, classes %s", name, len(self.train_set),
                 len(self.val_set), self.classes)
        return self.info

    @property
    def num_classes(self) -> int:
        """Including the background (label 0)."""
        return len(self.classes) + 1

    def _load_folder(self, root: Path):
        if not root.is_dir():
            raise DataUnavailable(f"detection data folder {root} does not exist")
        img_dir = _find_dir(root, ("images", "JPEGImages"))
        ann_dir = _find_dir(root, ("annotations", "Annotations"))
        if img_dir is None or ann_dir is None:
            raise DataUnavailable(f"{root} must hold images/ (or JPEGImages/) and annotations/ (or Annotations/)")
        records = [parse_voc_xml(p) for p in sorted(ann_dir.glob("*.xml"))]
        if not records:
            raise DataUnavailable(f"no *.xml annotations in {ann_dir}")
        items = []
        for rec in records:
            path = img_dir / rec["filename"]
            if not path.is_file():
                matches = [p for p in img_dir.glob(Path(rec["filename"]).stem + ".*")
                           if p.suffix.lower() in IMAGE_EXTENSIONS]
                if not matches:
                    raise DataUnavailable(f"image {rec['filename']} of an annotation is missing from {img_dir}")
                path = matches[0]
            items.append((path, rec))
        split = _split_from_imagesets(root) or _split_from_csv(root)
        if split is not None:
            train = [it for it in items if it[0].stem in split["train"]]
            val = [it for it in items if it[0].stem in split["val"]]
        else:
            order = list(range(len(items)))
            random.Random(self.seed).shuffle(order)
            n_val = max(1, int(round(self.val_fraction * len(items))))
            val = [items[i] for i in sorted(order[:n_val])]
            train = [items[i] for i in sorted(order[n_val:])]
        if not self.classes:
            self.classes = sorted({o["name"] for _, r in items for o in r["objects"]})
        return self._limit(train, self.max_train_images), self._limit(val, self.max_val_images)

    @staticmethod
    def _limit(items, n):
        return items[:n] if n else items

    def _load_voc2007(self):
        from torchvision.datasets import VOCDetection

        root = Path(self.download_dir or "data")
        sets = {}
        for split, image_set in (("train", "trainval"), ("val", "test")):
            try:
                ds = VOCDetection(str(root), year="2007", image_set=image_set, download=self.download)
            except Exception as err:  # noqa: BLE001 - network errors, missing / corrupt archives
                raise DataUnavailable(
                    f"Pascal VOC 2007 ({image_set}) is not in {root} and could not be downloaded "
                    f"({type(err).__name__}: {err}). Download it with network access, or point data.root at a "
                    f"VOC-format folder with data.source=folder.") from err
            voc_root = Path(ds.images[0]).parent.parent if len(ds) else root
            items = []
            for img_path, ann_path in zip(ds.images, ds.annotations):
                items.append((Path(img_path), parse_voc_xml(ann_path)))
            sets[split] = items
            del voc_root
        if not self.classes:
            self.classes = sorted({o["name"] for _, r in sets["train"] for o in r["objects"]})
        return (self._limit(sets["train"], self.max_train_images), self._limit(sets["val"], self.max_val_images))

    def _build(self, items, flip: bool) -> DetectionDataset:
        index = {c: i + 1 for i, c in enumerate(self.classes)}
        images, targets, names = [], [], []
        for path, rec in items:
            img = _decode(path)
            orig_size = torch.tensor(img.shape[-2:], dtype=torch.int64)
            objs = [o for o in rec["objects"] if o["name"] in index and (self.keep_difficult or not o["difficult"])]
            boxes = torch.tensor([o["box"] for o in objs], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([index[o["name"]] for o in objs], dtype=torch.int64)
            img, boxes = resize(img, boxes, self.image_size)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, self.image_size)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, self.image_size)
            images.append(img)
            targets.append({"boxes": boxes, "labels": labels, "orig_size": orig_size})
            names.append(path.name)
        return DetectionDataset(images, targets, flip=flip, names=names)

    # -- Lightning -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.load()

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, collate_fn=collate,
                          num_workers=self.num_workers, generator=g, drop_last=len(self.train_set) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate,
                          num_workers=self.num_workers)


def write_voc_folder(root: str | Path, n_images: int = 8, size: int = 64, classes=("box", "disc"), seed: int = 0,
                     width: int | None = None) -> Path:
    """Generate a tiny VOC-format set (PNG images with bright rectangles / discs + XMLs) for tests.
    Images are ``size`` px high and ``width`` (default ``size``) px wide."""
    from torchvision.io import write_png

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    height, width = size, width or size
    small = min(height, width)
    for i in range(n_images):
        img = (torch.rand(3, height, width, generator=g) * 60).to(torch.uint8)
        objs = []
        for j in range(1 + i % 2):
            w, h = (int(v) for v in torch.randint(small // 4, small // 2, (2,), generator=g))
            x1 = int(torch.randint(0, width - w, (1,), generator=g))
            y1 = int(torch.randint(0, height - h, (1,), generator=g))
            cls = classes[(i + j) % len(classes)]
            img[:, y1:y1 + h, x1:x1 + w] = 200 if cls == classes[0] else 120
            objs.append((cls, x1, y1, x1 + w, y1 + h))
        write_png(img, str(root / "images" / f"img{i}.png"))
        body = "".join(f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                       f"<xmax>{x}</xmax><ymax>{y}</ymax></bndbox></object>" for c, a, b, x, y in objs)
        (root / "annotations" / f"img{i}.xml").write_text(
            f"<annotation><filename>img{i}.png</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>")
    return root
