"""CIFAR-10 as in-memory uint8 tensors, with a clearly labelled synthetic fallback.

Where the images come from, in order:

1. ``root`` given: a local copy, either torchvision's format (``cifar-10-batches-py``, the folder
   itself or its parent) or an ImageFolder layout ``{train,test}/<class>/*.jpg|png`` (also looked for
   under ``root/cifar10``). ImageFolder copies are decoded once and cached as ``cache_{split}.pt``.
   A given root that does not exist or holds no copy is an error naming it (a typo must not train
   on synthetic data).
2. ``root`` unset: torchvision's copy under ``download_dir`` (``cifar-10-batches-py``), downloaded
   there on first use (with torchvision's progress bar) when ``download`` is true and the server
   answers within ``network_timeout`` seconds.
3. Otherwise (``root`` unset only), with ``fallback="synthetic"``, a warning is logged and the
   project's procedurally generated 10-class set is used; ``info["name"]`` is then ``"synthetic"``
   and the run is labelled so. ``fallback="error"`` raises instead.

The validation split is CIFAR-10's test set. Batches are augmented (random crop with padding 4,
horizontal flip) and normalised on the device in ``on_after_batch_transfer``.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import lightning.pytorch as L
import torch

from experiments.classification.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from experiments.classification.data.synthetic import make_synthetic
from experiments.classification.data.tensors import TensorBatchLoader, normalize, random_crop_flip

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


class DataUnavailable(RuntimeError):
    """CIFAR-10 is neither on disk nor downloadable."""


class CorruptImage(ValueError):
    """An image file of an ImageFolder copy cannot be decoded; the message names the file."""


# ------------------------------------------------------------------------------------------ locating


def host_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Runs in a daemon thread so a hanging DNS lookup cannot block the run for longer than ``timeout``.
    """
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def probe():
        try:
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def find_local_copy(root: str | os.PathLike) -> tuple[str, Path] | None:
    """``("torchvision", dir)`` or ``("imagefolder", dir)`` for a CIFAR-10 copy at or below ``root``."""
    root = Path(root).expanduser()
    for cand in (root, root / "cifar-10-batches-py", root / "cifar10", root / "cifar10" / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() and (cand / "test_batch").is_file():
            return "torchvision", cand
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return "imagefolder", cand
    return None


# ------------------------------------------------------------------------------------------- loading


def load_torchvision(batches_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(root=str(batches_dir.parent), train=train, download=False)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW uint8
    return images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes)


def _scan_imagefolder(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataUnavailable(f"no class folders in {split_dir}")
    files = []
    for label, cls in enumerate(classes):
        names = sorted(e.name for e in os.scandir(split_dir / cls)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        files.extend((split_dir / cls / name, label) for name in names)
    return classes, files


def _decode_pil(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def _decode_one(path: Path, decode_image=None, read_file=None, mode=None) -> torch.Tensor:
    """One image as uint8 (3, H, W); a file that cannot be decoded raises :class:`CorruptImage` naming it
    (the decoders' own errors do not say which file of a batch was broken)."""
    try:
        if decode_image is None:
            return _decode_pil(path)
        return decode_image(read_file(str(path)), mode=mode)
    except Exception as err:  # noqa: BLE001 - every decoder failure becomes one error naming the file
        raise CorruptImage(f"cannot decode image {path}: {type(err).__name__}: {err}. Replace or delete the "
                           "file (the decoded cache is rebuilt when files change)") from err


def _decode(paths: list[Path], size: int = 32, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, 3, size, size); torchvision.io's batched JPEG decoder where it exists, PIL otherwise.

    A file that cannot be decoded raises :class:`CorruptImage` with its path.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
    except ImportError:  # torchvision.io image decoding is deprecated (0.29) in favour of torchcodec
        decode_jpeg = decode_image = read_file = ImageReadMode = None
    mode = ImageReadMode.RGB if ImageReadMode is not None else None

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        imgs = None
        if decode_jpeg is not None and all(p.suffix.lower() in (".jpg", ".jpeg") for p in part):
            try:
                imgs = decode_jpeg([read_file(str(p)) for p in part], mode=mode)
            except Exception:  # noqa: BLE001 - decoded one by one below, to name the broken file
                imgs = None
        if imgs is None:
            imgs = [_decode_one(p, decode_image, read_file, mode) for p in part]
        for j, img in enumerate(imgs):
            if img.ndim != 3 or img.shape[0] != 3:
                raise CorruptImage(f"image {part[j]} decoded to shape {tuple(img.shape)}, expected (3, H, W)")
            if img.shape[-2:] != (size, size):
                img = torch.nn.functional.interpolate(img[None].float(), size=(size, size), mode="bilinear",
                                                      antialias=True, align_corners=False)[0].round().clamp(0, 255)
            out[start + j] = img.to(torch.uint8)
    return out


def cache_key(classes: list[str], files: list[tuple[Path, int]], split_dir: Path) -> dict:
    """What the decoded cache of an ImageFolder split depends on: the class list and, for every file,
    its path relative to ``split_dir``, size and modification time (ns). An edited, replaced, renamed,
    added or removed image changes the key, so the cache is rebuilt."""
    entries = []
    for path, _ in files:
        st = path.stat()
        entries.append(f"{path.relative_to(split_dir).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}")
    import hashlib

    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    return {"classes": list(classes), "n_files": len(files), "files_sha256": digest}


def load_imagefolder(folder: Path, split: str, cache_dir: Path | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode ``folder/split/<class>/*`` into uint8 tensors, cached in ``cache_{split}.pt``.

    The cache sits next to the class folders (or in ``cache_dir`` when ``folder`` is read-only) and is
    rebuilt when any file's name, size or modification time changes (:func:`cache_key`). A file that
    cannot be decoded raises :class:`CorruptImage` naming it.
    """
    classes, files = _scan_imagefolder(folder / split)
    key = cache_key(classes, files, folder / split)
    cache_dirs = [folder] + ([cache_dir] if cache_dir is not None else [])
    for d in cache_dirs:
        cache = d / f"cache_{split}.pt"
        if cache.is_file():
            try:
                blob = torch.load(cache, weights_only=True)
            except Exception as err:  # noqa: BLE001 - a broken cache is rebuilt
                log.warning("ignoring unreadable cache %s (%s)", cache, err)
                continue
            if blob.get("key") == key:
                log.info("loaded %d %s images from cache %s", len(blob["labels"]), split, cache)
                return blob["images"], blob["labels"], classes
    log.info("decoding %d %s images from %s (once; cached afterwards)", len(files), split, folder / split)
    images = _decode([p for p, _ in files])
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    blob = {"key": key, "images": images, "labels": labels}
    for d in cache_dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".cache_{split}.pt.{os.getpid()}.tmp"
            torch.save(blob, tmp)
            os.replace(tmp, d / f"cache_{split}.pt")
            log.info("cached decoded images in %s", d / f"cache_{split}.pt")
            break
        except OSError as err:
            log.info("cannot write cache in %s (%s)", d, err)
    return images, labels, classes


def channel_stats(images: torch.Tensor, chunk: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) of uint8 NCHW images, in chunks."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=1e-12).sqrt()
    return mean.tolist(), std.tolist()


# ------------------------------------------------------------------------------------------- module


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 (or the synthetic stand-in) held as tensors; see the module docstring."""

    def __init__(self, root: str | None = None, download_dir: str = "data", download: bool = True,
                 fallback: str = "synthetic", source: str = "cifar10", num_classes: int = 10,
                 batch_size: int = 128, eval_batch_size: int = 512, augment: bool = True,
                 on_device: str | bool = "auto", synthetic_train_size: int = 10000,
                 synthetic_val_size: int = 2000, seed: int = 0, network_timeout: float = 5.0):
        super().__init__()
        if source not in ("cifar10", "synthetic"):
            raise ValueError(f"data.source must be 'cifar10' or 'synthetic', got {source!r}")
        if fallback not in ("synthetic", "error"):
            raise ValueError(f"data.fallback must be 'synthetic' or 'error', got {fallback!r}")
        self.root, self.download_dir, self.download = root, download_dir, download
        self.fallback, self.source, self.num_classes = fallback, source, num_classes
        self.batch_size, self.eval_batch_size, self.augment = batch_size, eval_batch_size, augment
        self.on_device, self.seed, self.network_timeout = on_device, seed, network_timeout
        self.synthetic_train_size, self.synthetic_val_size = synthetic_train_size, synthetic_val_size
        self.info: dict | None = None
        self._resume_position: tuple[int, int] | None = None
        self.train_x = self.train_y = self.val_x = self.val_y = None
        self.mean = self.std = None

    # -- finding and loading ----------------------------------------------------------------------

    def load(self) -> dict:
        """Find (or download, or generate) the data and hold it as CPU tensors; returns ``self.info``.

        Idempotent. Called by ``setup``; call it earlier to learn ``info["name"]`` before training.
        """
        if self.info is not None:
            return self.info
        if self.source == "synthetic":
            self._load_synthetic(reason=None)
        else:
            try:
                self._load_cifar10()
            except DataUnavailable as err:
                if self.fallback == "error":
                    raise
                log.warning(
                    "\n" + "!" * 88 + "\n"
                    "CIFAR-10 is not available: %s\n"
                    "Falling back to the SYNTHETIC 10-class data set (procedurally generated shapes).\n"
                    "Results of this run are NOT CIFAR-10 results; the run is labelled 'synthetic'.\n"
                    "Point data.root at a local copy (cifar-10-batches-py or an ImageFolder "
                    "train/ test/ layout) or allow the download.\n" + "!" * 88, err)
                self._load_synthetic(reason=str(err))
        # a fixed shuffle of the validation set, so that limit_val_batches takes a class-balanced subset
        # (ImageFolder copies are stored class by class)
        order = torch.randperm(len(self.val_y), generator=torch.Generator().manual_seed(0))
        self.val_x, self.val_y = self.val_x[order], self.val_y[order]
        self.mean, self.std = channel_stats(self.train_x)
        return self.info

    def _load_synthetic(self, reason: str | None) -> None:
        self.train_x, self.train_y = make_synthetic(self.synthetic_train_size, seed=10_000 + self.seed)
        self.val_x, self.val_y = make_synthetic(self.synthetic_val_size, seed=20_000 + self.seed)
        self.info = {"name": "synthetic", "synthetic": True, "fallback": reason is not None,
                     "fallback_reason": reason, "source": "experiments.classification.data.synthetic (procedural)",
                     "classes": list(SYNTHETIC_CLASSES)}
        self._finish_info()

    def _load_cifar10(self) -> None:
        if self.root is not None:
            # a root the user gave must hold the data: no download into it, no synthetic fallback
            root = Path(self.root).expanduser()
            if not root.exists():
                raise FileNotFoundError(f"data.root={self.root} does not exist ({root.resolve()}); point it at a "
                                        "CIFAR-10 copy, or leave data.root unset for the copy under data.download_dir")
            found = find_local_copy(root)
            if found is None:
                raise FileNotFoundError(
                    f"data.root={self.root} ({root.resolve()}) holds no CIFAR-10 copy: neither cifar-10-batches-py "
                    "(data_batch_1, test_batch) nor train/ and test/ class folders, there or in cifar10/")
        else:
            download_root = Path(self.download_dir).expanduser()
            searched = [str(download_root.resolve() / "cifar-10-batches-py")]
            found = find_local_copy(download_root / "cifar-10-batches-py")
            if found is None:
                found = self._download(download_root, searched)
        kind, folder = found
        if kind == "torchvision":
            self.train_x, self.train_y, classes = load_torchvision(folder, train=True)
            self.val_x, self.val_y, _ = load_torchvision(folder, train=False)
        else:
            cache_dir = Path(self.download_dir).expanduser() / "cache" / folder.resolve().as_posix().strip("/").replace("/", "_")
            self.train_x, self.train_y, classes = load_imagefolder(folder, "train", cache_dir)
            self.val_x, self.val_y, val_classes = load_imagefolder(folder, "test", cache_dir)
            if val_classes != classes:
                raise DataUnavailable(f"{folder}: train/ and test/ have different class folders")
        if len(classes) != self.num_classes:
            raise ValueError(f"{folder} has {len(classes)} classes, data.num_classes is {self.num_classes}")
        self.info = {"name": "cifar10", "synthetic": False, "fallback": False, "fallback_reason": None,
                     "source": f"{kind}:{folder.resolve()}", "classes": list(classes)}
        self._finish_info()
        log.info("CIFAR-10 from %s (%d train / %d val images)", self.info["source"], len(self.train_y), len(self.val_y))

    def _download(self, download_root: Path, searched: list[str]) -> tuple[str, Path]:
        where = "; ".join(searched)
        if not self.download:
            raise DataUnavailable(f"no local copy found (looked in {where}) and data.download=false")
        if not host_reachable(CIFAR10_URL, self.network_timeout):
            raise DataUnavailable(f"no local copy found (looked in {where}) and the download server "
                                  f"{urlparse(CIFAR10_URL).hostname} is unreachable (no network?)")
        from torchvision.datasets import CIFAR10

        log.info("downloading CIFAR-10 to %s", download_root)
        try:
            download_root.mkdir(parents=True, exist_ok=True)
            CIFAR10(root=str(download_root), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - any download failure means: not available
            raise DataUnavailable(f"download to {download_root} failed: {err}") from err
        return "torchvision", download_root / "cifar-10-batches-py"

    def _finish_info(self) -> None:
        self.info.update(num_train=len(self.train_y), num_val=len(self.val_y),
                         image_shape=list(self.train_x.shape[1:]))

    # -- Lightning hooks --------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type != "cpu" and self._keep_on_device(device):
            for name in ("train_x", "train_y", "val_x", "val_y"):
                setattr(self, name, getattr(self, name).to(device))

    def _keep_on_device(self, device: torch.device) -> bool:
        if self.on_device in (False, "false", "False"):
            return False
        if self.on_device in (True, "true", "True"):
            return True
        nbytes = sum(t.numel() * t.element_size() for t in (self.train_x, self.train_y, self.val_x, self.val_y))
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return nbytes < 0.25 * free
        return False

    def _loader(self, x, y, batch_size, train: bool) -> TensorBatchLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return TensorBatchLoader(x, y, batch_size, shuffle=train, drop_last=train, seed=self.seed,
                                 rank=rank, world_size=world)

    def train_dataloader(self):
        loader = self._loader(self.train_x, self.train_y, self.batch_size, train=True)
        self._train_loader = loader
        if self._resume_position is not None:  # restored from a checkpoint: continue where it stopped
            loader.epoch, loader.skip_batches = self._resume_position
            self._resume_position = None
            if loader.skip_batches:
                log.warning("resuming mid-epoch: epoch %d continues after the %d batches it had trained",
                            loader.epoch, loader.skip_batches)
        return loader

    def val_dataloader(self):
        return self._loader(self.val_x, self.val_y, self.eval_batch_size, train=False)

    def test_dataloader(self):
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        if self.augment and self.trainer is not None and self.trainer.training:
            x = random_crop_flip(x, padding=4, flip=True)
        return normalize(x, self.mean, self.std), y

    def state_dict(self) -> dict:
        """Saved in checkpoints: the data set used and where training stands in the shuffled order
        (the epoch being trained and how many of its batches are done), for an exact resume."""
        state = {"info": self.info}
        loader, trainer = getattr(self, "_train_loader", None), self.trainer
        if loader is not None and trainer is not None:
            epoch, done = max(loader.epoch - 1, 0), int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
            if done >= trainer.num_training_batches:  # saved at the end of the epoch: the next one starts afresh
                epoch, done = epoch + 1, 0
            state["train_position"] = {"epoch": epoch, "batches_done": done}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        position = state_dict.get("train_position")
        if position is not None:
            self._resume_position = (int(position["epoch"]), int(position["batches_done"]))
