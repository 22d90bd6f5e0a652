"""OmegaConf resolvers used by conf/.

``${on_cuda:A,B}``   A when CUDA is available, else B (used by conf/trainer/auto.yaml).
``${project_root:}`` the checkout this package lives in.
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


def register() -> None:
    OmegaConf.register_new_resolver("on_cuda", on_cuda, replace=True)
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)


register()
