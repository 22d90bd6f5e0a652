"""CIFAR ResNet (ResNet-20/32/44/56: depth = 6n + 2) whose 3x3 convolutions come from the factory.

Three stages of n basic blocks at ``width``, ``2*width`` and ``4*width`` channels (stride 2 at the
start of stages 2 and 3). The 3x3 convolutions of the stages listed in ``swap_stages`` are built with
``layers.factory.make_conv(conv["variant"], ..., **options)``; the stem and the rest use the
"standard" variant, and the strided shortcuts are standard 1x1 convolutions with batch norm.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn

from layers.factory import make_conv, split_conv_config


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, variant: str, options: Mapping):
        super().__init__()
        self.conv1 = make_conv(variant, in_channels, out_channels, 3, stride=stride, **options)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = make_conv(variant, out_channels, out_channels, 3, stride=1, **options)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                make_conv("standard", in_channels, out_channels, kernel_size=1, stride=stride, padding=0),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``conv``: a mapping with ``variant`` (a layers.factory name) and that variant's options."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 swap_stages: Iterable[int] = (1, 2, 3), conv: Mapping | None = None, in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, ...), got {depth}")
        swap_stages = sorted(set(int(s) for s in swap_stages))
        if any(s not in (1, 2, 3) for s in swap_stages):
            raise ValueError(f"swap_stages must be a subset of [1, 2, 3], got {swap_stages}")
        variant, options = split_conv_config(conv)
        self.variant, self.swap_stages = variant, swap_stages
        blocks = (depth - 2) // 6

        self.stem = nn.Sequential(make_conv("standard", in_channels, width, 3), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width), start=1):
            v, opts = (variant, options) if stage in swap_stages else ("standard", {})
            layers = []
            for b in range(blocks):
                stride = 2 if (b == 0 and stage > 1) else 1
                layers.append(BasicBlock(cin, cout, stride, v, opts))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.modules():  # zero-init the last BN of each residual branch
            if isinstance(block, BasicBlock):
                nn.init.zeros_(block.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.pool(x).flatten(1))
