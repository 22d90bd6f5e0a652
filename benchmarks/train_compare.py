"""Short training comparison: CIFAR ResNet-20 with standard / deformable / depthwise-separable 3x3
convolutions, each trained for a fixed number of steps on convlab's Triton kernels and on the PyTorch
reference (cuDNN, torchvision), in plain PyTorch (no Hydra, no Lightning).

    python -m benchmarks.train_compare --out train.json                    # GPU defaults
    python -m benchmarks.train_compare --data .session/cifar10-jpeg.tar.gz --steps 40
    TRITON_INTERPRET=1 python -m benchmarks.train_compare --device cpu --width 4 --depth 8 --batch 4 \\
        --steps 1 --warmup-steps 1 --image-size 8        # CPU rehearsal: the loop runs, times mean nothing

Per (variant, backend) run: the same seed, model initialisation and batches; SGD (lr 0.1, momentum
0.9, weight decay 5e-4) on cross-entropy. The first ``--warmup-steps`` steps (kernel compilation and
autotuning) are not timed; the next ``--steps`` are, each synchronised on CUDA. Recorded: median
step time and its 20 %/80 % quantiles, images/s (batch / median step time), peak GPU memory over the
whole run (``torch.cuda.max_memory_allocated``, warm-up included), the loss of the first and the last
step, the number of parameters. The JSON is rewritten after every run, so a kill loses at most the
run in flight. A run that fails records its error and the next one starts.

Data: ``--data`` is the CIFAR-10 JPEG archive (``cifar10/train/<class>/*.jpg`` inside a .tar.gz), an
ImageFolder directory (``train/<class>/*``), or ``synthetic`` (the project's generated 10-class set,
labelled so in the JSON). Only the images the steps need are decoded (an equal number per class).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import List, Tuple

import torch

from .bench import QUANTILES, _atomic_write, _now, _quantile, environment

VARIANTS = ("deformable", "depthwise_separable", "standard")
BACKENDS = ("triton", "reference")


# ------------------------------------------------------------------------------------------- data
def _decode_jpeg_bytes(blob: bytes) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)


def load_images(source: str, n: int, size: int = 32, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """``n`` training images (uint8 NCHW, ``size`` x ``size``), int64 labels and a description of
    where they came from. ``source``: a .tar.gz / .tgz archive, an ImageFolder directory or
    "synthetic"."""
    per_class = math.ceil(n / 10)
    if source == "synthetic":
        from experiments.classification.data.synthetic import make_synthetic

        x, y = make_synthetic(n, seed=seed, size=size)
        return x, y, {"name": "synthetic", "synthetic": "procedurally generated shapes (experiments/classification/data/synthetic.py)"}
    path = Path(source)
    picked: dict = {}
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:  # streams the archive once; members are read as they pass
                parts = m.name.split("/")
                if not m.isfile() or len(parts) < 3 or parts[-3] != "train":
                    continue
                files = picked.setdefault(parts[-2], [])
                if len(files) < per_class:
                    files.append(_decode_jpeg_bytes(tar.extractfile(m).read()))
        desc = {"name": "cifar10", "source": f"archive {path.name}"}
    elif path.is_dir():
        from experiments.classification.data.cifar import _decode, _scan_imagefolder, find_local_copy

        found = find_local_copy(path)
        if found is None or found[0] != "imagefolder":
            raise FileNotFoundError(f"no ImageFolder train/<class>/ layout at or below {path}")
        classes, files = _scan_imagefolder(found[1] / "train")
        for label, cls in enumerate(classes):
            mine = [p for p, lab in files if lab == label][:per_class]
            picked[cls] = list(_decode(mine, size=32))
        desc = {"name": "cifar10", "source": f"imagefolder {found[1]}"}
    else:
        raise FileNotFoundError(f"--data {source!r}: not an archive, a directory or 'synthetic'")
    classes = sorted(picked)
    if len(classes) != 10 or min(len(v) for v in picked.values()) < per_class:
        raise ValueError(f"{source}: expected 10 classes with {per_class} training images each, got "
                         f"{ {c: len(v) for c, v in picked.items()} }")
    x = torch.stack([img for c in classes for img in picked[c]])
    y = torch.tensor([i for i, c in enumerate(classes) for _ in picked[c]], dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = x[order], y[order]
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x, y, dict(desc, classes=classes, images=len(y))


# -------------------------------------------------------------------------------------------- run
def train_run(variant: str, backend: str, images: torch.Tensor, labels: torch.Tensor, *, steps: int,
              warmup_steps: int, batch: int, depth: int, width: int, device: str, seed: int = 0) -> dict:
    """Train one model for ``warmup_steps + steps`` steps; see the module docstring for what is recorded."""
    import layers
    from experiments.classification.data.tensors import normalize, random_crop_flip
    from experiments.classification.models.resnet import CifarResNet

    torch.manual_seed(seed)
    model = CifarResNet(depth=depth, width=width, conv={"variant": variant}).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator(device=device).manual_seed(seed)
    imgs, labs = images.to(device), labels.to(device)
    n = len(labs)
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    t_start = time.perf_counter()
    with layers.use_backend(backend):
        ran = layers.backend.resolve(torch.device(device))
        for step in range(warmup_steps + steps):
            lo = (step * batch) % max(1, n - batch + 1)
            xb = normalize(random_crop_flip(imgs[lo:lo + batch], generator=g))
            yb = labs[lo:lo + batch]
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            losses.append(float(loss.detach()))
            if step >= warmup_steps:
                times.append(dt)
    med = _quantile(times, 0.5) if times else None
    return {
        "variant": variant, "backend": backend, "backend_ran": ran, "device": device, "batch": batch,
        "depth": depth, "width": width, "image_size": int(images.shape[-1]), "warmup_steps": warmup_steps,
        "steps_timed": len(times), "params": sum(p.numel() for p in model.parameters()),
        "step_ms_median": med * 1e3 if med else None,
        "step_ms_p20": _quantile(times, QUANTILES[1]) * 1e3 if times else None,
        "step_ms_p80": _quantile(times, QUANTILES[2]) * 1e3 if times else None,
        "images_per_s": batch / med if med else None,
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "loss_finite": all(math.isfinite(v) for v in losses),
        "seconds_total": time.perf_counter() - t_start, "error": "", "measured_at": _now(),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--runs", nargs="+", metavar="VARIANT:BACKEND",
                    help="explicit runs in this order instead of --variants x --backends")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run")
    ap.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (compile, autotune)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--data", default="synthetic", help="CIFAR-10 .tar.gz, ImageFolder directory, or 'synthetic'")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--time-budget", type=float, default=None, metavar="S", help="start no new run after S seconds")
    ap.add_argument("--out", required=True, help="JSON path (rewritten after every run)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU; use --device cpu with TRITON_INTERPRET=1 for a rehearsal", file=sys.stderr)
        return 2
    backends = {r.split(":", 1)[-1] for r in args.runs} if args.runs else set(args.backends)
    if not backends <= set(BACKENDS):
        print(f"error: backends must be among {BACKENDS}, got {sorted(backends)}", file=sys.stderr)
        return 2
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1" and "triton" in backends:
        print("error: the triton backend on the CPU needs TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    t0 = time.time()
    env = environment(args.device)
    n = (args.warmup_steps + args.steps) * args.batch
    try:
        images, labels, data = load_images(args.data, min(n, 50000), args.image_size)
    except (OSError, ValueError) as exc:
        print(f"data {args.data!r} unusable ({exc}); using synthetic images", flush=True)
        images, labels, data = load_images("synthetic", min(n, 50000), args.image_size)
        data["fallback"] = f"{args.data}: {exc}"
    print(f"data: {data['name']} ({data.get('source', data.get('synthetic'))}), {len(labels)} images "
          f"({time.time() - t0:.1f} s)", flush=True)
    settings = {k: getattr(args, k) for k in ("steps", "warmup_steps", "batch", "depth", "width", "image_size")}
    runs: List[dict] = []

    def write():
        _atomic_write(args.out, lambda f: json.dump({"environment": env, "data": data, "settings": settings,
                                                     "runs": runs}, f, indent=1))
    write()
    plan = [(v, b) for v in args.variants for b in args.backends]
    if args.runs:
        plan = [tuple(r.split(":", 1)) for r in args.runs]
    for i, (variant, backend) in enumerate(plan):
        if args.time_budget is not None and time.time() - t0 > args.time_budget:
            print(f"time budget {args.time_budget:.0f} s reached: {len(plan) - i} runs not started", flush=True)
            break
        try:
            r = train_run(variant, backend, images, labels, steps=args.steps, warmup_steps=args.warmup_steps,
                          batch=args.batch, depth=args.depth, width=args.width, device=args.device)
        except Exception as exc:  # record and go on: one broken variant must not hide the others
            r = {"variant": variant, "backend": backend, "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                 "measured_at": _now()}
        runs.append(r)
        write()
        if r["error"]:
            print(f"[{i + 1}/{len(plan)}] {variant:<20} {backend:<9} ERROR {r['error']}", flush=True)
        else:
            mem = f"{r['peak_mem_mb']:.0f} MiB" if r["peak_mem_mb"] is not None else "- MiB"
            print(f"[{i + 1}/{len(plan)}] {variant:<20} {backend:<9} ({r['backend_ran']}) "
                  f"{r['images_per_s']:.0f} img/s  step {r['step_ms_median']:.1f} ms  peak {mem}  "
                  f"loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}  ({time.time() - t0:.0f} s)", flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
