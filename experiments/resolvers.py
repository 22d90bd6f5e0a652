"""OmegaConf resolvers used by conf/.

``${on_cuda:A,B}``   A when CUDA is available, else B (used by conf/trainer/auto.yaml).
``${project_root:}`` the checkout this package lives in.
``${run_dir_of:CKPT,DEFAULT}``  the run folder holding checkpoint CKPT (``<run>/checkpoints/x.ckpt``),
                     else DEFAULT: a resumed run writes into the folder of the run it continues.
``${if_set:X,A,B}``  A when X is set (not null or empty), else B.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def on_cuda(if_cuda, otherwise):
    return if_cuda if _cuda_available() else otherwise


def checkpoint_run_dir(ckpt_path) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<name>.ckpt``; ``None`` for a checkpoint elsewhere (or none)."""
    if not ckpt_path:
        return None
    path = Path(str(ckpt_path)).expanduser().resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def run_dir_of(ckpt_path, default):
    run_dir = checkpoint_run_dir(ckpt_path)
    return str(run_dir) if run_dir is not None else default


def register() -> None:
    OmegaConf.register_new_resolver("on_cuda", on_cuda, replace=True)
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("run_dir_of", run_dir_of, replace=True)
    OmegaConf.register_new_resolver("if_set", lambda value, a, b: a if value not in (None, "") else b, replace=True)


register()
