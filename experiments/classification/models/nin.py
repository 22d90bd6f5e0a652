"""Network-in-Network for CIFAR-10 with "root" variants (Ioannou et al., Deep Roots, CVPR 2017).

Three blocks of one spatial convolution followed by two 1x1 convolutions, each followed by batch
norm and ReLU (except the classifier conv3c, which has a bias and feeds the global average pool)::

    conv1a 5x5/192  conv1b 1x1/160  conv1c 1x1/96   -> 3x3 max-pool, stride 2  (32 -> 16)
    conv2a 5x5/192  conv2b 1x1/192  conv2c 1x1/192  -> 3x3 avg-pool, stride 2  (16 -> 8)
    conv3a 3x3/192  conv3b 1x1/192  conv3c 1x1/10   -> global average pool

Padding keeps the spatial size inside a block (2 for 5x5, 1 for 3x3, also 1 for the pools). A root
model groups only the spatial convolutions conv2a and conv3a: ``root=r`` uses ``r`` groups in conv2a
and ``max(1, r // 2)`` in conv3a (root-2: (2, 1), root-4: (4, 2), ..., root-32: (32, 16));
``root`` 0 or 1 is the plain NiN. ``groups=(g2a, g3a)`` sets them directly.

Multiply-adds of the convolutions (BN, bias, ReLU and pooling not counted), one 3x32x32 image:
NiN 222.5M, root-2 163.5M, root-4 123.4M, root-8 103.3M, root-16 93.3M, root-32 88.3M, the paper's
numbers (tests/experiments/test_deep_roots.py checks them); see :func:`conv_macs`.

All convolutions are the project's ``layers.Conv2d`` built by ``layers.factory.make_conv``
("grouped" for the grouped ones, "standard" otherwise).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from layers.factory import make_conv

# (name, kernel, out_channels) per block; the spatial layers are the "a" layers
BLOCKS = (
    (("conv1a", 5, 192), ("conv1b", 1, 160), ("conv1c", 1, 96)),
    (("conv2a", 5, 192), ("conv2b", 1, 192), ("conv2c", 1, 192)),
    (("conv3a", 3, 192), ("conv3b", 1, 192), ("conv3c", 1, 10)),
)

# Ioannou et al. 2017, Table (NiN on CIFAR-10): multiply-adds (millions) and test accuracy (%)
PAPER = {
    1: {"macs_m": 222.5, "acc": 92.11},
    2: {"macs_m": 163.5, "acc": 92.09},
    4: {"macs_m": 123.4, "acc": 92.02},
    8: {"macs_m": 103.3, "acc": 92.15},
    16: {"macs_m": 93.3, "acc": 91.67},
}


def root_groups(root: int) -> tuple[int, int]:
    """Groups of (conv2a, conv3a) for root-``root``; 0 or 1 is plain NiN."""
    root = int(root)
    if root < 0:
        raise ValueError(f"root must be >= 0, got {root}")
    if root <= 1:
        return 1, 1
    return root, max(1, root // 2)


class ConvUnit(nn.Module):
    """conv -> batch norm -> ReLU (``final``: conv with bias only). Its output is the layer's response."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 1, final: bool = False):
        super().__init__()
        variant, opts = ("grouped", {"groups": groups}) if groups > 1 else ("standard", {})
        self.conv = make_conv(variant, cin, cout, kernel, stride=1, padding=kernel // 2, bias=final, **opts)
        self.bn = nn.Identity() if final else nn.BatchNorm2d(cout)
        self.relu = nn.Identity() if final else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class NiN(nn.Module):
    """NiN / root-NiN. Submodules ``conv1a`` ... ``conv3c`` are :class:`ConvUnit` (their outputs are the
    post-ReLU filter responses the correlation analysis hooks into)."""

    def __init__(self, num_classes: int = 10, root: int = 1, groups: Sequence[int] | None = None,
                 in_channels: int = 3):
        super().__init__()
        g2a, g3a = (int(groups[0]), int(groups[1])) if groups else root_groups(root)
        self.root, self.groups, self.num_classes = int(root), (g2a, g3a), int(num_classes)
        spec = [list(b) for b in BLOCKS]
        spec[2][2] = ("conv3c", 1, num_classes)
        group_of = {"conv2a": g2a, "conv3a": g3a}
        cin = in_channels
        for block in spec:
            for name, k, cout in block:
                self.add_module(name, ConvUnit(cin, cout, k, groups=group_of.get(name, 1), final=name == "conv3c"))
                cin = cout
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, ConvUnit):
                nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")  # He init
                if getattr(m.conv, "bias", None) is not None:
                    nn.init.zeros_(m.conv.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1c(self.conv1b(self.conv1a(x)))
        x = self.pool1(x)
        x = self.conv2c(self.conv2b(self.conv2a(x)))
        x = self.pool2(x)
        x = self.conv3c(self.conv3b(self.conv3a(x)))
        return torch.flatten(self.gap(x), 1)


def conv_macs(model: nn.Module, input_shape=(3, 32, 32)) -> dict[str, int]:
    """Multiply-adds of every convolution on one sample: ``out_h * out_w * out_c * (in_c / groups) * kh * kw``
    per layer (keyed by the layer's name), plus ``"total"``. Bias, BN, ReLU and pooling are not counted."""
    counts: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if w is not None and w.ndim == 4 and hasattr(m, "groups"):
            def hook(mod, inp, out, name=name):
                kh, kw = mod.weight.shape[-2:]
                cin_per_group = mod.weight.shape[1]
                counts[name.removesuffix(".conv")] = int(out[0].numel() * cin_per_group * kh * kw)
            hooks.append(m.register_forward_hook(hook))
    from layers import use_backend

    try:
        was_training = model.training
        model.eval()
        with torch.no_grad(), use_backend("reference"):  # the count does not depend on the kernels
            p = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    counts["total"] = sum(counts.values())
    return counts
