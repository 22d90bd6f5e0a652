"""Faster R-CNN (torchvision) on a small ResNet whose late-stage 3x3 convolutions come from
``layers.factory.make_conv``, with an optional deformable RoI pooling head.

Backbone: torchvision ResNet-18 / 34 (weights=None; ``pretrained`` = a path to a state_dict of the
plain torchvision ResNet, loaded before the swap; swapped convolutions inherit the 3x3 weights),
stem to ``layer4`` (stride 32), then a 1x1 convolution to ``out_channels``: one feature map (no FPN).
The 3x3 convolutions of the BasicBlocks in ``swap_stages`` (1..4 = layer1..layer4) are built by
``make_conv(conv.variant, ...)``. ``roi_pool``: ``standard`` (torchvision's RoI Align,
``MultiScaleRoIAlign``) or ``deformable`` (``layers.roi.OffsetDeformRoIPool2d``: RoI Align ->
fc -> normalised offsets -> deformable RoI pooling, zero-initialised offsets).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class DeformRoIPoolHead(nn.Module):
    """Stands in for ``MultiScaleRoIAlign`` in torchvision's RoIHeads (same call signature) on a
    single feature map: ``forward(features: dict, proposals: list[Tensor[L, 4]], image_shapes)``."""

    def __init__(self, featmap_name: str, output_size: int, sampling_ratio: int, in_channels: int,
                 spatial_scale: float, gamma: float = 0.1, hidden_channels: int = 256):
        super().__init__()
        from layers.roi import OffsetDeformRoIPool2d

        self.featmap_name = featmap_name
        self.pool = OffsetDeformRoIPool2d(output_size, spatial_scale, sampling_ratio, in_channels, gamma=gamma,
                                          hidden_channels=hidden_channels)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        return self.pool(x[self.featmap_name], boxes)


class ResNetBackbone(nn.Module):
    def __init__(self, arch: str, conv: dict, swap_stages=(3, 4), out_channels: int = 256,
                 pretrained: str | None = None):
        super().__init__()
        import torchvision

        from layers.factory import make_conv, split_conv_config

        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            state = torch.load(Path(pretrained).expanduser(), map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            log.info("loaded %s (missing %d, unexpected %d keys)", pretrained, len(missing), len(unexpected))
        variant, options = split_conv_config(conv)
        self.swap_stages = list(swap_stages)
        for s in self.swap_stages:
            for block in getattr(net, f"layer{s}"):
                for name in ("conv1", "conv2"):
                    old = getattr(block, name)
                    if old.kernel_size != (3, 3):
                        continue
                    new = make_conv(variant, old.in_channels, old.out_channels, 3, stride=old.stride[0], bias=False,
                                    **options)
                    if pretrained and hasattr(new, "weight") and new.weight.shape == old.weight.shape:
                        with torch.no_grad():
                            new.weight.copy_(old.weight)
                    setattr(block, name, new)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                  net.layer4)
        c4 = net.fc.in_features  # channels of layer4 (512 for resnet18 / 34)
        self.neck = nn.Sequential(nn.Conv2d(c4, out_channels, 1), nn.ReLU(inplace=True))
        self.out_channels = out_channels
        self.stride = 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"0": self.neck(self.body(x))}


def build_detector(num_classes: int, conv: dict, arch: str = "resnet18", swap_stages=(3, 4),
                   out_channels: int = 256, roi_pool: str = "standard", gamma: float = 0.1,
                   image_size: int = 320, pretrained: str | None = None,
                   anchor_sizes=(32, 64, 128, 256), aspect_ratios=(0.5, 1.0, 2.0), representation_size: int = 256,
                   rpn_batch_size_per_image: int = 128, box_batch_size_per_image: int = 128,
                   rpn_pre_nms_top_n_train: int = 600, rpn_post_nms_top_n_train: int = 300,
                   rpn_pre_nms_top_n_test: int = 300, rpn_post_nms_top_n_test: int = 100,
                   box_detections_per_img: int = 50, box_score_thresh: float = 0.01, **_: Any) -> nn.Module:
    """torchvision FasterRCNN; ``num_classes`` includes the background."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if roi_pool not in ("standard", "deformable"):
        raise ValueError(f"roi_pool must be 'standard' or 'deformable', got {roi_pool!r}")
    backbone = ResNetBackbone(arch, conv, swap_stages, out_channels, pretrained)
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    pooler = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(out_channels * 49, representation_size)
    model = FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pooler,
                       box_head=head, box_predictor=FastRCNNPredictor(representation_size, num_classes),
                       min_size=image_size,
                       max_size=image_size, rpn_batch_size_per_image=rpn_batch_size_per_image,
                       box_batch_size_per_image=box_batch_size_per_image,
                       rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
                       rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
                       rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                       rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
                       box_detections_per_img=box_detections_per_img, box_score_thresh=box_score_thresh)
    if roi_pool == "deformable":  # FasterRCNN's constructor only accepts MultiScaleRoIAlign: swap it after
        model.roi_heads.box_roi_pool = DeformRoIPoolHead("0", 7, 2, out_channels, 1.0 / backbone.stride, gamma=gamma)
    model.swap_stages = list(swap_stages)
    model.roi_pool_kind = roi_pool
    return model
