"""Shape suite of real network layers for the benchmarks.

Every layer is expanded over batch (32, 1), dtype and memory layout into ``Case`` objects with a
stable id: ``family/model/layer/b<N>/<dtype>/<layout>``.

dtypes: ``fp32`` (fp32, TF32 off), ``tf32`` (fp32 tensors, TF32 on for both sides: convlab's fp32
GEMM follows ``torch.backends.cudnn.allow_tf32`` as F.conv2d does), ``bf16``, ``fp16``.
layouts: ``nchw`` (contiguous) and ``cl`` (channels_last).

Families and the kernels that serve them (``kernels.inspect`` spec names):
  standard  - ResNet-50 3x3 layers                        conv2d_fwd / bwd_input / bwd_weight
  grouped   - ResNeXt-50 32x4d grouped 3x3 layers         conv2d_*
  depthwise - MobileNetV2 3x3 (s1, s2), ConvNeXt-T 7x7,
              RepLKNet-31B 31/29/27/13                    depthwise_fwd / bwd_input / bwd_weight
  dilated   - DeepLabV3 (ResNet backbone + ASPP), OS8 / OS16 at a 513x513 crop   conv2d_*
  deform    - DCNv1 / DCNv2 at ResNet-50 stage 3-5 (224 input) and detection (800x1216 input)
              deform_fwd / deform_bwd_data / deform_bwd_weight
  roi       - Faster R-CNN R50-FPN box head: 512 RoIs x 256 channels, 7x7 bins, sampling ratio 2, on
              the P2-P5 maps of an 800x1216 input; RoI Align (no offset) and deformable RoI pooling
              (with offsets) against torchvision.ops.roi_align
              deform_roi_pool_fwd / deform_roi_pool_bwd / deform_roi_bwd_offset
  conv3d    - 3-D convolutions against F.conv3d (cuDNN): R3D-18 and I3D 3x3x3 stages at 8-16 frames,
              R(2+1)D-18 1x3x3 + 3x1x1 pairs, 3-D U-Net on 64^3 volumes (encoder 3x3x3, decoder 2x2x2
              stride-2 transposed convolutions against F.conv_transpose3d). layers.conv3d /
              layers.conv_transpose3d; kernels: the AOT specs named conv3d_*
  depthwise3d - X3D-M depthwise 3x3x3 (groups = channels) against F.conv3d; layers.conv3d
  subpixel  - layers.subpixel_conv2d (convolution + pixel shuffle, padding 'same') against
              F.conv2d + F.pixel_shuffle: ESPCN x2 / x3 / x4 and decoder upsamplers; conv2d_*

3-D layers (``Layer.d`` > 0, families conv3d / depthwise3d) run on 5-D tensors: layout ``nchw`` is
NCDHW (contiguous) and ``cl`` is channels_last_3d. Their ops come from layers.conv3d, which may not
exist yet: ``unavailable(case)`` says why a case cannot run, and the dry run and the benchmark
report such cases as skipped (never a crash).

``build_suite(suite="tiny")`` gives one small layer per family (model "tiny") for the CPU rehearsal
of the GPU session. ``SESSION_PRIORITY`` / ``order_cases`` give the order a short GPU lease runs in.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional, Sequence

import torch

FAMILIES = ("standard", "grouped", "depthwise", "dilated", "deform", "roi", "conv3d", "depthwise3d", "subpixel")
DTYPES = ("fp32", "tf32", "bf16", "fp16")
BATCHES = (32, 1)
LAYOUTS = ("nchw", "cl")

TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: dtype name the kernels are compiled for (``kernels.inspect``); tf32 is fp32 tensors.
KERNEL_DTYPES = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16", "fp16": "fp16"}
ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}

#: kernels (AOT spec names) each family launches.
FAMILY_KERNELS = {
    "standard": ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"),
    "grouped": ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"),
    "dilated": ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"),
    "depthwise": ("depthwise_fwd", "depthwise_bwd_input", "depthwise_bwd_weight"),
    "deform": ("deform_fwd", "deform_bwd_data", "deform_bwd_weight"),
    "roi": ("deform_roi_pool_fwd", "deform_roi_pool_bwd", "deform_roi_bwd_offset"),
    "subpixel": ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"),
    "conv3d": (), "depthwise3d": (),  # see FAMILY_KERNEL_PREFIXES
}
#: families whose kernels are not known by name yet: every AOT spec whose name starts with one of the
#: prefixes (none until their kernels land; the dry run then says their compile check is skipped)
FAMILY_KERNEL_PREFIXES = {"conv3d": ("conv3d_",), "depthwise3d": ("depthwise3d_", "dw3d_")}
PEERS = {"standard": "cudnn", "grouped": "cudnn", "depthwise": "cudnn", "dilated": "cudnn",
         "deform": "torchvision", "roi": "torchvision roi_align", "conv3d": "cudnn", "depthwise3d": "cudnn",
         "subpixel": "cudnn + pixel_shuffle"}
#: convlab op (``layers.<name>``) each family needs, beyond layers.conv2d
FAMILY_OPS = {"conv3d": "conv3d", "depthwise3d": "conv3d", "subpixel": "subpixel_conv2d"}


@dataclass(frozen=True)
class Layer:
    """One convolution layer (batch, dtype and layout come from the Case). A RoI-pooling layer
    (family "roi") uses c_in = c_out (channels), h, w (the feature map), k (pooled size),
    stride (the map's stride: spatial_scale = 1 / stride), ``rois`` (RoIs per call, spread over
    the batch's images), ``sampling_ratio`` and deform "" (RoI Align) or "v1" (with offsets)."""
    family: str
    model: str
    name: str
    c_in: int
    c_out: int
    h: int
    w: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    deform: str = ""  # "" | "v1" | "v2" (v2 = with modulation mask)
    offset_groups: int = 1
    rois: int = 0  # family "roi": RoIs per call
    sampling_ratio: int = 0  # family "roi"
    # 3-D layers (families conv3d, depthwise3d): input depth (frames) d > 0, depth kernel kd, and the
    # depth stride / padding; h, w, k, stride, padding are the spatial ones, dilation applies to all axes
    d: int = 0
    kd: int = 0
    stride_d: int = 1
    padding_d: int = 0
    transposed: bool = False  # conv3d: conv_transpose3d (c_in -> c_out, output_padding 0)
    upscale: int = 0  # family "subpixel": the pixel shuffle's factor r; c_out = conv channels = C * r^2


@dataclass(frozen=True)
class Case:
    layer: Layer
    batch: int
    dtype: str
    layout: str

    @property
    def id(self) -> str:
        return f"{self.layer.family}/{self.layer.model}/{self.layer.name}/b{self.batch}/{self.dtype}/{self.layout}"

    @property
    def family(self) -> str:
        return self.layer.family

    @property
    def out_hw(self):
        """Output (OH, OW) of the convolution (subpixel: before the pixel shuffle)."""
        L = self.layer
        if L.family == "roi":
            return L.k, L.k
        return self.out_spatial()[-2:]

    @property
    def spatial_dims(self) -> int:
        return 3 if self.layer.d else 2

    def strides(self) -> tuple:
        L = self.layer
        return (L.stride_d, L.stride, L.stride) if L.d else (L.stride, L.stride)

    def paddings(self) -> tuple:
        L = self.layer
        return (L.padding_d, L.padding, L.padding) if L.d else (L.padding, L.padding)

    def dilations(self) -> tuple:
        return (self.layer.dilation,) * self.spatial_dims

    def kernel_size(self) -> tuple:
        L = self.layer
        return (L.kd, L.k, L.k) if L.d else (L.k, L.k)

    def in_spatial(self) -> tuple:
        L = self.layer
        return (L.d, L.h, L.w) if L.d else (L.h, L.w)

    def out_spatial(self) -> tuple:
        """Output spatial size of the convolution (transposed: of the transposed convolution)."""
        out = []
        for i, s, p, d, k in zip(self.in_spatial(), self.strides(), self.paddings(), self.dilations(),
                                 self.kernel_size()):
            if self.layer.transposed:
                out.append((i - 1) * s - 2 * p + d * (k - 1) + 1)
            else:
                out.append((i + 2 * p - d * (k - 1) - 1) // s + 1)
        return tuple(out)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    # --- shapes -------------------------------------------------------------------------------
    def shapes(self) -> dict:
        """Tensor shapes of one call (name -> shape)."""
        L = self.layer
        oh, ow = self.out_hw
        taps = L.k * L.k
        if L.family == "roi":
            s = {"input": (self.batch, L.c_in, L.h, L.w), "rois": (L.rois, 5), "output": (L.rois, L.c_in, L.k, L.k)}
            if L.deform:
                s["offset"] = (L.rois, 2, L.k, L.k)
            return s
        if L.family == "subpixel":
            r = L.upscale
            return {"input": (self.batch, L.c_in, L.h, L.w), "weight": (L.c_out, L.c_in // L.groups, L.k, L.k),
                    "conv_output": (self.batch, L.c_out, oh, ow),
                    "output": (self.batch, L.c_out // (r * r), oh * r, ow * r)}
        if L.d:
            ksz, osz = self.kernel_size(), self.out_spatial()
            w = (L.c_in, L.c_out // L.groups, *ksz) if L.transposed else (L.c_out, L.c_in // L.groups, *ksz)
            return {"input": (self.batch, L.c_in, *self.in_spatial()), "weight": w,
                    "output": (self.batch, L.c_out, *osz)}
        s = {"input": (self.batch, L.c_in, L.h, L.w), "weight": (L.c_out, L.c_in // L.groups, L.k, L.k),
             "output": (self.batch, L.c_out, oh, ow)}
        if L.deform:
            s["offset"] = (self.batch, 2 * L.offset_groups * taps, oh, ow)
            if L.deform == "v2":
                s["mask"] = (self.batch, L.offset_groups * taps, oh, ow)
        return s

    # --- work model ---------------------------------------------------------------------------
    def flops(self, mode: str) -> int:
        """2 * N * OH * OW * C_out * C_in/groups * KH * KW per pass: fwd = 1 pass, bwd = 2 (input
        grad + weight grad), fwd_bwd = 3. Deformable sampling (bilinear) work is not counted.
        RoI pooling: 8 per bilinear sample and channel (4 corner multiply-adds), R * C * PH * PW *
        SR^2 samples; bwd counts 2 passes (the scatter, and the corner dots of the offset gradient)."""
        L = self.layer
        if L.family == "roi":
            one = 8 * L.rois * L.c_in * L.k * L.k * L.sampling_ratio ** 2
            return one * {"fwd": 1, "bwd": 2, "fwd_bwd": 3}[mode]
        # per output pixel of the convolution: C_out * C_in/groups * taps multiply-adds; transposed: per
        # input pixel, C_in * C_out/groups * taps (the forward convolution it is the input gradient of)
        pixels = _prod(self.in_spatial() if L.transposed else self.out_spatial())
        ch = L.c_in * (L.c_out // L.groups) if L.transposed else L.c_out * (L.c_in // L.groups)
        one = 2 * self.batch * pixels * ch * _prod(self.kernel_size())
        return one * {"fwd": 1, "bwd": 2, "fwd_bwd": 3}[mode]

    def bytes_moved(self, mode: str) -> int:
        """Compulsory traffic, every tensor read or written exactly once (caches, re-reads and
        workspaces ignored). fwd: read input, weight (, offset, mask), write output. bwd: read
        grad_output, input, weight (, offset, mask), write grad_input, grad_weight (, grad_offset,
        grad_mask). fwd_bwd = fwd + bwd. RoI pooling reads only the sampled pixels: fwd reads the
        four corners of every sample (R * C * PH * PW * SR^2 * 4 elements) and the offset, writes the
        output; bwd reads grad_output, adds into the same corners (and reads them again for the
        offset gradient) and writes grad_offset."""
        numel = {k: _prod(v) for k, v in self.shapes().items() if k != "conv_output"}  # not compulsory
        L = self.layer
        if L.family == "roi":
            corners = 4 * numel["output"] * L.sampling_ratio ** 2
            off = numel.get("offset", 0)
            fwd = corners + off + numel["output"]
            bwd = numel["output"] + off + corners * (2 if off else 1) + off
            elems = {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]
            return elems * ELEMENT_BYTES[self.dtype]
        aux = numel.get("offset", 0) + numel.get("mask", 0)
        fwd = numel["input"] + numel["weight"] + aux + numel["output"]
        bwd = numel["output"] + numel["input"] + numel["weight"] + aux \
            + numel["input"] + numel["weight"] + aux
        elems = {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]
        return elems * ELEMENT_BYTES[self.dtype]

    def as_dict(self) -> dict:
        d = asdict(self.layer)
        d.update(id=self.id, batch=self.batch, dtype=self.dtype, layout=self.layout,
                 out_h=self.out_hw[0], out_w=self.out_hw[1])
        if self.layer.d:
            d["out_d"] = self.out_spatial()[0]
        return d


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


# ----------------------------------------------------------------------------------------- layers
def _resnet50() -> List[Layer]:
    # Bottleneck conv2 (3x3), torchvision v1.5: the stride sits on the 3x3 of each stage's first block.
    out = []
    for c, hw, first_stride in ((64, 56, 1), (128, 56, 2), (256, 28, 2), (512, 14, 2)):
        if first_stride == 2:
            out.append(Layer("standard", "resnet50", f"c{c}_{hw}_s2", c, c, hw, hw, 3, 2, 1))
            hw //= 2
        out.append(Layer("standard", "resnet50", f"c{c}_{hw}", c, c, hw, hw, 3, 1, 1))
    return out


def _resnext50() -> List[Layer]:
    out = []  # 32x4d: conv2 width 128/256/512/1024, 32 groups
    for c, hw, first_stride in ((128, 56, 1), (256, 56, 2), (512, 28, 2), (1024, 14, 2)):
        if first_stride == 2:
            out.append(Layer("grouped", "resnext50_32x4d", f"c{c}_{hw}_s2_g32", c, c, hw, hw, 3, 2, 1, 1, 32))
            hw //= 2
        out.append(Layer("grouped", "resnext50_32x4d", f"c{c}_{hw}_g32", c, c, hw, hw, 3, 1, 1, 1, 32))
    return out


def _dw(model, c, hw, k, stride=1):
    return Layer("depthwise", model, f"c{c}_{hw}_k{k}" + ("_s2" if stride == 2 else ""), c, c, hw, hw, k,
                 stride, k // 2, 1, c)


def _depthwise() -> List[Layer]:
    mbv2 = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2), (384, 14, 1),
            (576, 14, 1), (576, 14, 2), (960, 7, 1)]
    out = [_dw("mobilenet_v2", c, hw, 3, s) for c, hw, s in mbv2]
    out += [_dw("convnext_t", c, hw, 7) for c, hw in ((96, 56), (192, 28), (384, 14), (768, 7))]
    out += [_dw("replknet31b", c, hw, k) for c, hw, k in ((128, 56, 31), (256, 28, 29), (512, 14, 27), (1024, 7, 13))]
    return out


def _dilated() -> List[Layer]:
    # DeepLabV3, 513x513 crop: output stride 8 -> 65x65 features, 16 -> 33x33. padding = dilation.
    rows = [("os8", "layer3", 256, 256, 65, 2), ("os8", "layer4", 512, 512, 65, 4),
            ("os8", "aspp", 2048, 256, 65, 12), ("os8", "aspp", 2048, 256, 65, 24), ("os8", "aspp", 2048, 256, 65, 36),
            ("os16", "layer4", 512, 512, 33, 2), ("os16", "aspp", 2048, 256, 33, 6),
            ("os16", "aspp", 2048, 256, 33, 12), ("os16", "aspp", 2048, 256, 33, 18)]
    return [Layer("dilated", "deeplabv3", f"{os_}_{part}_c{ci}_d{d}", ci, co, hw, hw, 3, 1, d, d)
            for os_, part, ci, co, hw, d in rows]


def _deform() -> List[Layer]:
    out = []
    for v in ("v1", "v2"):
        # ResNet-50 stages 3-5 (conv2 of the bottleneck made deformable), 224 input.
        for stage, c, hw in ((3, 128, 28), (4, 256, 14), (5, 512, 7)):
            out.append(Layer("deform", "resnet50_dcn", f"stage{stage}_c{c}_{hw}_{v}", c, c, hw, hw, 3, 1, 1,
                             deform=v))
        # Detection (e.g. Mask R-CNN / DCNv2 setups), 800x1216 input: strides 8 / 16 / 32.
        for stage, c, (h, w) in ((3, 128, (100, 152)), (4, 256, (50, 76)), (5, 512, (25, 38))):
            out.append(Layer("deform", "det_dcn", f"stage{stage}_c{c}_{h}x{w}_{v}", c, c, h, w, 3, 1, 1,
                             deform=v))
    return out


def _roi() -> List[Layer]:
    # Faster R-CNN R50-FPN box head (torchvision's MultiScaleRoIAlign: 7x7, sampling ratio 2), 512 RoIs
    # of 256 channels; FPN maps P2-P5 of an 800x1216 input (strides 4 / 8 / 16 / 32). "align": RoI
    # Align (no offset); "deform": deformable RoI pooling with per-bin offsets.
    out = []
    for v, tag in (("", "align"), ("v1", "deform")):
        for level, stride in ((2, 4), (3, 8), (4, 16), (5, 32)):
            h, w = 800 // stride, 1216 // stride
            out.append(Layer("roi", "faster_rcnn_r50_fpn", f"p{level}_{h}x{w}_r512_{tag}", 256, 256, h, w, 7, stride,
                             deform=v, rois=512, sampling_ratio=2))
    return out


def _c3(model, name, ci, co, d, hw, k=3, kd=3, stride=1, stride_d=1, groups=1, family="conv3d"):
    """A 3-D layer, padding k // 2 (kd // 2 in depth): 'same' at stride 1."""
    return Layer(family, model, name, ci, co, hw, hw, k, stride, k // 2, 1, groups, d=d, kd=kd, stride_d=stride_d,
                 padding_d=kd // 2)


def _conv3d() -> List[Layer]:
    out = []
    # R3D-18 (torchvision r3d_18, 16 x 112 x 112 clips): 3x3x3 stages; the first block of stages 3-5 has
    # stride 2 on every axis (halves frames and pixels).
    for c, d, hw in ((64, 16, 56), (128, 8, 28), (256, 4, 14), (512, 2, 7)):
        out.append(_c3("r3d_18", f"c{c}_{d}x{hw}", c, c, d, hw))
    out.append(_c3("r3d_18", "c128_16x56_s2", 64, 128, 16, 56, stride=2, stride_d=2))
    # R(2+1)D-18 (torchvision r2plus1d_18): each 3x3x3 factorised into a 1x3x3 spatial conv to M channels and
    # a 3x1x1 temporal conv, M = 27 C^2 / (9 C + 3 C) for C -> C blocks.
    for c, d, hw in ((64, 16, 56), (128, 8, 28), (256, 4, 14)):
        mid = 27 * c * c // (9 * c + 3 * c)
        out.append(_c3("r2plus1d_18", f"c{c}_{d}x{hw}_1x3x3", c, mid, d, hw, kd=1))
        out.append(_c3("r2plus1d_18", f"c{c}_{d}x{hw}_3x1x1", mid, c, d, hw, k=1))
    # I3D (Inception-v1 inflated, 64-frame 224 clips): the 3x3x3 convs of Mixed_4b (16 frames, 14x14) and
    # Mixed_5b (8 frames, 7x7), both 3x3 branches.
    for name, ci, co, d, hw in (("mixed_4b_c96", 96, 208, 16, 14), ("mixed_4b_c16", 16, 48, 16, 14),
                                ("mixed_5b_c160", 160, 320, 8, 7), ("mixed_5b_c32", 32, 128, 8, 7)):
        out.append(_c3("i3d", name, ci, co, d, hw))
    # 3-D U-Net (Cicek et al. 2016) on 64^3 volumes: the second 3x3x3 conv of each encoder level, the
    # 2x2x2 stride-2 up-convolutions (transposed) and the decoder convs after the skip concatenation.
    for name, ci, co, dhw in (("enc1_c32_64", 32, 64, 64), ("enc2_c64_32", 64, 128, 32),
                              ("enc3_c128_16", 128, 256, 16), ("enc4_c256_8", 256, 512, 8),
                              ("dec3_c768_16", 768, 256, 16), ("dec1_c192_64", 192, 64, 64)):
        out.append(_c3("unet3d", name, ci, co, dhw, dhw))
    for name, c, dhw in (("up4_c512_8", 512, 8), ("up2_c128_32", 128, 32)):
        out.append(Layer("conv3d", "unet3d", name, c, c, dhw, dhw, 2, 2, 0, d=dhw, kd=2, stride_d=2, transposed=True))
    return out


def _depthwise3d() -> List[Layer]:
    # X3D-M (16 frames, 224 input): depthwise 3x3x3 of the bottleneck (inner width 2.25x), every frame kept;
    # the first block of each stage has spatial stride 2.
    out = []
    for c, hw in ((54, 56), (108, 28), (216, 14), (432, 7)):
        out.append(_c3("x3d_m", f"c{c}_16x{hw}", c, c, 16, hw, groups=c, family="depthwise3d"))
    out.append(_c3("x3d_m", "c108_16x56_s2", 108, 108, 16, 56, stride=2, groups=108, family="depthwise3d"))
    return out


def _subpixel() -> List[Layer]:
    # ESPCN (Shi et al. 2016), Y channel, its last layer: 3x3 conv 32 -> r^2 then shuffle, at the LR size of a
    # 1080p (1920x1080) output; EDSR / decoder upsamplers: 3x3 conv C -> 4C then x2 shuffle.
    out = []
    for r, (h, w) in ((2, (540, 960)), (3, (360, 640)), (4, (270, 480))):
        out.append(Layer("subpixel", "espcn", f"x{r}_c32_{h}x{w}", 32, r * r, h, w, 3, 1, 1, upscale=r))
    out.append(Layer("subpixel", "edsr", "x2_c64_96", 64, 256, 96, 96, 3, 1, 1, upscale=2))
    for c, hw in ((256, 28), (128, 56)):
        out.append(Layer("subpixel", "decoder", f"x2_c{c}_{hw}", c, 4 * (c // 2), hw, hw, 3, 1, 1, upscale=2))
    return out


def _tiny() -> List[Layer]:
    # One small layer per family (and both deform variants), for the CPU rehearsal of the GPU session:
    # they go through Triton's interpreter in seconds. Not real network layers; model name "tiny".
    return [Layer("standard", "tiny", "c8_8", 8, 8, 8, 8, 3, 1, 1),
            Layer("grouped", "tiny", "c16_8_g4", 16, 16, 8, 8, 3, 1, 1, 1, 4),
            Layer("depthwise", "tiny", "c8_8_k3", 8, 8, 8, 8, 3, 1, 1, 1, 8),
            Layer("depthwise", "tiny", "c8_8_k7", 8, 8, 8, 8, 7, 1, 3, 1, 8),
            Layer("dilated", "tiny", "c8_9_d2", 8, 8, 9, 9, 3, 1, 2, 2),
            Layer("deform", "tiny", "c8_6_v1", 8, 8, 6, 6, 3, 1, 1, deform="v1"),
            Layer("deform", "tiny", "c8_6_v2", 8, 8, 6, 6, 3, 1, 1, deform="v2"),
            Layer("roi", "tiny", "c8_12_r6_deform", 8, 8, 12, 12, 3, 4, deform="v1", rois=6, sampling_ratio=2),
            _c3("tiny", "c8_4x6", 8, 8, 4, 6),
            Layer("conv3d", "tiny", "c8_3x4_up", 8, 8, 4, 4, 2, 2, 0, d=3, kd=2, stride_d=2, transposed=True),
            _c3("tiny", "c8_4x6", 8, 8, 4, 6, groups=8, family="depthwise3d"),
            Layer("subpixel", "tiny", "x2_c8_6", 8, 16, 6, 6, 3, 1, 1, upscale=2)]


SUITES = ("full", "tiny")


def all_layers(suite: str = "full") -> List[Layer]:
    if suite == "tiny":
        return _tiny()
    if suite != "full":
        raise ValueError(f"unknown suite {suite!r}; choose from {list(SUITES)}")
    return (_resnet50() + _resnext50() + _depthwise() + _dilated() + _deform() + _roi() + _conv3d() + _depthwise3d()
            + _subpixel())


# ------------------------------------------------------------------------------ partial runs
#: Priority order of a GPU session (case-id globs, first match wins; see ``order_cases``). The first
#: block covers every family against its peer in NCHW, the second adds channels_last, the rest walks
#: the remaining suite with the most-used settings first. A lease measures as many as its time budget
#: allows; ``--resume`` continues the list in the next lease.
SESSION_PRIORITY = (
    # 1. deformable vs torchvision: ResNet-50 DCN stages 3-5, DCNv1 and DCNv2, fp32 and fp16
    "deform/resnet50_dcn/*/b32/fp32/nchw", "deform/resnet50_dcn/*/b32/fp16/nchw",
    # 2. depthwise 3x3 / 7x7 / 31x31, bf16
    "depthwise/mobilenet_v2/c144_56_k3/b32/bf16/nchw", "depthwise/convnext_t/c96_56_k7/b32/bf16/nchw",
    "depthwise/replknet31b/c128_56_k31/b32/bf16/nchw",
    # 3. grouped (ResNeXt), 4. dilated (DeepLabV3), 5. standard (ResNet-50)
    "grouped/resnext50_32x4d/c256_28_g32/b32/bf16/nchw", "dilated/deeplabv3/os16_aspp_c2048_d12/b32/bf16/nchw",
    "standard/resnet50/c256_14/b32/bf16/nchw",
    # the same in channels_last
    "depthwise/mobilenet_v2/c144_56_k3/b32/bf16/cl", "depthwise/convnext_t/c96_56_k7/b32/bf16/cl",
    "depthwise/replknet31b/c128_56_k31/b32/bf16/cl", "grouped/resnext50_32x4d/c256_28_g32/b32/bf16/cl",
    "dilated/deeplabv3/os16_aspp_c2048_d12/b32/bf16/cl", "standard/resnet50/c256_14/b32/bf16/cl",
    "deform/resnet50_dcn/*/b32/fp16/cl", "deform/resnet50_dcn/*/b32/fp32/cl",
    # low priority: deformable RoI pooling vs roi_align (R50-FPN P3, 512 RoIs), fp32 and bf16
    "roi/faster_rcnn_r50_fpn/p3_*/b1/fp32/nchw", "roi/faster_rcnn_r50_fpn/p3_*/b1/bf16/nchw",
    # the newer families, a few each: 3-D (R3D-18 3x3x3, R(2+1)D pair, U-Net 64^3 level 1, I3D, its up-conv),
    # X3D depthwise 3x3x3, sub-pixel upsampling (ESPCN x3, a decoder), bf16, both layouts
    "conv3d/r3d_18/c128_8x28/b32/bf16/*", "conv3d/r2plus1d_18/c128_8x28_*/b32/bf16/cl",
    "conv3d/unet3d/enc1_c32_64/b1/bf16/cl", "conv3d/i3d/mixed_4b_c96/b32/bf16/cl", "conv3d/unet3d/up2_c128_32/b1/bf16/cl",
    "depthwise3d/x3d_m/c108_16x28/b32/bf16/*", "depthwise3d/x3d_m/c432_16x7/b32/bf16/cl",
    "subpixel/espcn/x3_*/b32/bf16/*", "subpixel/decoder/x2_c128_56/b32/bf16/cl",
    # then everything else
    "deform/*/b32/*", "*/b32/bf16/*", "*/b32/fp16/*", "*/b32/tf32/*", "*/b32/fp32/*", "*/b1/*",
)
#: The part of SESSION_PRIORITY that must be measured before the README can give a ratio per family.
SESSION_CORE = SESSION_PRIORITY[:16]
#: Order of the CPU rehearsal (tiny suite, fp32, batch 1): the three kernel families' harness paths (deform vs
#: torchvision; depthwise and implicit-GEMM conv vs F.conv2d), one in channels_last. Kept short: the
#: interpreter takes seconds per case.
REHEARSAL_PRIORITY = ("deform/tiny/c8_6_v2/b1/fp32/nchw", "depthwise/tiny/c8_8_k3/b1/fp32/nchw",
                      "standard/tiny/*/b1/fp32/cl")

PRESETS = {"session": ("full", SESSION_PRIORITY), "rehearsal": ("tiny", REHEARSAL_PRIORITY)}


def match_case(case_id: str, globs: Iterable[str]) -> Optional[int]:
    """Index of the first glob (fnmatch, case-sensitive) that ``case_id`` matches, or None."""
    for i, g in enumerate(globs):
        if fnmatch.fnmatchcase(case_id, g):
            return i
    return None


def order_cases(cases: List[Case], globs: Sequence[str], by_glob: bool = True) -> List[Case]:
    """Keep the cases whose id matches one of ``globs``. ``by_glob``: order them by the first glob
    they match (priority order), suite order within one glob; else keep suite order."""
    ranked = [(match_case(c.id, globs), i, c) for i, c in enumerate(cases)]
    kept = [r for r in ranked if r[0] is not None]
    if by_glob:
        kept.sort(key=lambda r: (r[0], r[1]))
    return [c for _, _, c in kept]


def build_suite(families: Optional[Iterable[str]] = None, dtypes: Optional[Iterable[str]] = None,
                batches: Optional[Iterable[int]] = None, layouts: Optional[Iterable[str]] = None,
                limit: Optional[int] = None, suite: str = "full") -> List[Case]:
    """All cases, filtered; ``limit`` keeps the first ``limit`` cases (in suite order)."""
    families = list(families or FAMILIES)
    dtypes, batches, layouts = list(dtypes or DTYPES), list(batches or BATCHES), list(layouts or LAYOUTS)
    for name, got, allowed in (("family", families, FAMILIES), ("dtype", dtypes, DTYPES),
                               ("batch", batches, BATCHES), ("layout", layouts, LAYOUTS)):
        bad = [g for g in got if g not in allowed]
        if bad:
            raise ValueError(f"unknown {name} {bad}; choose from {list(allowed)}")
    cases = [Case(L, b, dt, lo) for L in all_layers(suite) if L.family in families
             for b in batches for dt in dtypes for lo in layouts]
    return cases[:limit] if limit else cases


# ------------------------------------------------------------------------------------- validation
def unavailable(case: Case) -> str:
    """'' when convlab has the op the case needs, else why not (e.g. layers.conv3d has not landed):
    the dry run and the benchmark report such cases as skipped."""
    import layers

    op = FAMILY_OPS.get(case.family)
    if case.layer.transposed:
        op = "conv_transpose3d"
    if op and not callable(getattr(layers, op, None)):
        return f"layers.{op} is not available in this tree (the op has not landed yet)"
    return ""


def validate(case: Case) -> str:
    """'' when the case is valid, else the reason. Checks sizes and divisibility, then calls the
    public convlab op on meta tensors with the reference backend (its argument checks run, no data)
    and compares the output shape with the suite's own formula."""
    import layers

    L = case.layer
    oh, ow = case.out_hw
    if L.family == "roi":
        return _validate_roi(case)
    if L.d or L.family in ("conv3d", "depthwise3d"):
        return _validate_3d(case)
    if case.batch < 1 or min(L.c_in, L.c_out, L.h, L.w, L.k, L.stride, L.dilation, L.groups) < 1 or L.padding < 0:
        return "non-positive size"
    if oh < 1 or ow < 1:
        return f"output size ({oh}, {ow}) not positive"
    if L.c_in % L.groups or L.c_out % L.groups:
        return f"channels ({L.c_in}, {L.c_out}) not divisible by groups {L.groups}"
    if L.family == "depthwise" and not (L.groups == L.c_in == L.c_out):
        return "depthwise layer must have groups == c_in == c_out"
    if L.family == "subpixel" and (L.upscale < 1 or L.c_out % (L.upscale ** 2) or L.stride != 1
                                   or L.padding != L.dilation * (L.k - 1) // 2 or L.k % 2 == 0):
        return "subpixel layer needs upscale >= 1, c_out divisible by upscale^2, stride 1 and an odd 'same' kernel"
    if L.family != "subpixel" and L.upscale:
        return f"upscale is for family subpixel, not {L.family}"
    if L.family != "depthwise" and L.c_in // L.groups == 1:
        return "non-depthwise family would dispatch to the depthwise kernels"
    if L.rois or L.sampling_ratio:
        return f"rois / sampling_ratio are for family roi, not {L.family}"
    if (L.family == "deform") != bool(L.deform) or L.deform not in ("", "v1", "v2"):
        return f"deform variant {L.deform!r} does not match family {L.family}"
    if L.deform and L.c_in % L.offset_groups:
        return f"c_in {L.c_in} not divisible by offset_groups {L.offset_groups}"
    shapes = case.shapes()
    fmt = torch.channels_last if case.layout == "cl" else torch.contiguous_format

    def meta(name):
        t = torch.empty(shapes[name], device="meta", dtype=case.torch_dtype)
        return t.to(memory_format=fmt) if name == "input" else t

    try:
        with layers.use_backend("reference"):
            if L.family == "subpixel":
                if unavailable(case):
                    return ""  # shapes checked above; the op itself is not in this tree
                y = layers.subpixel_conv2d(meta("input"), meta("weight"), None, L.upscale, padding="same")
            elif L.deform:
                y = layers.deform_conv2d(meta("input"), meta("offset"), meta("weight"), None, L.stride, L.padding,
                                         L.dilation, meta("mask") if "mask" in shapes else None)
            else:
                y = layers.conv2d(meta("input"), meta("weight"), None, L.stride, L.padding, L.dilation, L.groups)
    except Exception as exc:  # the op's argument checks rejected the case
        return f"op rejected it: {type(exc).__name__}: {exc}"
    if tuple(y.shape) != shapes["output"]:
        return f"op output shape {tuple(y.shape)} != expected {shapes['output']}"
    return ""


def _validate_3d(case: Case) -> str:
    """validate() for 3-D layers: sizes and groups, then F.conv3d / F.conv_transpose3d on meta tensors
    (the shape rule the convlab op follows), then the convlab op itself when this tree has it."""
    import torch.nn.functional as F

    import layers

    L = case.layer
    if not L.d or L.family not in ("conv3d", "depthwise3d"):
        return f"3-D layer (d={L.d}) in family {L.family}"
    if case.batch < 1 or min(L.c_in, L.c_out, L.d, L.h, L.w, L.k, L.kd, L.stride, L.stride_d, L.dilation, L.groups) < 1 \
            or min(L.padding, L.padding_d) < 0:
        return "non-positive size"
    if min(case.out_spatial()) < 1:
        return f"output size {case.out_spatial()} not positive"
    if L.c_in % L.groups or L.c_out % L.groups:
        return f"channels ({L.c_in}, {L.c_out}) not divisible by groups {L.groups}"
    if (L.family == "depthwise3d") != (L.groups == L.c_in == L.c_out):
        return "family depthwise3d is exactly the layers with groups == c_in == c_out"
    if L.deform or L.rois or L.sampling_ratio or L.upscale:
        return "deform / rois / sampling_ratio / upscale do not apply to 3-D layers"
    if L.transposed and L.family != "conv3d":
        return "only family conv3d has transposed layers"
    shapes = case.shapes()
    fmt = torch.channels_last_3d if case.layout == "cl" else torch.contiguous_format
    x = torch.empty(shapes["input"], device="meta", dtype=case.torch_dtype).to(memory_format=fmt)
    w = torch.empty(shapes["weight"], device="meta", dtype=case.torch_dtype)
    args = (case.strides(), case.paddings())
    try:
        if L.transposed:
            ys = [F.conv_transpose3d(x, w, None, *args, 0, L.groups, case.dilations())]
        else:
            ys = [F.conv3d(x, w, None, *args, case.dilations(), L.groups)]
        if not unavailable(case):
            with layers.use_backend("reference"):
                if L.transposed:
                    ys.append(layers.conv_transpose3d(x, w, None, *args, 0, L.groups, case.dilations()))
                else:
                    ys.append(layers.conv3d(x, w, None, *args, case.dilations(), L.groups))
    except Exception as exc:  # torch's or the op's argument checks rejected the case
        return f"op rejected it: {type(exc).__name__}: {exc}"
    for y in ys:
        if tuple(y.shape) != shapes["output"]:
            return f"output shape {tuple(y.shape)} != expected {shapes['output']}"
    return ""


def _validate_roi(case: Case) -> str:
    """validate() for family "roi": sizes, then the argument checks of ``layers.deform_roi_pool`` (boxes
    to rois, shapes, dtypes) on meta tensors (its reference reads the boxes, which meta tensors lack)."""
    from layers.roi import _check_args, _output_size, boxes_to_rois

    L = case.layer
    if case.batch < 1 or min(L.c_in, L.h, L.w, L.k, L.stride, L.rois) < 1 or L.sampling_ratio < 0:
        return "non-positive size"
    if L.c_in != L.c_out or L.deform not in ("", "v1"):
        return f"roi layer needs c_in == c_out and deform '' or 'v1', got {L.c_in}, {L.c_out}, {L.deform!r}"
    shapes = case.shapes()
    fmt = torch.channels_last if case.layout == "cl" else torch.contiguous_format
    x = torch.empty(shapes["input"], device="meta", dtype=case.torch_dtype).to(memory_format=fmt)
    off = torch.empty(shapes["offset"], device="meta", dtype=case.torch_dtype) if L.deform else None
    try:
        rois = boxes_to_rois(torch.empty(shapes["rois"], device="meta", dtype=case.torch_dtype), x)
        ph, pw = _output_size(L.k)
        _check_args(x, rois, off, ph, pw, L.sampling_ratio, 0.1, 1.0 / L.stride)
    except Exception as exc:  # the op's argument checks rejected the case
        return f"op rejected it: {type(exc).__name__}: {exc}"
    if (rois.shape[0], L.c_in, ph, pw) != shapes["output"]:
        return f"op output shape {(rois.shape[0], L.c_in, ph, pw)} != expected {shapes['output']}"
    return ""
